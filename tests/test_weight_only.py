"""Weight-only MatMulNBits quantization: `quantize --mode weight-only`, and its candidates in auto mode."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from onnxopt.cli import cli
from onnxopt.core.errors import GateFailedError, InvalidInputError
from onnxopt.core.model import op_histogram
from onnxopt.core.runtime import create_session
from onnxopt.quantization.config import QuantizeConfig
from onnxopt.quantization.weight_only import matmul_heavy
from tests.conftest import make_convnet
from tests.test_node_names import unnamed_mlp

WIDTH = 256


def _cosines(src: Path, out: Path, rows: int = 8) -> np.ndarray:
    """Per-sample cosine of out's output vs src's on seeded random inputs, computed here."""
    x = np.random.default_rng(3).standard_normal((rows, WIDTH)).astype(np.float32)
    ref = create_session(src).run(None, {"input": x})[0].astype(np.float64)
    got = create_session(out).run(None, {"input": x})[0].astype(np.float64)
    return (ref * got).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))


@pytest.fixture
def mlp_file(tmp_path: Path) -> Path:
    path = tmp_path / "mlp.onnx"
    onnx.save(unnamed_mlp(width=WIDTH, layers=3), str(path))
    return path


@pytest.mark.parametrize("block", [32, 64, 128])
def test_weight_only_int4(tmp_path: Path, mlp_file: Path, block: int) -> None:
    out = tmp_path / "q4.onnx"
    r = CliRunner().invoke(cli, ["quantize", str(mlp_file), "-o", str(out), "--mode", "weight-only", "--bits", "4",
                                 "--block-size", str(block), "--no-bench", "--json", "--min-cosine", "0"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output)
    assert rep["winner"] == f"int4-b{block}" and len(rep["nodes"]["quantized"]) == 3
    model = onnx.load(str(out))
    hist = op_histogram(model)
    assert hist.get("com.microsoft.MatMulNBits") == 3 and "MatMul" not in hist
    blocks = {a.i for n in model.graph.node if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "block_size"}
    assert blocks == {block}
    # 4-bit weights plus a scale and zero point per block: well under a quarter of float32
    assert out.stat().st_size < 0.2 * mlp_file.stat().st_size
    cos = _cosines(mlp_file, out)
    assert cos.min() > 0.95  # int4 on random weights: close, not exact
    assert abs(rep["fidelity"]["min_cosine"] - cos.min()) < 0.05  # the report measures what we measure
    assert cos.min() < 0.99999  # the weights really changed


def test_weight_only_int8_is_closer_than_int4(tmp_path: Path, mlp_file: Path) -> None:
    outs = {}
    for bits in ("4", "8"):
        outs[bits] = tmp_path / f"q{bits}.onnx"
        r = CliRunner().invoke(cli, ["quantize", str(mlp_file), "-o", str(outs[bits]), "--mode", "weight-only",
                                     "--bits", bits, "--no-bench", "--json"])
        assert r.exit_code == 0, r.output
    assert _cosines(mlp_file, outs["8"]).min() > max(0.999, _cosines(mlp_file, outs["4"]).min())


def test_weight_only_budget_returns_nodes_to_float(tmp_path: Path, mlp_file: Path) -> None:
    """The fidelity floor holds for weight-only as for int8: the fallback returns MatMuls to float."""
    out = tmp_path / "q.onnx"
    r = CliRunner().invoke(cli, ["quantize", str(mlp_file), "-o", str(out), "--mode", "weight-only",
                                 "--block-size", "128", "--min-cosine", "0.995", "--no-bench", "--json"])
    rep = json.loads(r.output)
    cos = _cosines(mlp_file, out)
    if r.exit_code == 0:
        assert rep["fallback"]["needed"] and rep["nodes"]["float"]
        assert cos.min() >= 0.99  # recomputed on other inputs than the budget's
    else:  # the closest model is written, and the gate says so (exit 3 from onnxopt.cli.main)
        assert isinstance(r.exception, GateFailedError) and r.exception.exit_code == 3, r.output
        assert rep["fallback"]["needed"] and rep["fallback"]["steps"]
    hist = op_histogram(onnx.load(str(out)))
    assert hist.get("MatMul", 0) >= 1


def test_auto_measures_int4_on_matmul_models_only(tmp_path: Path, mlp_file: Path) -> None:
    out = tmp_path / "q.onnx"
    r = CliRunner().invoke(cli, ["quantize", str(mlp_file), "-o", str(out), "--objective", "size",
                                 "--min-cosine", "0.95", "--runs", "4", "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output)
    rows = {c["name"]: c for c in rep["candidates"]}
    assert {"int4-b32", "int4-b128"} <= set(rows)
    assert all("fidelity" in rows[n] for n in ("int4-b32", "int4-b128"))
    # objective size within the floor: the smallest model that holds it is an int4 one
    assert rep["winner"].startswith("int4-") and rep["meets_budget"]
    assert _cosines(mlp_file, out).min() > 0.95
    conv = make_convnet()
    assert matmul_heavy(onnx.load(str(mlp_file))) and not matmul_heavy(conv)


def test_weight_only_config_errors(tmp_path: Path, mlp_file: Path) -> None:
    with pytest.raises(InvalidInputError, match="MatMul only"):
        QuantizeConfig(mode="weight-only", op_types=("Conv",))
    with pytest.raises(InvalidInputError, match="--block-size 48"):
        QuantizeConfig(mode="weight-only", block_size=48)
    out = tmp_path / "q.onnx"
    r = CliRunner().invoke(cli, ["quantize", str(mlp_file), "-o", str(out), "--mode", "weight-only", "--bits", "3"])
    assert r.exit_code == 2 and not out.exists()


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="HQQ needs torch")
def test_weight_only_hqq(tmp_path: Path, mlp_file: Path) -> None:
    out = tmp_path / "hqq.onnx"
    r = CliRunner().invoke(cli, ["quantize", str(mlp_file), "-o", str(out), "--mode", "weight-only",
                                 "--algorithm", "hqq", "--block-size", "64", "--no-bench", "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output)  # with the default floor held on every sample, a node may go back to float
    assert rep["winner"].startswith("int4-b64-hqq") and rep["quantizer"]["algorithm"] == "hqq"
    model = onnx.load(str(out))
    levels = {a.i for n in model.graph.node if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "accuracy_level"}
    assert levels == {4}
    assert _cosines(mlp_file, out).min() > 0.95
