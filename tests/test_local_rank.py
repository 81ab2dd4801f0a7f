"""The fallback's ranking for big models (quantization.local_rank): its emulated weights compute what
onnxruntime's quantized MatMuls compute, and in file mode the fallback ranks without a build per node."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt.core.model import load_model
from onnxopt.core.runtime import create_session
from onnxopt.quantization.engine import Candidate
from onnxopt.quantization.local_rank import dequantize, scheme_of
from onnxopt.quantization.sensitivity import dynamic_quantize
from tests.test_big_models import external_mlp

K, N = 256, 64


def _matmul(path: Path, w: np.ndarray) -> Path:
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, K])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, N])],
                          [numpy_helper.from_array(w, "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


def _quantized(src: Path, out: Path, cand: Candidate) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from onnxopt.quantization.weight_only import quantize_file

    if cand.mode == "weight-only":
        quantize_file(src, out, bits=cand.bits, block_size=cand.block_size, algorithm="rtn", accuracy_level=0)
    else:
        quantize_dynamic(str(src), str(out), per_channel=cand.per_channel, reduce_range=cand.reduce_range,
                         weight_type=QuantType.QInt8 if cand.weight_type == "int8" else QuantType.QUInt8)
    return out


@pytest.mark.parametrize("cand", [
    Candidate("dynamic"), Candidate("dynamic", per_channel=True, reduce_range=True),
    Candidate("dynamic", weight_type="uint8"), Candidate("weight-only", bits=4, block_size=32),
    Candidate("weight-only", bits=4, block_size=128), Candidate("weight-only", bits=8, block_size=64),
], ids=lambda c: c.name)
def test_emulated_weights_compute_what_onnxruntime_computes(tmp_path: Path, cand: Candidate) -> None:
    """x_q W_q from dequantize() is onnxruntime's quantized output, to well within the quantization error.
    (Not per-channel s8 with full 8-bit weights: on AVX2 without VNNI onnxruntime's u8 x s8 kernel saturates
    pairs of products, an error of the CPU the emulation leaves out; reduce_range is what avoids it.)"""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((K, N)).astype(np.float32)
    w[rng.integers(0, K, 20), rng.integers(0, N, 20)] *= 8  # outliers: coarse scales, visible errors
    q = _quantized(_matmul(tmp_path / "f.onnx", w), tmp_path / "q.onnx", cand)
    sess = create_session(q)
    scheme = scheme_of(cand)
    worst = 0.0
    for seed in range(8):
        x = np.random.default_rng(seed + 1).standard_normal((1, K)).astype(np.float32) + 0.3
        y_ort = sess.run(None, {"x": x})[0].astype(np.float64)
        xq, s, z = dynamic_quantize(x)
        xe = ((xq - z) * s).astype(np.float32) if scheme.activation else x
        mine = (xe @ dequantize(w, scheme)).astype(np.float64)
        quant_error = np.linalg.norm(y_ort - x.astype(np.float64) @ w)
        assert quant_error > 0  # the candidate changes the numbers
        worst = max(worst, float(np.linalg.norm(mine - y_ort) / quant_error))
    assert worst < 0.05, worst


@pytest.mark.parametrize("mode", ["dynamic", "weight-only"])
def test_file_mode_fallback_ranks_without_a_build_per_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           mode: str) -> None:
    """A big model's fallback (file-mode threshold at 0) ranks its nodes from one float run: builds are
    the candidate, the bound and the steps only; the outlier layer goes back to float first (for int8, as the
    per-node builds of memory mode find); every given sample holds the floor, recomputed here."""
    import onnxopt.quantization.api as api
    from onnxopt.quantization.config import QuantizeConfig
    from onnxopt.quantization.session import QuantSession

    src, sensitive = external_mlp(tmp_path / "m.onnx", width=384, layers=6, outliers_in=2), "w2"
    before = (src.read_bytes(), (tmp_path / "m.onnx.data").read_bytes())
    floor = 0.9998 if mode == "dynamic" else 0.995
    builds: list[str] = []
    real_build = QuantSession.build

    def counted(self: QuantSession, cand: Candidate, *args: object, **kw: object) -> object:
        builds.append(cand.name)
        return real_build(self, cand, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(QuantSession, "build", counted)
    x = np.random.default_rng(11).standard_normal((16, 384)).astype(np.float32)
    reports = {}
    for label, threshold in (("file", 0), ("memory", 10**12)):
        monkeypatch.setattr(api, "FROM_FILE_BYTES", threshold)
        builds.clear()
        r = api.quantize(src, QuantizeConfig(mode=mode, min_cosine=floor), val=({"input": x}, None))
        fb = r.report["fallback"]
        assert fb["needed"] and r.meets_budget
        reports[label] = (fb, len(builds), r)
    fb, n_builds, r = reports["file"]
    assert "no build per node" in fb["ranking"]
    assert n_builds == 2 + len(fb["steps"])  # the candidate, the bound, the steps: none per node
    assert reports["memory"][1] == 2 + 6 + len(reports["memory"][0]["steps"])  # memory mode: one per node (6)
    graph = load_model(src, load_external_data=False)  # the names every command gives
    names = {n.input[1]: n.name for n in graph.graph.node if n.op_type == "MatMul"}
    assert fb["sensitivity"][0]["node"] == names[sensitive]
    if mode == "dynamic":  # int8: the outlier layer dominates; int4's block scales spread the harm more evenly
        assert reports["memory"][0]["sensitivity"][0]["node"] == names[sensitive]
    assert (src.read_bytes(), (tmp_path / "m.onnx.data").read_bytes()) == before
    fa, fq = create_session(src), create_session(r.model)  # batch 1: one sample per run, as deployed
    a = np.concatenate([fa.run(None, {"input": x[i:i + 1]})[0] for i in range(len(x))]).astype(np.float64)
    b = np.concatenate([fq.run(None, {"input": x[i:i + 1]})[0] for i in range(len(x))]).astype(np.float64)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cos.min() >= floor - 1e-6, cos.min()  # every sample holds the floor it was checked on
