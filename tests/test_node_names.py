"""Models whose nodes have no names (as onnx.helper scripts and some converters write them) go
through quantize and optimize; the names onnxopt gives are stable, unique, and leave user names alone."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from onnxopt.cli import cli
from onnxopt.core.model import all_nodes, load_model
from onnxopt.core.names import name_nodes, node_digest, unnamed_count, with_node_names
from onnxopt.core.runtime import create_session
from onnxopt.quantization.api import quantize
from onnxopt.quantization.config import QuantizeConfig
from tests.conftest import make_convnet

FAST_OPT = ["--bench-runs", "5", "--bench-seconds", "0.1", "--min-cosine", "0.9"]


def _model(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto], output: onnx.ValueInfoProto,
           inits: dict[str, np.ndarray]) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, [output], [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    assert unnamed_count(model) == len(nodes)
    return model


def unnamed_mlp(width: int = 64, layers: int = 4, seed: int = 0) -> onnx.ModelProto:
    """input[batch,width] -> (MatMul -> Relu) x layers, no node names."""
    rng = np.random.default_rng(seed)
    nodes, inits, x = [], {}, "input"
    for i in range(layers):
        inits[f"w{i}"] = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
        nodes += [helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"]), helper.make_node("Relu", [f"m{i}"], [f"r{i}"])]
        x = f"r{i}"
    return _model(nodes, [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", width])],
                  helper.make_tensor_value_info(x, TensorProto.FLOAT, ["batch", width]), inits)


def unnamed_convnet() -> onnx.ModelProto:
    """tests.conftest.make_convnet with every node name removed."""
    model = make_convnet()
    for n in model.graph.node:
        n.name = ""
    return model


def unnamed_transformer_block(d: int = 32, seq: int = 8, seed: int = 0) -> onnx.ModelProto:
    """One single-head transformer encoder block: attention (Q, K, V, softmax(QK^T/sqrt d) V, output
    projection), residual + LayerNormalization, feed-forward (MatMul, Relu, MatMul), residual + LayerNorm."""
    rng = np.random.default_rng(seed)

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32)

    inits = {"wq": w(d, d), "wk": w(d, d), "wv": w(d, d), "wo": w(d, d), "w1": w(d, 2 * d), "w2": w(2 * d, d),
             "scale": np.array(1 / np.sqrt(d), np.float32), "g1": np.ones(d, np.float32), "b1": np.zeros(d, np.float32),
             "g2": np.ones(d, np.float32), "b2": np.zeros(d, np.float32)}
    mk = helper.make_node
    nodes = [
        mk("MatMul", ["x", "wq"], ["q"]), mk("MatMul", ["x", "wk"], ["k"]), mk("MatMul", ["x", "wv"], ["v"]),
        mk("Transpose", ["k"], ["kt"], perm=[0, 2, 1]), mk("MatMul", ["q", "kt"], ["s0"]), mk("Mul", ["s0", "scale"], ["s"]),
        mk("Softmax", ["s"], ["p"], axis=-1), mk("MatMul", ["p", "v"], ["a"]), mk("MatMul", ["a", "wo"], ["o"]),
        mk("Add", ["x", "o"], ["r1"]), mk("LayerNormalization", ["r1", "g1", "b1"], ["n1"], axis=-1),
        mk("MatMul", ["n1", "w1"], ["f0"]), mk("Relu", ["f0"], ["f1"]), mk("MatMul", ["f1", "w2"], ["f2"]),
        mk("Add", ["n1", "f2"], ["r2"]), mk("LayerNormalization", ["r2", "g2", "b2"], ["y"], axis=-1),
    ]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", seq, d])],
                  helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", seq, d]), inits)


FAMILIES = {"mlp": unnamed_mlp, "convnet": unnamed_convnet, "transformer": unnamed_transformer_block}


def _cosine_vs_input(src: onnx.ModelProto, out_path: Path) -> float:
    """Mean per-sample cosine of the written model's output vs the float model's, recomputed here."""
    from onnxopt.core.feeds import synthesize_feed

    feed = synthesize_feed(src, batch=4, seed=1)
    ref = create_session(src).run(None, feed)[0].reshape(4, -1).astype(np.float64)
    got = create_session(out_path).run(None, feed)[0].reshape(4, -1).astype(np.float64)
    cos = (ref * got).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))
    return float(cos.min())


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("mode", ["dynamic", "auto"])
def test_unnamed_model_quantizes(tmp_path: Path, family: str, mode: str) -> None:
    src = FAMILIES[family]()
    path = tmp_path / "m.onnx"
    onnx.save(src, str(path))
    before = path.read_bytes()
    out = tmp_path / "q.onnx"
    args = ["quantize", str(path), "-o", str(out), "--mode", mode, "--runs", "4", "--json"]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output)
    assert path.read_bytes() == before  # the input is untouched: names live in the output only
    if mode == "dynamic":
        assert rep["quantized"] and rep["nodes"]["quantized"], rep
        assert all(n for n in rep["nodes"]["quantized"])  # every node reported by a real name
    else:  # auto measures: float may win; every candidate that was built reports named nodes
        built = [c for c in rep["candidates"] if c["name"] != "float" and c["status"] == "ok"]
        assert built, rep["candidates"]
        assert all(c["quantized_nodes"] and all(c["quantized_nodes"]) for c in built)
    written = onnx.load(str(out))
    assert unnamed_count(written) == 0
    assert _cosine_vs_input(src, out) > 0.98


def test_library_quantize_names_a_proto_given_directly() -> None:
    src = unnamed_mlp()
    result = quantize(src, QuantizeConfig(mode="dynamic"))
    assert result.quantized and len(result.report["nodes"]["quantized"]) == 4
    assert unnamed_count(src) == 8  # the caller's proto is not modified
    assert any("unnamed node(s) given stable names" in n for n in result.report["notes"])


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_unnamed_model_optimizes(tmp_path: Path, family: str) -> None:
    src = FAMILIES[family]()
    path = tmp_path / "m.onnx"
    onnx.save(src, str(path))
    out = tmp_path / "o.onnx"
    r = CliRunner().invoke(cli, ["optimize", str(path), "-o", str(out), "--json", *FAST_OPT])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output)
    (q,) = [s for s in rep["stages"] if s["pass"] == "quantize"]
    # the int8 candidate was built and measured (kept or not is the benchmark's call)
    assert q["modified"] and q["report"]["nodes"]["quantized"], q["note"]
    assert "e.g. :" not in r.output  # the old failure: "nothing was quantized (... e.g. : ...)"
    assert _cosine_vs_input(src, out) > 0.9


def test_names_are_stable_unique_and_keep_user_names() -> None:
    a, b = unnamed_transformer_block(), unnamed_transformer_block()
    a.graph.node[4].name = "scores"  # a user's name stays as it is
    b.graph.node[4].name = "scores"
    assert name_nodes(a) == 15 and name_nodes(b) == 15
    names = [n.name for n in a.graph.node]
    assert names == [n.name for n in b.graph.node]  # same model, same names
    assert len(set(names)) == len(names) and all(names)
    assert names[4] == "scores"
    # the name is op type, position and a sha1 of domain, op, inputs and outputs: pinned, so a
    # recorded --exclude-nodes or decisions file keeps naming the same node in later versions
    assert names[0] == "MatMul_0_" + node_digest(a.graph.node[0])
    assert names[0] == "MatMul_0_80d43634"
    assert name_nodes(a) == 0  # naming twice changes nothing


def test_clashing_and_subgraph_names() -> None:
    then_g = helper.make_graph([helper.make_node("Relu", ["x"], ["t"])], "then", [],
                               [helper.make_tensor_value_info("t", TensorProto.FLOAT, [2])])
    else_g = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [],
                               [helper.make_tensor_value_info("e", TensorProto.FLOAT, [2])])
    relu = helper.make_node("Relu", ["x"], ["y0"])
    clash = "Relu_1_" + node_digest(relu)  # a user's node already holds the name the next one would get
    nodes = [helper.make_node("Identity", ["x"], ["y1"], name=clash), relu,
             helper.make_node("If", ["c"], ["z"], then_branch=then_g, else_branch=else_g)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2]),
                                           helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    named = with_node_names(model)
    assert named is not model and unnamed_count(model) == 4
    names = [n.name for n in all_nodes(named.graph)]
    assert len(set(names)) == len(names) == 5
    assert names[0] == clash and names[1] == clash + "_2"
    if_name = named.graph.node[2].name
    assert {n for n in names if n.startswith(if_name + "/")} == {
        f"{if_name}/then_branch/Relu_0_{node_digest(then_g.node[0])}",
        f"{if_name}/else_branch/Neg_0_{node_digest(else_g.node[0])}"}
    assert with_node_names(named) is named


def test_load_model_names_nodes(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(unnamed_mlp(), str(path))
    assert unnamed_count(load_model(path)) == 0
    assert unnamed_count(load_model(path, name_nodes=False)) == 8
    assert [n.name for n in load_model(path).graph.node] == [n.name for n in load_model(path).graph.node]
