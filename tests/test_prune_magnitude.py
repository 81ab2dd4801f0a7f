"""Magnitude pruning and the bitmask sparse storage, checked in onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from onnxopt.core.errors import InvalidInputError, UnsupportedModelError
from onnxopt.core.runtime import create_session
from onnxopt.pruning.magnitude import MagnitudeConfig, prune_magnitude
from onnxopt.pruning.sparse_storage import compress_initializers, expand_sparse_storage
from tests.conftest import make_convnet, make_mlp

WEIGHTS = ("c1_w", "c2_w", "fc_w")


def _arrays(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _big_mlp(seed: int = 0, opset: int = 17) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((64, 128)).astype(np.float32)
    w1 = np.tile(w1, (4, 1))
    w2 = rng.standard_normal((10, 128)).astype(np.float32)
    b2 = rng.standard_normal(10).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["input", "w1"], ["h"], name="fc1"),
        helper.make_node("Relu", ["h"], ["hr"], name="relu"),
        helper.make_node("Gemm", ["hr", "w2", "b2"], ["logits"], name="fc2", transB=1),
    ]
    g = helper.make_graph(
        nodes, "big",
        [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["batch", 256])],
        [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["batch", 10])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"), numpy_helper.from_array(b2, "b2")],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9])
def test_exact_per_tensor_sparsity_biases_untouched(sparsity: float) -> None:
    m = make_convnet()
    before = _arrays(m)
    r = prune_magnitude(m, MagnitudeConfig(sparsity=sparsity, min_elements=0))
    after = _arrays(r.model)
    assert {t["name"] for t in r.report["tensors"]} == set(WEIGHTS)
    for name in WEIGHTS:
        n = before[name].size
        assert np.count_nonzero(after[name] == 0) == round(sparsity * n)
        kept = after[name] != 0
        np.testing.assert_array_equal(after[name][kept], before[name][kept])
        # the survivors are the largest magnitudes
        if sparsity > 0:
            assert np.abs(before[name][~kept]).max() <= np.abs(before[name][kept]).min()
    for name in before:
        if name not in WEIGHTS:
            np.testing.assert_array_equal(after[name], before[name])
    assert r.modified == (sparsity > 0)


def test_global_threshold_hits_total_exactly() -> None:
    m = make_convnet()
    r = prune_magnitude(m, MagnitudeConfig(sparsity=0.6, global_=True, min_elements=0))
    after = _arrays(r.model)
    total = sum(after[n].size for n in WEIGHTS)
    zeros = sum(int(np.count_nonzero(after[n] == 0)) for n in WEIGHTS)
    assert zeros == round(0.6 * total) == r.report["total"]["zeros_after"]
    per = [t["sparsity_after"] for t in r.report["tensors"]]
    assert max(per) - min(per) > 0.01  # one threshold, so layers end up at different sparsities


def test_threshold_mode_and_ties() -> None:
    m = make_convnet()
    before = _arrays(m)
    r = prune_magnitude(m, MagnitudeConfig(threshold=0.2, min_elements=0))
    after = _arrays(r.model)
    for n in WEIGHTS:
        np.testing.assert_array_equal(after[n], np.where(np.abs(before[n]) < 0.2, 0, before[n]))
    # all-equal magnitudes: the count is still exact and the choice deterministic
    const = make_mlp()
    for t in const.graph.initializer:
        if t.name == "w1":
            t.CopyFrom(numpy_helper.from_array(np.ones((16, 32), np.float32), "w1"))
    a = prune_magnitude(const, MagnitudeConfig(sparsity=0.25, min_elements=0))
    b = prune_magnitude(const, MagnitudeConfig(sparsity=0.25, min_elements=0))
    wa, wb = _arrays(a.model)["w1"], _arrays(b.model)["w1"]
    assert np.count_nonzero(wa == 0) == 128
    np.testing.assert_array_equal(wa, wb)


def test_skip_include_min_elements_and_input_untouched() -> None:
    m = make_convnet()
    raw = m.SerializeToString()
    r = prune_magnitude(m, MagnitudeConfig(sparsity=0.5, skip=("conv1", "fc_w"), include=("c2_b",), min_elements=0))
    assert m.SerializeToString() == raw
    after, before = _arrays(r.model), _arrays(m)
    for n in ("c1_w", "fc_w"):
        np.testing.assert_array_equal(after[n], before[n])
    assert np.count_nonzero(after["c2_b"] == 0) == 8
    skipped = {s["name"]: s["reason"] for s in r.report["skipped"]}
    assert "conv1" in skipped["c1_w"] and "--skip" in skipped["fc_w"]
    small = prune_magnitude(m, MagnitudeConfig(sparsity=0.5))  # default min_elements=256
    assert {t["name"] for t in small.report["tensors"]} == {"c2_w"}
    with pytest.raises(InvalidInputError, match="matches no node"):
        prune_magnitude(m, MagnitudeConfig(skip=("typo",)))


@pytest.mark.parametrize("sparsity", [-0.1, 1.0, 2.0, float("nan")])
def test_bad_sparsity(sparsity: float) -> None:
    with pytest.raises(InvalidInputError, match=r"sparsity must be in \[0, 1\)"):
        MagnitudeConfig(sparsity=sparsity)
    with pytest.raises(InvalidInputError, match="threshold"):
        MagnitudeConfig(threshold=-1.0)


def test_no_prunable_tensors() -> None:
    r = prune_magnitude(make_mlp(), MagnitudeConfig(sparsity=0.5, min_elements=10**6))
    assert not r.modified
    assert "no prunable tensors" in r.report["message"]


def test_sparse_storage_loads_and_matches_dense() -> None:
    m = _big_mlp()
    dense = prune_magnitude(m, MagnitudeConfig(sparsity=0.5))
    sparse = prune_magnitude(m, MagnitudeConfig(sparsity=0.5, sparse_storage=True, measure_gzip=True))
    onnx.checker.check_model(sparse.model, full_check=True)
    st = sparse.report["storage"]
    assert {e["name"] for e in st["encoded"]} == {"w1", "w2"}
    assert st["size_after"] <= 0.6 * st["size_before"]
    assert st["gzip_after"] < st["gzip_before"]
    x = np.random.default_rng(1).standard_normal((5, 256)).astype(np.float32)
    want = create_session(dense.model, custom_ops=False).run(None, {"input": x})[0]
    for level in ("all", "disable"):  # constant-folded at load, or computed at run time
        got = create_session(sparse.model, opt_level=level, custom_ops=False).run(None, {"input": x})[0]
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    back = _arrays(expand_sparse_storage(sparse.model))
    for name, arr in _arrays(dense.model).items():
        np.testing.assert_array_equal(back[name], arr)


def test_sparse_storage_of_int8_quantized_weights() -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    m = prune_magnitude(_big_mlp(), MagnitudeConfig(sparsity=0.5)).model
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        src, dst = Path(d) / "p.onnx", Path(d) / "q.onnx"
        onnx.save(m, str(src))
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
        q = onnx.load(str(dst))
    packed, report = compress_initializers(q)
    assert any(e["dtype"] == "int8" for e in report["encoded"])
    assert report["size_after"] < 0.8 * report["size_before"]
    x = np.random.default_rng(2).standard_normal((3, 256)).astype(np.float32)
    want = create_session(q, custom_ops=False).run(None, {"input": x})[0]
    np.testing.assert_array_equal(create_session(packed, custom_ops=False).run(None, {"input": x})[0], want)
    # the CLI route: `onnxopt prune q.onnx -o out.onnx --sparsity 0 --sparse-storage`
    r = prune_magnitude(q, MagnitudeConfig(sparsity=0.0, sparse_storage=True))
    assert r.modified and "no prunable tensors" in r.report["message"]
    assert {e["name"] for e in r.report["storage"]["encoded"]} == {e["name"] for e in report["encoded"]}
    np.testing.assert_array_equal(create_session(r.model, custom_ops=False).run(None, {"input": x})[0], want)


def test_sparse_storage_needs_opset_11() -> None:
    m = _big_mlp(opset=10)
    with pytest.raises(UnsupportedModelError, match="opset >= 11"):
        prune_magnitude(m, MagnitudeConfig(sparsity=0.5, sparse_storage=True))
