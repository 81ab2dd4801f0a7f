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
from onnxopt.distillation.core import EarlyStopping, check_classes, check_data, lr_at, pool_features
from onnxopt.distillation.teacher import logits_model, looks_like_probabilities, teacher_outputs
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
