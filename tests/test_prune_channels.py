"""Structured channel pruning: graph surgery checked against a numerical oracle in onnxruntime.

Oracle: the pruned model's outputs equal the ORIGINAL model's outputs once the removed
channels' contributions are zeroed in their consumers (their input-channel weights set to 0).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from onnxopt.core.errors import InvalidInputError
from onnxopt.core.model import graph_outputs
from onnxopt.core.runtime import create_session
from onnxopt.pruning.channels.prune import ChannelConfig, channels_to_keep, prune_channels
from tests.conftest import make_convnet, make_mlp

RNG = np.random.default_rng(0)


def _t(*shape: int, scale: float = 0.5) -> np.ndarray:
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def _model(nodes: list, inits: dict[str, np.ndarray], in_shape: list, out_name: str = "y",
           out_shape: list | None = None) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "t",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", *in_shape])],
        [helper.make_tensor_value_info(out_name, onnx.TensorProto.FLOAT, out_shape)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return create_session(model, custom_ops=False).run(None, {"x": x})[0]


def _zeroed(model: onnx.ModelProto, edits: dict[str, Callable[[np.ndarray], None]]) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for t in m.graph.initializer:
        if t.name in edits:
            a = numpy_helper.to_array(t).copy()
            edits[t.name](a)
            t.CopyFrom(numpy_helper.from_array(a, t.name))
    return m


def _group(report: dict, layer: str) -> dict:
    return next(g for g in report["groups"] if layer in g["layers"])


def _check(original: onnx.ModelProto, pruned: onnx.ModelProto, oracle: onnx.ModelProto, shape: tuple) -> None:
    onnx.checker.check_model(pruned, full_check=True)
    assert [o.name for o in pruned.graph.input] == [o.name for o in original.graph.input]
    assert graph_outputs(pruned) == graph_outputs(original)
    x = RNG.standard_normal(shape).astype(np.float32)
    got, want, orig = _run(pruned, x), _run(oracle, x), _run(original, x)
    assert got.shape == orig.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert not np.allclose(got, orig, atol=1e-3), "oracle trivially equal: the test would not catch a bug"


def test_conv_bn_relu_chain_matches_oracle() -> None:
    inits = {"w1": _t(8, 3, 3, 3), "b1": _t(8), "s": 1 + _t(8, scale=0.1), "bb": _t(8),
             "mu": _t(8, scale=0.1), "var": 1 + np.abs(_t(8, scale=0.1)), "w2": _t(6, 8, 3, 3), "b2": _t(6)}
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["a"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["a", "s", "bb", "mu", "var"], ["b"], name="bn1"),
        helper.make_node("Relu", ["b"], ["c"], name="relu1"),
        helper.make_node("MaxPool", ["c"], ["d"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["d", "w2", "b2"], ["y"], name="conv2", pads=[1, 1, 1, 1]),
    ]
    m = _model(nodes, inits, [3, 8, 8], out_shape=["N", 6, 4, 4])
    r = prune_channels(m, ChannelConfig(ratio=0.5))
    assert r.modified
    gone = _group(r.report, "conv1")["removed"]
    assert len(gone) == 4 and _group(r.report, "conv1")["channels_after"] == 4
    assert any("conv2" in g["layers"] and "graph output y" in g["reason"] for g in r.report["left_alone"])
    oracle = _zeroed(m, {"w2": lambda a: a.__setitem__((slice(None), gone), 0)})
    _check(m, r.model, oracle, (2, 3, 8, 8))
    assert r.report["params_after"] < r.report["params_before"]
    assert r.report["macs_after"] < r.report["macs_before"]


def test_residual_block_is_one_group_and_matches_oracle() -> None:
    inits = {"wa": _t(8, 3, 3, 3), "wb": _t(8, 8, 3, 3), "bb": _t(8), "scale": 1 + _t(1, 8, 1, 1, scale=0.2),
             "wc": _t(4, 8, 1, 1)}
    nodes = [
        helper.make_node("Conv", ["x", "wa"], ["a"], name="conva", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["t"], name="relua"),
        helper.make_node("Conv", ["t", "wb", "bb"], ["b"], name="convb", pads=[1, 1, 1, 1]),
        helper.make_node("Mul", ["b", "scale"], ["bs"], name="scale"),
        helper.make_node("Add", ["bs", "t"], ["s"], name="residual"),
        helper.make_node("Relu", ["s"], ["r"], name="relu_out"),
        helper.make_node("Conv", ["r", "wc"], ["y"], name="convc"),
    ]
    m = _model(nodes, inits, [3, 6, 6], out_shape=["N", 4, 6, 6])
    r = prune_channels(m, ChannelConfig(ratio=0.25))
    g = _group(r.report, "conva")
    assert set(g["layers"]) == {"conva", "convb"} and g["channels_after"] == 6
    gone = g["removed"]
    oracle = _zeroed(m, {
        "wb": lambda a: a.__setitem__((slice(None), gone), 0),
        "wc": lambda a: a.__setitem__((slice(None), gone), 0),
    })
    _check(m, r.model, oracle, (2, 3, 6, 6))


def test_concat_offsets_match_oracle() -> None:
    inits = {"wa": _t(4, 3, 3, 3), "wb": _t(6, 3, 1, 1), "bbias": _t(6), "wc": _t(5, 10, 3, 3)}
    nodes = [
        helper.make_node("Conv", ["x", "wa"], ["a"], name="conva", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["ar"], name="relua"),
        helper.make_node("Conv", ["x", "wb", "bbias"], ["b"], name="convb"),
        helper.make_node("Sigmoid", ["b"], ["bs"], name="sigb"),
        helper.make_node("Concat", ["ar", "bs"], ["cat"], name="cat", axis=1),
        helper.make_node("Conv", ["cat", "wc"], ["y"], name="convc", pads=[1, 1, 1, 1]),
    ]
    m = _model(nodes, inits, [3, 5, 5], out_shape=["N", 5, 5, 5])
    r = prune_channels(m, ChannelConfig(ratio=0.5))
    ga, gb = _group(r.report, "conva")["removed"], _group(r.report, "convb")["removed"]
    assert len(ga) == 2 and len(gb) == 3
    cols = list(ga) + [4 + k for k in gb]
    oracle = _zeroed(m, {"wc": lambda a: a.__setitem__((slice(None), cols), 0)})
    _check(m, r.model, oracle, (2, 3, 5, 5))
    wc = next(t for t in r.model.graph.initializer if t.name.startswith("wc"))
    assert list(wc.dims) == [5, 5, 3, 3]


def test_depthwise_conv_follows_its_producer() -> None:
    inits = {"wa": _t(8, 3, 1, 1), "wd": _t(8, 1, 3, 3), "bd": _t(8), "wc": _t(4, 8, 1, 1)}
    nodes = [
        helper.make_node("Conv", ["x", "wa"], ["a"], name="conva"),
        helper.make_node("Clip", ["a"], ["ac"], name="relu6"),
        helper.make_node("Conv", ["ac", "wd", "bd"], ["d"], name="dw", group=8, pads=[1, 1, 1, 1]),
        helper.make_node("HardSwish", ["d"], ["dr"], name="hswish"),
        helper.make_node("Conv", ["dr", "wc"], ["y"], name="convc"),
    ]
    m = _model(nodes, inits, [3, 6, 6], out_shape=["N", 4, 6, 6])
    r = prune_channels(m, ChannelConfig(ratio=0.5))
    gone = _group(r.report, "conva")["removed"]
    assert len(gone) == 4
    oracle = _zeroed(m, {"wc": lambda a: a.__setitem__((slice(None), gone), 0)})
    _check(m, r.model, oracle, (2, 3, 6, 6))
    dw = next(n for n in r.model.graph.node if n.name == "dw")
    assert helper.get_attribute_value(next(a for a in dw.attribute if a.name == "group")) == 4


@pytest.mark.parametrize("head", ["flatten", "reshape_minus1", "reshape_explicit"])
def test_conv_flatten_gemm_head_blocks(head: str) -> None:
    inits = {"w1": _t(4, 3, 3, 3), "b1": _t(4), "fc": _t(10, 4 * 9, scale=0.2), "fcb": _t(10)}
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["a"], name="conv1", pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["a"], ["b"], name="relu1"),
    ]
    if head == "flatten":
        nodes.append(helper.make_node("Flatten", ["b"], ["f"], name="flat", axis=1))
    else:
        inits["shape"] = np.array([0, -1] if head == "reshape_minus1" else [-1, 36], dtype=np.int64)
        nodes.append(helper.make_node("Reshape", ["b", "shape"], ["f"], name="flat"))
    nodes.append(helper.make_node("Gemm", ["f", "fc", "fcb"], ["y"], name="fc", transB=1))
    m = _model(nodes, inits, [3, 6, 6], out_shape=["N", 10])
    r = prune_channels(m, ChannelConfig(ratio=0.5))
    gone = _group(r.report, "conv1")["removed"]
    cols = [c * 9 + k for c in gone for k in range(9)]
    oracle = _zeroed(m, {"fc": lambda a: a.__setitem__((slice(None), cols), 0)})
    _check(m, r.model, oracle, (3, 3, 6, 6))


def test_mlp_matmul_add_gemm() -> None:
    m = make_mlp()
    r = prune_channels(m, ChannelConfig(ratio=0.5))
    gone = _group(r.report, "fc1")["removed"]
    oracle = _zeroed(m, {"w2": lambda a: a.__setitem__((gone, slice(None)), 0)})
    x = RNG.standard_normal((4, 16)).astype(np.float32)
    got = create_session(r.model, custom_ops=False).run(None, {"input": x})[0]
    want = create_session(oracle, custom_ops=False).run(None, {"input": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_convnet_prunes_and_input_is_not_modified() -> None:
    m = make_convnet()
    before = m.SerializeToString()
    r = prune_channels(m, ChannelConfig(ratio=0.5, round_to=4))
    assert m.SerializeToString() == before
    assert {g["channels_after"] for g in r.report["groups"]} == {4, 8}
    x = RNG.standard_normal((2, 3, 16, 16)).astype(np.float32)
    assert create_session(r.model, custom_ops=False).run(None, {"input": x})[0].shape == (2, 10)


def test_unsupported_op_is_left_alone_with_reason() -> None:
    inits = {"w1": _t(8, 3, 3, 3), "w2": _t(4, 8, 1, 1)}
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("LRN", ["a"], ["b"], name="lrn", size=3),
        helper.make_node("Conv", ["b", "w2"], ["y"], name="conv2"),
    ]
    m = _model(nodes, inits, [3, 4, 4], out_shape=["N", 4, 4, 4])
    r = prune_channels(m, ChannelConfig(ratio=0.5))
    assert not r.modified
    reasons = " ".join(g["reason"] for g in r.report["left_alone"])
    assert "LRN" in reasons and "not in the channel registry" in reasons
    assert "no prunable channel groups" in r.report["message"]


def test_skip_leaves_group_alone() -> None:
    m = make_convnet()
    r = prune_channels(m, ChannelConfig(ratio=0.5, skip=("conv1",)))
    assert any("conv1" in g["layers"] and "--skip" in g["reason"] for g in r.report["left_alone"])
    with pytest.raises(InvalidInputError, match="matches no node"):
        prune_channels(m, ChannelConfig(skip=("nope",)))


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5])
def test_bad_ratio(ratio: float) -> None:
    with pytest.raises(InvalidInputError, match=r"ratio must be in \[0, 1\)"):
        ChannelConfig(ratio=ratio)


def test_keep_counts_min_channels_and_round_to() -> None:
    assert channels_to_keep(4, ChannelConfig(ratio=0.99)) == 1
    assert channels_to_keep(4, ChannelConfig(ratio=0.99, min_channels=2)) == 2
    assert channels_to_keep(12, ChannelConfig(ratio=0.5, round_to=8)) == 8
    assert channels_to_keep(6, ChannelConfig(ratio=0.5, round_to=8)) == 6
    assert channels_to_keep(64, ChannelConfig(ratio=0.5)) == 32
    assert channels_to_keep(10, ChannelConfig(ratio=0.0)) == 10
    with pytest.raises(InvalidInputError):
        ChannelConfig(min_channels=0)


def test_bias_shared_through_identity_is_copied_per_layer() -> None:
    # exporters deduplicate equal biases and share them through Identity nodes (as in ResNet exports)
    inits = {"wa": _t(8, 3, 3, 3), "wb": _t(8, 8, 3, 3), "bias": _t(8), "wc": _t(4, 8, 1, 1)}
    nodes = [
        helper.make_node("Identity", ["bias"], ["bias_a"], name="id_a"),
        helper.make_node("Identity", ["bias"], ["bias_b"], name="id_b"),
        helper.make_node("Conv", ["x", "wa", "bias_a"], ["a"], name="conva", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["ar"], name="relua"),
        helper.make_node("Conv", ["ar", "wb", "bias_b"], ["b"], name="convb", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["b"], ["br"], name="relub"),
        helper.make_node("Conv", ["br", "wc"], ["y"], name="convc"),
    ]
    m = _model(nodes, inits, [3, 5, 5], out_shape=["N", 4, 5, 5])
    r = prune_channels(m, ChannelConfig(ratio=0.5, importance="l2"))
    ga, gb = _group(r.report, "conva")["removed"], _group(r.report, "convb")["removed"]
    oracle = _zeroed(m, {
        "wb": lambda a: a.__setitem__((slice(None), ga), 0),
        "wc": lambda a: a.__setitem__((slice(None), gb), 0),
    })
    _check(m, r.model, oracle, (2, 3, 5, 5))
    assert not any(n.op_type == "Identity" for n in r.model.graph.node)


def test_matmul_on_3d_tokens() -> None:
    inits = {"w1": _t(16, 32), "b1": _t(32), "w2": _t(32, 16)}
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="ffn1"),
        helper.make_node("Add", ["h", "b1"], ["hb"], name="ffn1_bias"),
        helper.make_node("Gelu", ["hb"], ["g"], name="gelu", domain=""),
        helper.make_node("MatMul", ["g", "w2"], ["y"], name="ffn2"),
    ]
    graph = helper.make_graph(
        nodes, "ffn", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 5, 16])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 5, 16])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    m.ir_version = 9
    r = prune_channels(m, ChannelConfig(ratio=0.25))
    gone = _group(r.report, "ffn1")["removed"]
    assert len(gone) == 8
    oracle = _zeroed(m, {"w2": lambda a: a.__setitem__((gone, slice(None)), 0)})
    _check(m, r.model, oracle, (2, 5, 16))


def test_concat_feeding_a_residual_is_left_alone() -> None:
    inits = {"wa": _t(4, 3, 1, 1), "wb": _t(4, 3, 1, 1), "wc": _t(8, 3, 1, 1), "wd": _t(2, 8, 1, 1)}
    nodes = [
        helper.make_node("Conv", ["x", "wa"], ["a"], name="conva"),
        helper.make_node("Conv", ["x", "wb"], ["b"], name="convb"),
        helper.make_node("Concat", ["a", "b"], ["cat"], name="cat", axis=1),
        helper.make_node("Conv", ["x", "wc"], ["c"], name="convc"),
        helper.make_node("Add", ["cat", "c"], ["s"], name="add"),
        helper.make_node("Conv", ["s", "wd"], ["y"], name="convd"),
    ]
    m = _model(nodes, inits, [3, 4, 4], out_shape=["N", 2, 4, 4])
    r = prune_channels(m, ChannelConfig(ratio=0.5))
    alone = {layer for g in r.report["left_alone"] for layer in g["layers"]}
    assert {"conva", "convb", "convc"} <= alone
    assert not r.modified


def test_squeeze_excitation_block() -> None:
    inits = {"w1": _t(8, 3, 3, 3), "wr": _t(2, 8, 1, 1), "br": _t(2), "we": _t(8, 2, 1, 1), "be": _t(8),
             "axes": np.array([2, 3], np.int64), "wo": _t(4, 8, 1, 1)}
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["r"], name="relu1"),
        helper.make_node("ReduceMean", ["r", "axes"], ["m"], name="squeeze", keepdims=1),
        helper.make_node("Conv", ["m", "wr", "br"], ["q"], name="se_reduce"),
        helper.make_node("Relu", ["q"], ["qr"], name="se_relu"),
        helper.make_node("Conv", ["qr", "we", "be"], ["e"], name="se_expand"),
        helper.make_node("Sigmoid", ["e"], ["s"], name="se_gate"),
        helper.make_node("Mul", ["r", "s"], ["g"], name="excite"),
        helper.make_node("Conv", ["g", "wo"], ["y"], name="conv_out"),
    ]
    graph = helper.make_graph(
        nodes, "se", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3, 6, 6])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 4, 6, 6])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 8
    r = prune_channels(m, ChannelConfig(ratio=0.5))
    g = _group(r.report, "conv1")
    assert set(g["layers"]) == {"conv1", "se_expand"}
    gone, gone_r = g["removed"], _group(r.report, "se_reduce")["removed"]
    oracle = _zeroed(m, {
        "wr": lambda a: a.__setitem__((slice(None), gone), 0),
        "wo": lambda a: a.__setitem__((slice(None), gone), 0),
        "we": lambda a: a.__setitem__((slice(None), gone_r), 0),
    })
    _check(m, r.model, oracle, (2, 3, 6, 6))


def test_used_pool_indices_are_unsafe() -> None:
    inits = {"w1": _t(4, 3, 3, 3)}
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("MaxPool", ["a"], ["p", "idx"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Cast", ["idx"], ["y"], name="cast", to=onnx.TensorProto.FLOAT),
    ]
    m = _model(nodes, inits, [3, 4, 4], out_shape=["N", 4, 2, 2])
    r = prune_channels(m, ChannelConfig(ratio=0.5))
    assert not r.modified and "extra output idx is used" in r.report["left_alone"][0]["reason"]


def test_exported_digits_cnn_matches_zeroed_sources(digits_cnn: object) -> None:
    # No BatchNorm (folded at export) and ReLU/MaxPool map 0 to 0: zeroing a source's removed output
    # channels (weights and bias) in the original is the same as removing them.
    from onnxopt.core.model import load_model

    m = load_model(digits_cnn)  # type: ignore[arg-type]
    r = prune_channels(m, ChannelConfig(ratio=0.4))
    nodes = {n.name: n for n in m.graph.node}
    edits: dict[str, Callable[[np.ndarray], None]] = {}
    for g in r.report["groups"]:
        (layer,) = g["layers"]
        n = nodes[layer]
        axis = 0 if n.op_type == "Conv" or helper.get_attribute_value(
            next(a for a in n.attribute if a.name == "transB")) else 1
        idx = (slice(None),) * axis + (g["removed"],)
        edits[n.input[1]] = lambda a, idx=idx: a.__setitem__(idx, 0)
        edits[n.input[2]] = lambda a, gone=g["removed"]: a.__setitem__(gone, 0)
    oracle = _zeroed(m, edits)
    x = RNG.random((16, 1, 8, 8)).astype(np.float32)
    got = create_session(r.model, custom_ops=False).run(None, {"input": x})[0]
    want = create_session(oracle, custom_ops=False).run(None, {"input": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert r.report["params_after"] < 0.5 * r.report["params_before"]
