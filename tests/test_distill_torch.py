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
    res = distill_model(teacher, small_student(), *data, SMALL, output=out,
                        bench=BenchConfig(runs=5, warmup=1))
    assert res.parity.passed and res.parity.max_abs < 1e-4
    assert [r.name for r in res.rows] == ["teacher", "student", "labels-only"]
    t, s, b = res.rows
    assert s.params == b.params < t.params
    assert all(r.latency_p50_ms and r.latency_p50_ms > 0 for r in res.rows)
    assert 0 <= s.accuracy <= 100 and res.baseline_history is not None
    assert res.baseline_history.mode == "labels-only"
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
