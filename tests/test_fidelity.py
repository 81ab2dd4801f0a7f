"""Tests of onnxopt.fidelity on real sessions: the bundled digits CNN and tiny models built in code."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from onnxopt.core.errors import InvalidInputError
from onnxopt.core.model import load_model
from onnxopt.measure.fidelity import (
    FidelityReport,
    accuracy,
    compare_models,
    load_eval_data,
    output_fidelity,
    run_batched,
)
from tests.conftest import make_convnet, make_mlp


def _perturbed(model: onnx.ModelProto, name: str, scale: float) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for i, t in enumerate(m.graph.initializer):
        if t.name == name:
            a = numpy_helper.to_array(t)
            rng = np.random.default_rng(1)
            b = (a + scale * rng.standard_normal(a.shape)).astype(a.dtype)
            m.graph.initializer[i].CopyFrom(numpy_helper.from_array(b, name))
    return m


def test_run_batched_matches_single_run(mlp_model: onnx.ModelProto) -> None:
    x = np.random.default_rng(0).standard_normal((70, 16)).astype(np.float32)
    full = run_batched(mlp_model, {"input": x}, batch_size=256)[0]
    split = run_batched(mlp_model, {"input": x}, batch_size=32)[0]
    assert full.shape == (70, 10)
    np.testing.assert_allclose(full, split, rtol=1e-5, atol=1e-6)


def test_accuracy_of_digits_matches_recorded(digits_cnn: Path, digits_val: Path) -> None:
    model = load_model(digits_cnn)
    feed, labels = load_eval_data(model, digits_val)
    assert labels is not None and labels.shape[0] == feed["input"].shape[0] == 360
    acc = accuracy(digits_cnn, feed, labels, batch_size=64)
    assert 95.0 <= acc <= 100.0
    assert acc == pytest.approx(accuracy(model, feed, labels), abs=1e-9)


def test_identical_models_are_perfectly_faithful(digits_cnn: Path, digits_val: Path) -> None:
    model = load_model(digits_cnn)
    feed, labels = load_eval_data(model, digits_val)
    rep = compare_models(digits_cnn, model, feed, labels)
    assert isinstance(rep, FidelityReport)
    assert rep.samples == 360
    (o,) = rep.outputs
    assert o.name == "logits" and o.max_abs == 0.0 and o.cosine == pytest.approx(1.0)
    assert o.top1_agreement == 100.0
    assert rep.accuracy_drop == 0.0 and rep.min_cosine == pytest.approx(1.0)
    d = rep.to_dict()
    assert d["accuracy_drop"] == 0.0 and d["outputs"][0]["name"] == "logits"


def test_perturbed_model_loses_fidelity(mlp_model: onnx.ModelProto) -> None:
    x = np.random.default_rng(0).standard_normal((200, 16)).astype(np.float32)
    ref_logits = run_batched(mlp_model, {"input": x})[0]
    labels = ref_logits.argmax(1)
    small = compare_models(mlp_model, _perturbed(mlp_model, "w2", 0.01), {"input": x}, labels)
    big = compare_models(mlp_model, _perturbed(mlp_model, "w2", 1.0), {"input": x}, labels)
    assert small.accuracy_reference == 100.0
    assert 0 < small.outputs[0].max_abs < big.outputs[0].max_abs
    assert big.min_cosine < small.min_cosine < 1.0
    assert big.outputs[0].top1_agreement is not None and big.outputs[0].top1_agreement < 90
    assert big.accuracy_drop is not None and big.accuracy_drop > 10
    assert big.accuracy_drop == pytest.approx(100 - big.outputs[0].top1_agreement)


def test_output_fidelity_math() -> None:
    a = np.array([[1.0, 0.0], [0.0, 2.0]], np.float32)
    b = np.array([[0.0, 1.0], [0.0, 4.0]], np.float32)
    f = output_fidelity("y", a, b)
    assert f.max_abs == 2.0 and f.mean_abs == pytest.approx(1.0)
    assert f.cosine == pytest.approx(0.5)  # orthogonal row, identical-direction row
    assert f.top1_agreement == 50.0
    with pytest.raises(InvalidInputError, match="reference shape"):
        output_fidelity("y", a, b[:1])


def test_models_with_different_inputs_are_rejected() -> None:
    x = {"input": np.zeros((2, 16), np.float32)}
    with pytest.raises(InvalidInputError, match="different inputs"):
        compare_models(make_mlp(), make_convnet(), x)


def test_load_eval_data_mismatch_one_line_per_problem(tmp_path: Path, digits_cnn: Path) -> None:
    p = tmp_path / "bad.npz"
    np.savez(p, input=np.zeros((5, 1, 9, 8), np.float64).astype(np.int32), labels=np.zeros(5, np.int64))
    with pytest.raises(InvalidInputError) as e:
        load_eval_data(load_model(digits_cnn), p)
    msg = str(e.value)
    assert "expected dtype float32, got int32" in msg
    assert "expected shape (batch, 1, 8, 8), got (5, 1, 9, 8)" in msg
    q = tmp_path / "short.npz"
    np.savez(q, input=np.zeros((5, 1, 8, 8), np.float32), labels=np.zeros(4, np.int64))
    with pytest.raises(InvalidInputError, match="'labels' has 4 entries but the inputs have 5"):
        load_eval_data(load_model(digits_cnn), q)
    feed, labels = load_eval_data(load_model(digits_cnn), q, labels_key="nope")
    assert labels is None and feed["input"].shape == (5, 1, 8, 8)


def test_fixed_batch_model_runs_over_a_dataset(digits_cnn: Path, digits_val: Path) -> None:
    fixed = load_model(digits_cnn)
    fixed.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    feed, labels = load_eval_data(fixed, digits_val)
    assert feed["input"].shape[0] == 360
    rep = compare_models(fixed, digits_cnn, feed, labels)
    assert rep.samples == 360 and rep.outputs[0].max_abs < 1e-5 and rep.accuracy_drop == 0.0


def test_the_floor_number_is_the_worst_sample_not_the_mean() -> None:
    """One destroyed sample among 99 good ones: the mean cosine stays ~0.99, min_cosine (what every
    floor holds) is that sample's."""
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((100, 10))
    cand = ref.copy()
    cand[37] = -ref[37]  # this sample's answer is reversed
    o = output_fidelity("y", ref, cand)
    assert o.cosine == pytest.approx(0.98) and o.worst_cosine == pytest.approx(-1.0)
    assert FidelityReport((o,), 100, None, None).min_cosine == pytest.approx(-1.0)


def test_quantize_scores_dynamic_int8_one_sample_per_run(mlp_model: onnx.ModelProto, tmp_path: Path) -> None:
    """A dynamic int8 scale spans the batch it runs in: the evaluator scores such a model sample by sample
    (batch 1, the deployment batch), which is what a recomputation run by run gives."""
    from onnxruntime.quantization import quantize_dynamic

    from onnxopt.core.runtime import create_session
    from onnxopt.quantization.evaluate import Evaluator

    feed = {"input": np.random.default_rng(0).standard_normal((32, 16)).astype(np.float32) * 3}
    onnx.save(mlp_model, str(tmp_path / "f.onnx"))
    quantize_dynamic(str(tmp_path / "f.onnx"), str(tmp_path / "q.onnx"))
    got = Evaluator(mlp_model, feed, None, "test").score(tmp_path / "q.onnx").outputs[0]
    ref, q = create_session(mlp_model), create_session(tmp_path / "q.onnx")
    x = feed["input"]
    a = np.concatenate([ref.run(None, {"input": x[i:i + 1]})[0] for i in range(len(x))]).astype(np.float64)
    b = np.concatenate([q.run(None, {"input": x[i:i + 1]})[0] for i in range(len(x))]).astype(np.float64)
    batched = q.run(None, feed)[0].astype(np.float64)
    per_sample = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert got.worst_cosine == pytest.approx(per_sample.min(), abs=1e-9)
    assert got.cosine == pytest.approx(per_sample.mean(), abs=1e-9)
    assert not np.allclose(b, batched)  # the batch of 32 computes other numbers: it would not be batch 1's fidelity
