"""Magnitude pruning from a file (onnxopt.pruning.streamed): the same model, bytes and report as
the in-memory path, the input untouched, nothing left behind; small models with the size
thresholds lowered (as tests/test_big_models.py does)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from onnxopt.cli import cli, main
from onnxopt.core.external import load_external, write_external
from onnxopt.core.model import load_model
from onnxopt.core.runtime import create_session
from onnxopt.pruning import magnitude, streamed
from onnxopt.pruning.inline_file import serialized_size, write_inline
from onnxopt.pruning.magnitude import MagnitudeConfig, prune_magnitude
from onnxopt.pruning.streamed import prune_magnitude_file
from tests.conftest import make_convnet


def _mlp(seed: int = 0, ties: bool = False) -> onnx.ModelProto:
    """MatMul -> Relu -> Gemm, unnamed nodes, one weight in a Constant node; `ties`: weights
    rounded to a coarse grid, so many magnitudes are equal."""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((32, 64)).astype(np.float32)
    w2 = rng.standard_normal((10, 64)).astype(np.float32)
    if ties:
        w1, w2 = np.round(w1 * 4) / 4, np.round(w2 * 4) / 4
    nodes = [
        helper.make_node("Constant", [], ["w2"], value=numpy_helper.from_array(w2)),
        helper.make_node("MatMul", ["input", "w1"], ["h"]),
        helper.make_node("Relu", ["h"], ["hr"]),
        helper.make_node("Gemm", ["hr", "w2", "b2"], ["logits"], transB=1),
    ]
    g = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(rng.standard_normal(10).astype(np.float32), "b2")],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _digest(*paths: Path) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.read_bytes())
    return h.hexdigest()


def _external(model: onnx.ModelProto, path: Path) -> Path:
    write_external(model, path, threshold=256)
    return path


CONFIGS = [
    MagnitudeConfig(sparsity=0.5, min_elements=0),
    MagnitudeConfig(sparsity=0.7, global_=True, min_elements=0),
    MagnitudeConfig(sparsity=None, threshold=0.5, min_elements=0),
    MagnitudeConfig(sparsity=0.8, min_elements=0, sparse_storage=True, measure_gzip=True),
    MagnitudeConfig(sparsity=0.5, min_elements=0, skip=("w1",)),
    MagnitudeConfig(sparsity=0.5, min_elements=10**6),  # nothing to prune
]


@pytest.mark.parametrize("config", CONFIGS, ids=["per-layer", "global", "threshold", "sparse-gzip", "skip", "none"])
@pytest.mark.parametrize("build", [_mlp, make_convnet], ids=["mlp", "convnet"])
def test_file_path_writes_the_in_memory_model_and_report(tmp_path: Path, config: MagnitudeConfig, build) -> None:
    """Same bytes, same report (sizes included: the input is inline, so both count the same bytes)."""
    if config.skip and build is make_convnet:
        config = dataclasses.replace(config, skip=("c1_w",))
    src = tmp_path / "in.onnx"
    src.write_bytes(build().SerializeToString())
    before = _digest(src)
    mem = prune_magnitude(load_model(src), config)
    got = prune_magnitude_file(src, tmp_path / "out.onnx", config)
    assert (tmp_path / "out.onnx").read_bytes() == mem.model.SerializeToString()
    assert got.modified == mem.modified and got.path == tmp_path / "out.onnx"
    assert json.dumps(got.report, sort_keys=True) == json.dumps(mem.report, sort_keys=True)
    assert _digest(src) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.onnx", "out.onnx"]  # the work folder is gone


def test_external_input_same_weights_input_untouched(tmp_path: Path) -> None:
    src = _external(make_convnet(), tmp_path / "in.onnx")
    data = src.with_name("in.onnx.data")
    before = _digest(src, data)
    cfg = MagnitudeConfig(sparsity=0.6, global_=True, min_elements=0)
    mem = prune_magnitude(load_model(src), cfg)
    prune_magnitude_file(src, tmp_path / "out.onnx", cfg)
    assert (tmp_path / "out.onnx").read_bytes() == mem.model.SerializeToString()
    assert _digest(src, data) == before


def test_global_selection_with_ties_zeroes_exactly_k_smallest(tmp_path: Path) -> None:
    """Weights on a coarse grid: the k-th magnitude is shared by many entries; the streamed
    selection still zeroes exactly k, all no larger than any survivor, survivors unchanged."""
    src = tmp_path / "in.onnx"
    src.write_bytes(_mlp(ties=True).SerializeToString())
    weights = {t.name: numpy_helper.to_array(t) for t in load_model(src).graph.initializer if t.name == "w1"}
    weights["w2"] = numpy_helper.to_array(_mlp(ties=True).graph.node[0].attribute[0].t)
    for sparsity in (0.33, 0.5, 0.77):
        r = prune_magnitude_file(src, tmp_path / "out.onnx", MagnitudeConfig(sparsity=sparsity, global_=True, min_elements=0))
        out = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / "out.onnx")).graph.initializer}
        before = np.concatenate([weights[n].ravel() for n in ("w1", "w2")])
        after = np.concatenate([out[n].ravel() for n in ("w1", "w2")])
        zeroed = (after == 0) & (before != 0)
        k = round(sparsity * before.size)
        assert np.count_nonzero(after == 0) == k == r.report["total"]["zeros_after"]
        assert np.abs(before[zeroed]).max() <= np.abs(before[after != 0]).min()
        np.testing.assert_array_equal(after[after != 0], before[after != 0])


def test_write_inline_and_serialized_size_match_protobuf(tmp_path: Path) -> None:
    m = make_convnet()
    m.doc_string, m.graph.doc_string = "model doc", "graph doc"
    m.metadata_props.add(key="k", value="v")
    m.graph.initializer[0].doc_string = "tensor doc"
    src = _external(m, tmp_path / "in.onnx")
    graph = onnx.load(str(src), load_external_data=False)
    write_inline(graph, tmp_path, tmp_path / "inline.onnx")
    full = load_external(src)
    assert (tmp_path / "inline.onnx").read_bytes() == full.SerializeToString()
    assert serialized_size(graph, tmp_path) == full.ByteSize()
    # the last tensor of the data file without its `length` (optional in ONNX: to the end of the file)
    last = max((t for t in graph.graph.initializer if t.external_data),
               key=lambda t: int({e.key: e.value for e in t.external_data}["offset"]))
    kept = [(e.key, e.value) for e in last.external_data if e.key != "length"]
    del last.external_data[:]
    for key, value in kept:
        last.external_data.add(key=key, value=value)
    onnx.save(graph, str(src))
    graph = onnx.load(str(src), load_external_data=False)
    write_inline(graph, tmp_path, tmp_path / "inline.onnx")
    assert (tmp_path / "inline.onnx").read_bytes() == full.SerializeToString()
    assert serialized_size(graph, tmp_path) == full.ByteSize()


def _not_called(*args: object, **kwargs: object) -> None:
    raise AssertionError("the in-memory path ran")


def _invoke(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(cli, list(args))
    return r.exit_code, r.output


@pytest.mark.parametrize("extra", [(), ("--global", "--sparsity", "0.3")])
def test_cli_from_file_with_the_floor_writes_what_the_in_memory_path_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, extra: tuple[str, ...]
) -> None:
    src = _external(make_convnet(), tmp_path / "in.onnx")
    before = _digest(src, src.with_name("in.onnx.data"))
    code, text = _invoke("prune", str(src), "-o", str(tmp_path / "mem.onnx"), "--min-elements", "0", "--json", *extra)
    assert code == 0, text
    monkeypatch.setattr(streamed, "STREAM_BYTES", 0)
    monkeypatch.setattr(magnitude, "prune_magnitude", _not_called)  # the file path must not load the weights
    code, text2 = _invoke("prune", str(src), "-o", str(tmp_path / "file.onnx"), "--min-elements", "0", "--json", *extra)
    assert code == 0, text2
    mem, got = json.loads(text), json.loads(text2)
    assert (tmp_path / "file.onnx").read_bytes() == (tmp_path / "mem.onnx").read_bytes()
    assert got["fidelity"]["tried"] == mem["fidelity"]["tried"] and got["fidelity"]["checked"]
    assert got["total"] == mem["total"] and got["input_file_size"] == mem["input_file_size"] > src.stat().st_size
    assert _digest(src, src.with_name("in.onnx.data")) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.onnx", "in.onnx", "in.onnx.data", "mem.onnx"]


def test_cli_from_file_accuracy_with_labelled_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, digits_cnn: Path, digits_val: Path
) -> None:
    args = ("--sparsity", "0.3", "--data", str(digits_val), "--json")
    code, text = _invoke("prune", str(digits_cnn), "-o", str(tmp_path / "mem.onnx"), *args)
    assert code == 0, text
    monkeypatch.setattr(streamed, "STREAM_BYTES", 0)
    code, text2 = _invoke("prune", str(digits_cnn), "-o", str(tmp_path / "file.onnx"), *args)
    assert code == 0, text2
    mem, got = json.loads(text), json.loads(text2)
    assert got["accuracy"] == mem["accuracy"] and got["fidelity"]["accuracy_after"] == mem["fidelity"]["accuracy_after"]
    assert (tmp_path / "file.onnx").read_bytes() == (tmp_path / "mem.onnx").read_bytes()


@pytest.mark.parametrize("method", [["--sparsity", "0.9", "--min-elements", "0"],
                                    ["--method", "channels", "--ratio", "0.9"]], ids=["magnitude", "channels"])
def test_cli_from_file_gate_failure_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str], method: list[str]) -> None:
    src = _external(make_convnet(), tmp_path / "in.onnx")
    monkeypatch.setattr(streamed, "STREAM_BYTES", 0)
    with pytest.raises(SystemExit) as e:
        main(["prune", str(src), "-o", str(tmp_path / "out" / "file.onnx"), *method, "--min-cosine", "0.99999999"])
    assert e.value.code == 3
    assert "nothing written" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.onnx", "in.onnx.data"]


def test_output_above_the_inline_limit_gets_external_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = _external(make_convnet(), tmp_path / "in.onnx")
    monkeypatch.setattr(streamed, "INLINE_LIMIT", 0)
    monkeypatch.setattr(streamed, "STREAM_BYTES", 0)
    code, text = _invoke("prune", str(src), "-o", str(tmp_path / "out.onnx"), "--sparsity", "0.3",
                         "--min-elements", "0", "--min-cosine", "0", "--json")
    assert code == 0, text
    assert (tmp_path / "out.onnx.data").is_file()
    expected = prune_magnitude(load_model(src), MagnitudeConfig(sparsity=0.3, min_elements=0)).model
    assert load_external(tmp_path / "out.onnx").SerializeToString() == expected.SerializeToString()
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    a = create_session(tmp_path / "out.onnx", custom_ops=False).run(None, {"input": x})[0]
    b = create_session(expected, custom_ops=False).run(None, {"input": x})[0]
    np.testing.assert_array_equal(a, b)
    report = json.loads(text)
    assert report["output_file_size"] == sum(p.stat().st_size for p in tmp_path.glob("out.onnx*"))
    assert report["input_file_size"] == sum(p.stat().st_size for p in tmp_path.glob("in.onnx*"))


@pytest.mark.parametrize("dtype", ["float16", "float64", "bfloat16"])
@pytest.mark.parametrize("global_", [False, True])
def test_other_float_types_same_bytes(tmp_path: Path, dtype: str, global_: bool) -> None:
    """Weights that are not float32: same bytes as in memory; with --global on 16-bit weights, where the
    k-th magnitude is shared by many entries, the two paths may zero different ones among those equal to it."""
    import ml_dtypes

    np_dtype = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.dtype(dtype)
    rng = np.random.default_rng(1)
    w = [rng.standard_normal((48, 40)).astype(np_dtype) for _ in range(2)]
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(np_dtype))
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w0"], ["h"]), helper.make_node("MatMul", ["h", "w1"], ["y"])], "g",
        [helper.make_tensor_value_info("x", elem, ["batch", 48])], [helper.make_tensor_value_info("y", elem, ["batch", 40])],
        [numpy_helper.from_array(w[0], "w0"), numpy_helper.from_array(w[1][:40], "w1")],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    src = _external(m, tmp_path / "in.onnx")
    cfg = MagnitudeConfig(sparsity=0.4, global_=global_, min_elements=0)
    mem = prune_magnitude(load_model(src), cfg)
    got = prune_magnitude_file(src, tmp_path / "out.onnx", cfg)
    assert got.report["total"] == mem.report["total"] and got.report["total"]["zeros_after"] > 0
    if not global_ or dtype == "float64":
        assert (tmp_path / "out.onnx").read_bytes() == mem.model.SerializeToString()
        return
    a = np.concatenate([numpy_helper.to_array(t).astype(np.float32).ravel() for t in onnx.load(str(tmp_path / "out.onnx")).graph.initializer])
    b = np.concatenate([numpy_helper.to_array(t).astype(np.float32).ravel() for t in mem.model.graph.initializer])
    before = np.concatenate([w[0].astype(np.float32).ravel(), w[1][:40].astype(np.float32).ravel()])
    differ = a != b
    assert len(np.unique(np.abs(before[differ]))) <= 1  # only ties at the cut
