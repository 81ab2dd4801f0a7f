"""Keras distillation on real digits: loss falls, teacher frozen, parity after export, bad input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from onnxopt.core.errors import InvalidInputError
from onnxopt.core.feeds import load_labelled_npz as load_split
from onnxopt.distillation.api import DistillConfig, TuneConfig, distill_model

pytest.importorskip("tensorflow")
pytestmark = pytest.mark.keras

ROOT = Path(__file__).resolve().parents[1]
SMALL = DistillConfig(epochs=3, patience=0, batch_size=64, seed=0, lr=1e-2)


def small_model(classes: int = 10, hidden: int = 16, softmax: bool = False, name: str = "m") -> Any:
    from onnxopt.frameworks import require_keras

    keras = require_keras()
    L = keras.layers
    inp = keras.Input((1, 8, 8), name="input")
    x = L.Flatten()(inp)
    x = L.Dense(hidden, activation="relu", name="hidden")(x)
    out = L.Dense(classes, activation="softmax" if softmax else None, name="out")(x)
    return keras.Model(inp, out, name=name)


@pytest.fixture(scope="module")
def data() -> tuple[Any, Any]:
    x, y = load_split(ROOT / "models" / "digits_train.npz")
    xv, yv = load_split(ROOT / "models" / "digits_val.npz")
    return (x[:500], y[:500]), (xv[:150], yv[:150])


@pytest.fixture(scope="module")
def teacher(data: tuple[Any, Any]) -> Any:
    from onnxopt.frameworks import require_keras
    from onnxopt.frameworks.keras_distill import distill

    require_keras().utils.set_random_seed(0)
    t, hist = distill(None, small_model(hidden=64, softmax=True, name="teacher"), *data,
                      DistillConfig(epochs=4, patience=0, lr=1e-2))
    assert hist.best_val_accuracy > 80
    assert "student: pre-softmax logits" in hist.softmax_handling
    return t


def test_keras_distill_loss_decreases_and_teacher_frozen(data: tuple[Any, Any], teacher: Any) -> None:
    from onnxopt.frameworks.keras_distill import distill

    before = [w.copy() for w in teacher.get_weights()]
    student, hist = distill(teacher, small_model(), *data, SMALL)
    assert hist.mode == "distill"
    assert hist.train_loss[-1] < 0.8 * hist.train_loss[0]
    assert "teacher: pre-softmax logits" in hist.softmax_handling
    for a, b in zip(before, teacher.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert teacher.layers[-1].activation.__name__ == "softmax"  # restored after the logits pass
    probs = np.asarray(teacher(data[1][0][:3], training=False))
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)


def onnx_twin(model: Any) -> Any:
    """The trained Keras teacher rebuilt as ONNX from its weights (Flatten-Gemm-Relu-Gemm-Softmax)."""
    import onnx
    from onnx import helper, numpy_helper

    w1, b1, w2, b2 = model.get_weights()
    nodes = [
        helper.make_node("Flatten", ["input"], ["flat"]),
        helper.make_node("Gemm", ["flat", "w1", "b1"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Gemm", ["r", "w2", "b2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "teacher",
        [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("probs", onnx.TensorProto.FLOAT, ["batch", 10])],
        [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def test_keras_distill_model_from_onnx_teacher(tmp_path: Path, data: tuple[Any, Any], teacher: Any) -> None:
    from onnxopt.core.model import save_model
    from onnxopt.measure.benchmark import BenchConfig

    tpath = save_model(onnx_twin(teacher), tmp_path / "teacher.onnx")
    out = tmp_path / "student.onnx"
    # the same flow as PyTorch students: a (small) tuning grid, then the best to convergence
    tune = TuneConfig(temperatures=(1.0, 4.0), alphas=(0.5,), proxy_epochs=2)
    cfg = DistillConfig(patience=2, min_epochs=3, max_epochs=12, seed=0)
    res = distill_model(str(tpath), small_model(), *data, cfg, output=out, baseline=False, tune=tune,
                        bench=BenchConfig(runs=5, warmup=1))
    assert res.framework == "keras" and res.parity.passed and res.parity.max_abs < 1e-4 and out.exists()
    assert [r.name for r in res.rows] == ["teacher", "student"]
    assert res.tuning is not None and [(t.temperature, t.alpha) for t in res.tuning.ran] == [(1.0, 0.5), (4.0, 0.5)]
    best = max(res.tuning.ran, key=lambda t: t.key)
    assert (res.config.temperature, res.config.alpha) == res.tuning.best == (best.temperature, best.alpha)
    h = res.history
    assert h.stop_reason.startswith(("converged", "reached max epochs")) and 3 <= h.epochs_run <= 12
    assert res.written == "distilled" and "no labels-only baseline" in res.verdict
    assert "teacher: pre-softmax logits" in res.history.softmax_handling
    assert res.history.train_loss[-1] < res.history.train_loss[0]
    assert res.row("student").params < res.row("teacher").params
    assert res.row("student").accuracy > 50
    assert res.row("teacher").accuracy > 80  # the ONNX twin answers like the Keras teacher


def test_keras_bad_inputs(data: tuple[Any, Any], teacher: Any) -> None:
    from onnxopt.frameworks.keras_distill import distill

    with pytest.raises(InvalidInputError, match="teacher predicts 10 classes but the student predicts 6"):
        distill(teacher, small_model(classes=6), *data, SMALL)
    x, y = data[0]
    xv, yv = data[1]
    with pytest.raises(InvalidInputError, match="does not fit the teacher"):
        distill(teacher, small_model(), (x[:, :, :4, :4], y), (xv[:, :, :4, :4], yv), SMALL)


def test_keras_falls_back_to_labels_only(data: tuple[Any, Any], teacher: Any) -> None:
    import onnx
    from onnx import numpy_helper

    # the ONNX twin with its classes rolled by one: a confident, always wrong teacher
    bad = onnx_twin(teacher)
    for init in bad.graph.initializer:
        if init.name in ("w2", "b2"):
            init.CopyFrom(numpy_helper.from_array(np.roll(numpy_helper.to_array(init), 1, axis=-1), init.name))
    onnx.checker.check_model(bad)
    cfg = DistillConfig(temperature=1.0, alpha=0.9, epochs=4, patience=0, lr=1e-2)
    res = distill_model(bad, small_model(), *data, cfg, tune=False, benchmark_latency=False)
    d, b = res.row("student").val_accuracy, res.row("labels-only").val_accuracy
    assert d is not None and b is not None and b > d + 20
    assert res.written == "labels-only" and res.model is res.baseline_model
    assert res.verdict.startswith("labels-only beats the distilled student on validation")
