"""Channel pruning from a file (onnxopt.pruning.channels.streamed): the same model, bytes and
report as the in-memory path, the input and its data file untouched, nothing left behind; small
models with the size thresholds lowered (as tests/test_prune_big.py does for magnitude)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from onnxopt.cli import cli
from onnxopt.core.external import same_computation, write_external
from onnxopt.core.model import load_model, save_model
from onnxopt.core.runtime import create_session
from onnxopt.pruning import streamed
from onnxopt.pruning.channels import prune as channels_prune
from onnxopt.pruning.channels.prune import ChannelConfig, prune_channels
from onnxopt.pruning.channels.streamed import prune_channels_file
from tests.conftest import make_convnet


def _mlp(seed: int = 0) -> onnx.ModelProto:
    """MatMul -> Add -> Relu -> Gemm (weight in a Constant node), unnamed nodes."""
    rng = np.random.default_rng(seed)
    w2 = rng.standard_normal((10, 64)).astype(np.float32)
    nodes = [
        helper.make_node("Constant", [], ["w2"], value=numpy_helper.from_array(w2)),
        helper.make_node("MatMul", ["input", "w1"], ["h"]),
        helper.make_node("Add", ["h", "b1"], ["hb"]),
        helper.make_node("Relu", ["hb"], ["hr"]),
        helper.make_node("Gemm", ["hr", "w2", "b2"], ["logits"], transB=1),
    ]
    inits = [numpy_helper.from_array(rng.standard_normal((32, 64)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal(64).astype(np.float32), "b1"),
             numpy_helper.from_array(rng.standard_normal(10).astype(np.float32), "b2")]
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 32])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _reshape_convnet() -> onnx.ModelProto:
    """make_convnet with Reshape to [-1, 16] (a shape initializer the cut rewrites) for Flatten."""
    m = make_convnet()
    for n in m.graph.node:
        if n.op_type == "Flatten":
            n.op_type = "Reshape"
            n.input.append("flat_shape")
    m.graph.initializer.append(numpy_helper.from_array(np.array([-1, 16], np.int64), "flat_shape"))
    return m


def _digest(*paths: Path) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.read_bytes())
    return h.hexdigest()


BUILDS = {"mlp": _mlp, "convnet": make_convnet, "reshape": _reshape_convnet}
CONFIGS = {
    "l1": ChannelConfig(ratio=0.3),
    "l2-round": ChannelConfig(ratio=0.5, importance="l2", round_to=4),
    "none": ChannelConfig(ratio=0.01),  # removes no channel
}


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
@pytest.mark.parametrize("build", BUILDS.values(), ids=BUILDS.keys())
def test_file_path_writes_the_in_memory_model_and_report(tmp_path: Path, config: ChannelConfig, build) -> None:
    src = tmp_path / "in.onnx"
    src.write_bytes(build().SerializeToString())
    before = _digest(src)
    mem = prune_channels(load_model(src), config)
    got = prune_channels_file(src, tmp_path / "out.onnx", config)
    assert got.modified == mem.modified == (config.ratio > 0.1) and got.path == tmp_path / "out.onnx"
    assert (tmp_path / "out.onnx").read_bytes() == mem.model.SerializeToString()
    assert json.dumps(got.report, sort_keys=True) == json.dumps(mem.report, sort_keys=True)
    assert _digest(src) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.onnx", "out.onnx"]  # the work folder is gone


def test_skip_and_external_input_every_tensor_external(tmp_path: Path) -> None:
    """All initializers in external data, even the Reshape target (read in for the rules); the
    input files are untouched and the result computes what the in-memory one does."""
    src = tmp_path / "in.onnx"
    write_external(_reshape_convnet(), src, threshold=0)
    data = src.with_name("in.onnx.data")
    before = _digest(src, data)
    cfg = ChannelConfig(ratio=0.5, skip=("conv1",))
    mem = prune_channels(load_model(src), cfg)
    save_model(mem.model, tmp_path / "mem.onnx")
    got = prune_channels_file(src, tmp_path / "out.onnx", cfg)
    assert got.modified and [g["layers"] for g in got.report["groups"]] == [["conv2"]]
    assert same_computation(tmp_path / "out.onnx", tmp_path / "mem.onnx")
    shapes = {t.name: list(t.dims) for t in onnx.load(str(tmp_path / "out.onnx")).graph.initializer}
    assert shapes["c2_w.pruned"] == [8, 8, 3, 3] and shapes["fc_w.pruned"] == [10, 8]
    assert numpy_helper.to_array(onnx.load(str(tmp_path / "out.onnx")).graph.initializer[-1]).tolist() == [-1, 8]
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    a = create_session(tmp_path / "out.onnx", custom_ops=False).run(None, {"input": x})[0]
    b = create_session(mem.model, custom_ops=False).run(None, {"input": x})[0]
    np.testing.assert_array_equal(a, b)
    assert _digest(src, data) == before


def _invoke(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(cli, list(args))
    return r.exit_code, r.output


def _not_called(*a, **k):
    raise AssertionError("the in-memory path was used")


def test_cli_from_file_with_the_floor_writes_what_the_in_memory_path_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "in.onnx"
    write_external(make_convnet(), src, threshold=256)
    data = tmp_path / "val.npz"
    np.savez(data, input=np.random.default_rng(0).standard_normal((8, 3, 16, 16)).astype(np.float32))
    before = _digest(src, src.with_name("in.onnx.data"))
    args = ("--method", "channels", "--ratio", "0.6", "--min-cosine", "0.8", "--data", str(data), "--json")
    code, text = _invoke("prune", str(src), "-o", str(tmp_path / "mem.onnx"), *args)
    assert code == 0, text
    monkeypatch.setattr(streamed, "STREAM_BYTES", 0)
    monkeypatch.setattr(channels_prune, "prune_channels", _not_called)  # the file path must not load the weights
    code, text2 = _invoke("prune", str(src), "-o", str(tmp_path / "file.onnx"), *args)
    assert code == 0, text2
    mem, got = json.loads(text), json.loads(text2)
    assert len(got["fidelity"]["tried"]) > 1  # the floor lowered the ratio: several candidates measured
    assert got["fidelity"] == mem["fidelity"] and got["groups"] == mem["groups"]
    assert (tmp_path / "file.onnx").read_bytes() == (tmp_path / "mem.onnx").read_bytes()
    assert _digest(src, src.with_name("in.onnx.data")) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.onnx", "in.onnx", "in.onnx.data", "mem.onnx", "val.npz"]


def test_output_above_the_inline_limit_gets_its_own_data_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "in.onnx"
    write_external(make_convnet(), src, threshold=256)
    before = _digest(src, src.with_name("in.onnx.data"))
    monkeypatch.setattr(streamed, "INLINE_LIMIT", 0)
    monkeypatch.setattr(streamed, "STREAM_BYTES", 0)
    code, text = _invoke("prune", str(src), "-o", str(tmp_path / "out.onnx"), "--method", "channels",
                         "--ratio", "0.5", "--min-cosine", "0", "--json")
    assert code == 0, text
    assert (tmp_path / "out.onnx.data").is_file()
    expected = prune_channels(load_model(src), ChannelConfig(ratio=0.5)).model
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    a = create_session(tmp_path / "out.onnx", custom_ops=False).run(None, {"input": x})[0]
    b = create_session(expected, custom_ops=False).run(None, {"input": x})[0]
    np.testing.assert_array_equal(a, b)
    report = json.loads(text)
    assert report["params_after"] < report["params_before"]
    assert report["output_file_size"] == sum(p.stat().st_size for p in tmp_path.glob("out.onnx*"))
    assert _digest(src, src.with_name("in.onnx.data")) == before


@pytest.mark.parametrize("recipe", [
    '[[passes]]\nname = "prune_channels"\nratio = 0.25\n',
    '[[passes]]\nname = "prune_magnitude"\nsparsity = 0.5\n',
], ids=["channels", "magnitude"])
def test_optimize_prunes_a_stage_kept_in_a_file_from_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              recipe: str) -> None:
    """In optimize, a stage the store keeps as its graph only (a big model) is pruned from its file, as the
    CLI prunes (the in-memory functions are not called), and gives optimize(proto)'s pruned model."""
    import onnxopt.optimization.store as store
    import onnxopt.pruning.recipe_pass as recipe_pass
    from onnxopt.optimization.recipe import parse_recipe
    from onnxopt.optimization.run import optimize
    from onnxopt.optimization.types import Gates, OptimizeConfig

    src = tmp_path / "m.onnx"
    save_model(make_convnet(), src, external_data=True)
    cfg = OptimizeConfig(benchmark=False, gates=Gates(min_cosine=0))
    in_memory = optimize(load_model(src), parse_recipe(recipe), cfg)
    monkeypatch.setattr(store, "KEEP_BYTES", 0)  # every stage kept in a file, its graph only in memory
    monkeypatch.setattr(recipe_pass, "prune_channels", _not_called)
    monkeypatch.setattr(recipe_pass, "prune_magnitude", _not_called)
    by_file = optimize(src, parse_recipe(recipe), cfg)
    pruned = [next(s for s in r.stages if s.pass_name and s.pass_name.startswith("prune")) for r in (in_memory, by_file)]
    assert all(s.modified for s in pruned) and [r.final for r in (in_memory, by_file)] == [s.name for s in pruned]
    x = np.random.default_rng(0).standard_normal((4, *[d.dim_value for d in make_convnet().graph.input[0]
                                                       .type.tensor_type.shape.dim[1:]])).astype(np.float32)
    outs = [create_session(r.model).run(None, {"input": x})[0] for r in (in_memory, by_file)]  # the results, weights in
    np.testing.assert_array_equal(outs[0], outs[1])
    assert [(t.name, list(t.dims)) for t in by_file.model.graph.initializer] == \
        [(t.name, list(t.dims)) for t in in_memory.model.graph.initializer]
