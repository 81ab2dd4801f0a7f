"""Distillation without a framework: config validation, data loading, ONNX teacher logits, CLI bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from onnxopt.core.errors import InvalidInputError
from onnxopt.core.feeds import load_labelled_npz as load_split
from onnxopt.distillation.api import DistillConfig
from onnxopt.distillation.core import (
    DistillHistory,
    EarlyStopping,
    StopRule,
    check_classes,
    check_data,
    lr_at,
    pool_features,
)
from onnxopt.distillation.teacher import logits_model, looks_like_probabilities, teacher_outputs
from onnxopt.distillation.tune import TuneConfig, plan, proxy_epochs_for, tune_settings
from tests.conftest import make_mlp

ROOT = Path(__file__).resolve().parents[1]


def with_softmax(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same model with a final Softmax (output 'probs')."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.node.append(helper.make_node("Softmax", ["logits"], ["probs"], axis=1))
    del m.graph.output[:]
    m.graph.output.append(helper.make_tensor_value_info("probs", onnx.TensorProto.FLOAT, ["batch", 10]))
    onnx.checker.check_model(m)
    return m


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"temperature": 0}, "temperature must be > 0"),
        ({"temperature": -1.0}, "temperature must be > 0"),
        ({"temperature": float("nan")}, "temperature must be > 0"),
        ({"alpha": 1.5}, "alpha must be in [0, 1]"),
        ({"alpha": -0.1}, "alpha must be in [0, 1]"),
        ({"epochs": 0}, "epochs must be >= 1"),
        ({"min_epochs": 50, "max_epochs": 10}, "min epochs <= max epochs"),
        ({"lr_factor": 1.0}, "learning-rate factor must be in (0, 1)"),
        ({"hint": ("a", "")}, "--hint TEACHER_LAYER:STUDENT_LAYER"),
    ],
)
def test_config_rejects_bad_values(kwargs: dict, needle: str) -> None:
    with pytest.raises(InvalidInputError, match=None) as e:
        DistillConfig(**kwargs)
    assert needle in str(e.value)


def test_config_labels_only_drops_teacher_terms() -> None:
    cfg = DistillConfig(alpha=0.9, hint=("t", "s")).labels_only()
    assert cfg.alpha == 0 and cfg.hint is None and cfg.temperature == 4.0


def test_load_split_reads_digits_and_rejects_missing_labels(tmp_path: Path) -> None:
    x, y = load_split(ROOT / "models" / "digits_val.npz")
    assert x.shape[1:] == (1, 8, 8) and x.dtype == np.float32 and y.dtype == np.int64 and len(x) == len(y)
    p = tmp_path / "nolabels.npz"
    np.savez(p, input=x)
    with pytest.raises(InvalidInputError, match="no labels"):
        load_split(p)


def test_check_data_and_classes() -> None:
    x = np.zeros((4, 3), np.float32)
    with pytest.raises(InvalidInputError, match="4 inputs but 3 labels"):
        check_data((x, np.zeros(3, np.int64)), (x, np.zeros(4, np.int64)))
    with pytest.raises(InvalidInputError, match="differ in shape"):
        check_data((x, np.zeros(4, np.int64)), (np.zeros((4, 5), np.float32), np.zeros(4, np.int64)))
    with pytest.raises(InvalidInputError, match="teacher predicts 10 classes but the student predicts 5"):
        check_classes(10, 5, np.arange(5))
    with pytest.raises(InvalidInputError, match="labels go up to 9"):
        check_classes(None, 5, np.arange(10))


def test_teacher_logits_bypass_final_softmax() -> None:
    base = make_mlp(seed=3)
    soft = with_softmax(base)
    x = np.random.default_rng(0).standard_normal((300, 16)).astype(np.float32)
    plain = teacher_outputs(base, x, batch_size=128)
    via_softmax = teacher_outputs(soft, x, batch_size=128)
    assert plain.softmax_handling == "none"
    assert via_softmax.softmax_handling == "pre-softmax logits"
    assert via_softmax.logits.shape == (300, 10)
    np.testing.assert_allclose(via_softmax.logits, plain.logits, rtol=1e-5, atol=1e-5)
    m, name, _ = logits_model(soft)
    assert name == "logits" and [o.name for o in m.graph.output] == ["logits"]
    assert [o.name for o in soft.graph.output] == ["probs"]  # the input model is untouched


def test_teacher_hint_features_and_unknown_tensor() -> None:
    x = np.random.default_rng(1).standard_normal((20, 16)).astype(np.float32)
    out = teacher_outputs(make_mlp(), x, hint="h2")
    assert out.features is not None and out.features.shape == (20, 32) and (out.features >= 0).all()
    with pytest.raises(InvalidInputError, match="no tensor 'nope'"):
        teacher_outputs(make_mlp(), x, hint="nope")


def test_teacher_rejects_data_of_wrong_shape() -> None:
    with pytest.raises(InvalidInputError, match="does not fit the teacher"):
        teacher_outputs(make_mlp(), np.zeros((5, 1, 8, 8), np.float32))


def test_probabilities_detection() -> None:
    p = np.full((3, 4), 0.25, np.float32)
    assert looks_like_probabilities(p)
    assert not looks_like_probabilities(np.log(p))


def test_early_stopping_and_schedule() -> None:
    es = EarlyStopping(patience=2)
    assert es.update(0, 90.0, 0.5)
    assert es.update(1, 90.0, 0.4)  # same accuracy, lower loss: better
    assert not es.update(2, 89.0, 0.3)
    assert not es.should_stop
    assert not es.update(3, 90.0, 0.45)
    assert es.should_stop and es.best_epoch == 1
    lrs = [lr_at(s, 100, 0, 1.0) for s in range(100)]
    assert lrs[0] == pytest.approx(1.0) and lrs[-1] < 0.01 and all(a >= b for a, b in zip(lrs, lrs[1:]))


def drive(rule: StopRule, scores: list[tuple[float, float]]) -> tuple[int, str, list[float]]:
    """Feed (accuracy, loss) per epoch until the rule stops: (epochs run, reason, lr per epoch)."""
    lrs = []
    for epoch, (acc, loss) in enumerate(scores):
        lrs.append(rule.lr(epoch, 1, 0))
        rule.update(epoch, acc, loss)
        reason = rule.decide(epoch)
        if reason is not None:
            return epoch + 1, reason, lrs
    return len(scores), "", lrs


def test_stop_rule_to_convergence_cuts_then_stops() -> None:
    cfg = DistillConfig(lr=1.0, patience=2, min_epochs=1, max_epochs=100, lr_cuts=2, lr_factor=0.1)
    # progress for 3 epochs, a plateau (loss within 1% counts as none) -> cut at epoch 5;
    # progress after the cut (epoch 6), plateau -> second cut at epoch 8; plateau -> stop at 10
    scores = [(90, 1.0), (91, 0.9), (92, 0.8), (92, 0.799), (91, 0.85), (93, 0.7), (93, 0.7), (93, 0.71),
              (93, 0.7), (92, 0.7), (99, 0.1)]
    rule = StopRule(cfg)
    n, reason, lrs = drive(rule, scores)
    assert rule.cut_epochs == [5, 8]
    assert n == 10 and reason.startswith("converged") and "2 learning-rate cuts" in reason
    assert lrs[:5] == [1.0] * 5 and lrs[5:8] == [pytest.approx(0.1)] * 3 and lrs[8] == pytest.approx(0.01)
    assert rule.best_epoch == 5  # 0-based: (93, 0.7) first seen there; an equal score later is no better
    # a cut that brings no progress stops at the next plateau, without a second cut
    rule = StopRule(cfg)
    n, reason, _ = drive(rule, [(90, 1.0), (90, 1.0), (90, 1.0), (90, 1.0), (90, 1.0), (99, 0.1)])
    assert (n, rule.cut_epochs) == (5, [3]) and "in 2 epochs after the learning-rate cut at epoch 3" in reason


def test_stop_rule_min_max_and_fixed_budget() -> None:
    flat = [(50.0, 1.0)] * 40
    rule = StopRule(DistillConfig(patience=2, min_epochs=12, max_epochs=30, lr_cuts=0))
    assert drive(rule, flat)[0] == 12  # plateau at 3, but never before min_epochs
    rising = [(float(i), 1.0 / (i + 1)) for i in range(40)]
    n, reason, _ = drive(StopRule(DistillConfig(patience=2, min_epochs=1, max_epochs=30)), rising)
    assert n == 30 and reason.startswith("reached max epochs 30")
    n, reason, lrs = drive(StopRule(DistillConfig(epochs=8, patience=0, lr=1.0)), flat)
    assert n == 8 and reason.startswith("fixed budget of 8 epochs")
    n, reason, _ = drive(StopRule(DistillConfig(epochs=8, patience=3)), flat)
    assert n == 4 and reason.startswith("early stop")


def fake_history(acc: float, loss: float, epochs: int) -> DistillHistory:
    return DistillHistory((1.0,) * epochs, (acc,) * epochs, 0, False, (loss,) * epochs)


def test_tune_settings_order_budget_and_ties() -> None:
    # the scores are a known function of (T, alpha): the best is T 2, alpha 0.7; a tie in accuracy
    # (T 4, alpha 0.7) loses on validation loss
    def score(cfg: DistillConfig) -> DistillHistory:
        assert cfg.epochs == 5 and cfg.patience == 0 and cfg.seed == 7
        acc = 97.0 if (cfg.temperature, cfg.alpha) in ((2.0, 0.7), (4.0, 0.7)) else 90.0 + cfg.alpha
        return fake_history(acc, 0.1 if cfg.temperature == 2.0 else 0.2, cfg.epochs)

    tune = TuneConfig()
    res = tune_settings(score, DistillConfig(seed=7), tune, proxy_epochs=5)
    assert res.best == (2.0, 0.7) and len(res.trials) == 12 and all(t.status == "ok" for t in res.trials)
    assert [(t.temperature, t.alpha) for t in res.trials] == tune.grid
    assert "tuned T 2, alpha 0.7 (97.00% on validation) over 12 settings x 5 proxy epochs" in res.describe()
    # a clock that advances 10 s per trial and a 1-minute budget: 5 trials fit (10 s each + a 10 s final run)
    now = [0.0]

    def timed(cfg: DistillConfig) -> DistillHistory:
        now[0] += 10.0
        return score(cfg)

    res = tune_settings(timed, DistillConfig(seed=7), TuneConfig(budget_minutes=1), proxy_epochs=5,
                        final_epochs=5, started=0.0, clock=lambda: now[0])
    assert [t.status for t in res.trials] == ["ok"] * 5 + ["skipped: budget"] * 7
    assert res.best == (1.0, 0.9) and "7 skipped (budget)" in res.describe()  # the best of those run


def test_tune_plan_and_proxy_length() -> None:
    tune = TuneConfig(budget_minutes=1)
    assert plan(tune, seconds_per_epoch=0.01, proxy_epochs=10, final_epochs=50, elapsed=5) is None
    why = plan(tune, seconds_per_epoch=0.5, proxy_epochs=10, final_epochs=50, elapsed=5)
    assert why is not None and "12 settings x 10 proxy epochs" in why and "--budget-minutes" in why
    assert proxy_epochs_for(TuneConfig(), 90, DistillConfig()) == 30
    assert proxy_epochs_for(TuneConfig(), 6, DistillConfig()) == 8
    assert proxy_epochs_for(TuneConfig(), 500, DistillConfig()) == 40
    assert proxy_epochs_for(TuneConfig(), 90, DistillConfig(epochs=12)) == 12
    assert proxy_epochs_for(TuneConfig(proxy_epochs=3), 90, DistillConfig()) == 3
    with pytest.raises(InvalidInputError, match="tuning alphas must be in"):
        TuneConfig(alphas=(0.0,))
    with pytest.raises(InvalidInputError, match="--budget-minutes"):
        TuneConfig(budget_minutes=0)


def test_pool_features() -> None:
    t = np.arange(2 * 3 * 4 * 4, dtype=np.float32).reshape(2, 3, 4, 4)
    p = pool_features(t, (2, 2), channels_last=False)
    assert p.shape == (2, 3, 2, 2)
    assert p[0, 0, 0, 0] == pytest.approx(np.mean(t[0, 0, :2, :2]))
    with pytest.raises(InvalidInputError, match="cannot be pooled"):
        pool_features(t, (3, 3), channels_last=False)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "onnxopt", "distill", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)


@pytest.mark.parametrize(
    ("extra", "needle"),
    [(["--temperature", "0"], "--temperature 0.0: must be > 0"), (["--alpha", "2"], "--alpha 2.0: must be in [0, 1]")],
)
def test_cli_bad_hyperparameters_one_line_exit_2(tmp_path: Path, extra: list[str], needle: str) -> None:
    out = tmp_path / "s.onnx"
    r = run_cli("--teacher", "models/digits_cnn.onnx", "--student", "examples/distill_models.py:torch_student",
                "--data", "models/digits_train.npz", "--val", "models/digits_val.npz", "-o", str(out), *extra)
    assert r.returncode == 2, r.stderr  # bad option values are usage errors (issue 15)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in r.stderr
    assert not out.exists()


def test_cli_labels_missing_one_line_exit_1(tmp_path: Path) -> None:
    bad = tmp_path / "nolabels.npz"
    x, _ = load_split(ROOT / "models" / "digits_train.npz")
    np.savez(bad, input=x[:50])
    out = tmp_path / "s.onnx"
    r = run_cli("--teacher", "models/digits_cnn.onnx", "--student", "examples/distill_models.py:torch_student",
                "--data", str(bad), "--val", "models/digits_val.npz", "-o", str(out))
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "no labels" in lines[0] and str(bad) in lines[0]
    assert not out.exists()
