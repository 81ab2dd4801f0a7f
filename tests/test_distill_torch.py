"""PyTorch distillation on real digits: loss falls, teacher frozen, parity after export, bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from onnxopt.core.errors import InvalidInputError
from onnxopt.core.feeds import load_labelled_npz as load_split
from onnxopt.distillation.api import DistillConfig, distill_model

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

ROOT = Path(__file__).resolve().parents[1]
SMALL = DistillConfig(epochs=4, patience=0, batch_size=64, seed=0, threads=1, lr=1e-2)


def small_teacher(classes: int = 10, softmax: bool = False) -> Any:
    from torch import nn

    layers: list[nn.Module] = [
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 4 * 4, classes),
    ]
    if softmax:
        layers.append(nn.Softmax(dim=1))
    return nn.Sequential(*layers)


def small_student(classes: int = 10, softmax: bool = False) -> Any:
    from torch import nn

    layers: list[nn.Module] = [nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, classes)]
    if softmax:
        layers.append(nn.Softmax(dim=1))
    return nn.Sequential(*layers)


@pytest.fixture(scope="module")
def data() -> tuple[Any, Any]:
    x, y = load_split(ROOT / "models" / "digits_train.npz")
    xv, yv = load_split(ROOT / "models" / "digits_val.npz")
    return (x[:500], y[:500]), (xv[:150], yv[:150])


@pytest.fixture(scope="module")
def teacher(data: tuple[Any, Any]) -> Any:
    from onnxopt.frameworks.torch_distill import distill

    torch.manual_seed(0)
    t, hist = distill(None, small_teacher(), *data, DistillConfig(epochs=5, patience=0, threads=1))
    assert hist.mode == "labels-only" and hist.best_val_accuracy > 80
    return t


def test_distill_loss_decreases_and_teacher_is_frozen(data: tuple[Any, Any], teacher: Any) -> None:
    from onnxopt.frameworks.torch_distill import distill

    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    teacher.train()  # the distiller must put it in eval mode itself (BN stats stay put)
    modes: list[bool] = []
    hook = teacher.register_forward_pre_hook(lambda m, i: modes.append(m.training))
    try:
        torch.manual_seed(1)
        student, hist = distill(teacher, small_student(), *data, SMALL)
    finally:
        hook.remove()
        teacher.eval()
    assert hist.mode == "distill"
    assert hist.train_loss[-1] < 0.8 * hist.train_loss[0]
    assert max(hist.val_accuracy) > 60
    assert modes and not any(modes), "teacher ran in training mode"
    # logits cached once: one batched pass over the 500 samples (batches of 256)
    assert len(modes) == 2
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), f"teacher tensor {k} changed"
    assert not student.training


def test_seeded_runs_are_reproducible(data: tuple[Any, Any], teacher: Any) -> None:
    from onnxopt.frameworks.torch_distill import distill

    cfg = DistillConfig(epochs=2, patience=0, seed=3, threads=1)
    runs = []
    for _ in range(2):
        torch.manual_seed(5)
        _, h = distill(teacher, small_student(), *data, cfg)
        runs.append(h.train_loss)
    assert runs[0] == runs[1]


def test_softmax_outputs_use_pre_softmax_logits(data: tuple[Any, Any], teacher: Any) -> None:
    from onnxopt.frameworks.torch_distill import distill

    soft_teacher = torch.nn.Sequential(teacher, torch.nn.Softmax(dim=1)).eval()
    torch.manual_seed(1)
    student, hist = distill(soft_teacher, small_student(softmax=True), *data, SMALL)
    assert "teacher: pre-softmax logits" in hist.softmax_handling
    assert "student: pre-softmax logits" in hist.softmax_handling
    assert hist.train_loss[-1] < hist.train_loss[0]
    out = student(torch.from_numpy(data[1][0][:4]))
    assert torch.allclose(out.sum(1), torch.ones(4), atol=1e-5)  # the student keeps its softmax


def test_hint_loss_with_regressor(data: tuple[Any, Any], teacher: Any) -> None:
    from onnxopt.frameworks.torch_distill import distill

    # teacher layer '6' = Flatten (256 features), student layer '2' = ReLU (16): a linear regressor
    cfg = DistillConfig(epochs=3, patience=0, threads=1, hint=("6", "2"), hint_weight=0.1)
    torch.manual_seed(1)
    _, hist = distill(teacher, small_student(), *data, cfg)
    assert hist.train_loss[-1] < hist.train_loss[0]
    with pytest.raises(InvalidInputError, match="student has no layer 'nope'"):
        distill(teacher, small_student(), *data, DistillConfig(epochs=1, hint=("6", "nope")))


def test_distill_model_exports_and_compares(tmp_path: Path, data: tuple[Any, Any], teacher: Any) -> None:
    from onnxopt.core.model import load_model
    from onnxopt.measure.benchmark import BenchConfig

    out = tmp_path / "student.onnx"
    torch.manual_seed(2)
    res = distill_model(teacher, small_student(), *data, SMALL, output=out, tune=False,
                        bench=BenchConfig(runs=5, warmup=1))
    assert res.parity.passed and res.parity.max_abs < 1e-4
    assert [r.name for r in res.rows] == ["teacher", "student", "labels-only"]
    t, s, b = res.rows
    assert s.params == b.params < t.params
    assert all(r.latency_p50_ms and r.latency_p50_ms > 0 for r in res.rows)
    assert 0 <= s.accuracy <= 100 and res.baseline_history is not None
    assert res.baseline_history.mode == "labels-only"
    # no --test: the reported accuracy is the validation accuracy, recomputed here from the labels
    assert s.test_accuracy is None and s.accuracy == s.val_accuracy
    xv, yv = data[1]
    assert s.val_accuracy == pytest.approx(100 * np.mean(onnx_predict(res.distilled_model, xv).argmax(1) == yv))
    assert res.tuning is None and res.written in ("distilled", "labels-only")
    saved = load_model(out)
    assert saved.graph.input[0].name == "input"
    json.dumps(res.to_dict())


def test_onnx_teacher_and_bad_inputs(tmp_path: Path, data: tuple[Any, Any], teacher: Any) -> None:
    from onnxopt.distillation.api import export_student
    from onnxopt.frameworks.torch_distill import distill

    path = tmp_path / "teacher.onnx"
    export_student(teacher, "torch", data[1][0], output=path)
    torch.manual_seed(1)
    _, hist = distill(str(path), small_student(), *data, SMALL)  # logits from onnxruntime
    assert hist.train_loss[-1] < 0.8 * hist.train_loss[0]
    with pytest.raises(InvalidInputError, match="teacher predicts 10 classes but the student predicts 7"):
        distill(str(path), small_student(classes=7), *data, SMALL)
    with pytest.raises(InvalidInputError, match="does not fit the student"):
        bad = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(100, 10))
        distill(None, bad, *data, SMALL)
    with pytest.raises(InvalidInputError, match="does not fit the teacher"):
        x, y = data[0]
        distill(str(path), small_student(), (x[:, :, :4, :4], y), (data[1][0][:, :, :4, :4], data[1][1]), SMALL)


def test_cli_distill_torch_json(tmp_path: Path, data: tuple[Any, Any], teacher: Any) -> None:
    from onnxopt.cli import main
    from onnxopt.distillation.api import export_student

    tpath = tmp_path / "teacher.onnx"
    export_student(teacher, "torch", data[1][0], output=tpath)
    src = tmp_path / "students.py"
    src.write_text(
        "from torch import nn\n"
        "def build():\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))\n"
        "def wrong():\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 4))\n"
    )
    tr, va = tmp_path / "tr.npz", tmp_path / "va.npz"
    np.savez(tr, input=data[0][0], labels=data[0][1])
    np.savez(va, input=data[1][0], labels=data[1][1])
    out = tmp_path / "s.onnx"
    args = ["distill", "--teacher", str(tpath), "--student", f"{src}:build", "--data", str(tr), "--val", str(va),
            "-o", str(out), "--epochs", "2", "--runs", "5", "--threads", "1", "--json"]
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 0
    report = json.loads(buf.getvalue())
    assert [r["name"] for r in report["rows"]] == ["teacher", "student", "labels-only"]
    # tuning is on by default (no --temperature/--alpha): every setting of the grid was tried
    tried = {(t["temperature"], t["alpha"]) for t in report["tuning"]["trials"] if t["status"] == "ok"}
    assert tried == {(t, a) for t in (1.0, 2.0, 4.0) for a in (0.3, 0.5, 0.7, 0.9)}
    assert tuple(report["tuning"]["best"]) == (report["config"]["temperature"], report["config"]["alpha"])
    assert report["written"] in ("distilled", "labels-only") and report["history"]["stop_reason"]
    assert report["parity"]["passed"] and out.exists()
    out2 = tmp_path / "s2.onnx"
    err = io.StringIO()
    bad = [a if a != f"{src}:build" else f"{src}:wrong" for a in args]
    bad[bad.index(str(out))] = str(out2)
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as e:
        main(bad)
    assert e.value.code == 1
    lines = err.getvalue().strip().splitlines()
    assert len(lines) == 1 and "teacher predicts 10 classes but the student predicts 4" in lines[0]
    assert not out2.exists()


def onnx_predict(model: Any, x: np.ndarray) -> np.ndarray:
    """Outputs of an ONNX model on x, in onnxruntime."""
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def test_trains_to_convergence_and_says_why(data: tuple[Any, Any]) -> None:
    from onnxopt.frameworks.torch_distill import distill, predict

    cfg = DistillConfig(lr=1e-2, patience=3, min_epochs=5, max_epochs=80, threads=1)  # epochs None: converge
    torch.manual_seed(0)
    student, hist = distill(None, small_student(), *data, cfg)
    assert hist.stop_reason.startswith("converged"), hist.stop_reason
    assert 5 <= hist.epochs_run < 80 and hist.stopped_early
    assert hist.lr_cut_epochs and max(hist.lr_cut_epochs) < hist.epochs_run  # cut on a plateau, then stopped
    # the plateau: no new best accuracy and no 1% lower validation loss in the last `patience` epochs
    accs, losses = hist.val_accuracy, hist.val_loss
    assert max(accs[-3:]) <= max(accs[:-3]) and min(losses[-3:]) >= 0.99 * min(losses[:-3])
    # the restored weights are the best epoch's: recompute its accuracy from the labels
    xv, yv = data[1]
    acc = 100 * np.mean(predict(student, xv).argmax(1) == yv)
    assert acc == pytest.approx(hist.best_val_accuracy) and hist.best_val_accuracy == max(accs)


def shifted(teacher: Any) -> Any:
    """The teacher with its logits rolled by one class: it confidently answers (y + 1) % 10."""

    class Roll(torch.nn.Module):
        def forward(self, x: Any) -> Any:
            return torch.roll(x, 1, dims=1)

    return torch.nn.Sequential(teacher, Roll()).eval()


def test_tuning_picks_the_best_setting_on_a_seeded_toy(data: tuple[Any, Any], teacher: Any) -> None:
    from onnxopt.distillation.tune import TuneConfig
    from onnxopt.frameworks.torch_distill import distill

    # Toy: 70% of the training labels are systematically wrong ((y + 1) % 10), the teacher is
    # right: leaning on the teacher (alpha 0.9) must beat leaning on the labels (alpha 0.3).
    (x, y), val = data
    flip = np.random.default_rng(0).random(len(y)) < 0.7
    noisy = (x, np.where(flip, (y + 1) % 10, y))
    tune = TuneConfig(temperatures=(1.0, 4.0), alphas=(0.3, 0.9), proxy_epochs=4)
    cfg = DistillConfig(lr=1e-2, patience=3, min_epochs=4, max_epochs=30, threads=1, seed=3)
    torch.manual_seed(1)
    res = distill_model(teacher, small_student(), noisy, val, cfg, tune=tune, benchmark_latency=False)
    assert res.tuning is not None and len(res.tuning.ran) == 4
    best = max(res.tuning.ran, key=lambda t: (t.val_accuracy, -t.val_loss))
    assert res.tuning.best == (best.temperature, best.alpha) and best.alpha == 0.9
    assert (res.config.temperature, res.config.alpha) == res.tuning.best  # the final run used it
    worst_a03 = max(t.val_accuracy for t in res.tuning.ran if t.alpha == 0.3)
    assert best.val_accuracy > worst_a03 + 10
    # seeded: the chosen proxy run, repeated from the same initial weights, scores the same
    torch.manual_seed(1)
    again = small_student()
    from dataclasses import replace

    _, h = distill(teacher, again, noisy, val, replace(cfg, temperature=best.temperature, alpha=best.alpha,
                                                       epochs=4, patience=0))
    assert h.best_val_accuracy == pytest.approx(best.val_accuracy)
    # and distillation pays here: the distilled student is written
    assert res.written == "distilled" and res.row("student").val_accuracy > res.row("labels-only").val_accuracy


def test_falls_back_to_the_labels_only_student(tmp_path: Path, data: tuple[Any, Any], teacher: Any) -> None:
    cfg = DistillConfig(temperature=1.0, alpha=0.9, epochs=6, patience=0, lr=1e-2, threads=1)
    out = tmp_path / "s.onnx"
    torch.manual_seed(2)
    res = distill_model(shifted(teacher), small_student(), *data, cfg, tune=False, output=out,
                        benchmark_latency=False)
    d, b = res.row("student").val_accuracy, res.row("labels-only").val_accuracy
    assert d is not None and b is not None and b > d + 20  # a teacher that is always wrong hurts
    assert res.written == "labels-only" and res.verdict.startswith("labels-only beats the distilled student")
    from onnxopt.core.model import load_model

    xv = data[1][0]
    written = onnx_predict(load_model(out), xv)
    np.testing.assert_array_equal(written, onnx_predict(res.baseline_model, xv))
    assert not np.allclose(written, onnx_predict(res.distilled_model, xv))
    assert res.model is res.baseline_model


def test_cli_keep_distilled(tmp_path: Path, data: tuple[Any, Any], teacher: Any) -> None:
    import contextlib
    import io

    from onnxopt.cli import main
    from onnxopt.core.model import load_model
    from onnxopt.distillation.api import export_student

    tpath = tmp_path / "bad_teacher.onnx"
    export_student(shifted(teacher), "torch", data[1][0], output=tpath)
    src = tmp_path / "students.py"
    src.write_text(
        "import torch\nfrom torch import nn\n"
        "def build():\n"
        "    torch.manual_seed(0)\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))\n"
    )
    tr, va = tmp_path / "tr.npz", tmp_path / "va.npz"
    np.savez(tr, input=data[0][0], labels=data[0][1])
    np.savez(va, input=data[1][0], labels=data[1][1])

    def run(*extra: str) -> tuple[dict[str, Any], Path]:
        out = tmp_path / f"s{len(extra)}.onnx"
        buf = io.StringIO()
        args = ["distill", "--teacher", str(tpath), "--student", f"{src}:build", "--data", str(tr),
                "--val", str(va), "-o", str(out), "--alpha", "0.9", "-T", "1", "--epochs", "5", "--lr", "0.01",
                "--threads", "1", "--no-bench", "--json", *extra]
        with contextlib.redirect_stdout(buf), pytest.raises(SystemExit) as e:
            main(args)
        assert e.value.code == 0
        return json.loads(buf.getvalue()), out

    fallback, out = run()
    assert fallback["tuning"] is None  # --alpha / -T given: tuning is off
    assert fallback["written"] == "labels-only" and "--keep-distilled" in fallback["verdict"]
    kept, out_kept = run("--keep-distilled")
    assert kept["written"] == "distilled" and "kept the distilled one (--keep-distilled)" in kept["verdict"]
    xv = data[1][0]
    a, b = onnx_predict(load_model(out), xv), onnx_predict(load_model(out_kept), xv)
    vals = {r["name"]: r["val_accuracy"] for r in kept["rows"]}
    yv = data[1][1]
    assert 100 * np.mean(a.argmax(1) == yv) == pytest.approx(vals["labels-only"])
    assert 100 * np.mean(b.argmax(1) == yv) == pytest.approx(vals["student"])
    assert vals["student"] < vals["labels-only"]
