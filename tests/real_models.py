"""Small models built in code that have the shapes of real third-party exports.

Each mirrors one family that broke onnxopt (issue 14): a voice-activity model with a scalar
int64 `sr`, a non-batched `state` and If subgraphs; a CRNN with a fixed batch of 1 and a
symbolic width; a YOLO-style detector whose symbolic height/width must be a multiple of 4 (a
Concat after an upsample); an opset-9 TensorFlow-style NHWC classifier; a paddle2onnx-style
model whose weights are Constant nodes (no initializers); a byte classifier with int32 input.
Weights are seeded, so the tests can recompute every output with numpy.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

F = TensorProto.FLOAT


def _model(graph: onnx.GraphProto, opset: int = 17) -> onnx.ModelProto:
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8 if opset >= 13 else 7
    onnx.checker.check_model(m)
    return m


def _w(rng: np.random.Generator, *shape: int, scale: float = 0.3) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


VAD_WIDTH = 32
VAD_STATE = 16


def make_vad(seed: int = 0) -> onnx.ModelProto:
    """input[batch,32] float, state[2,1,16] float, sr[] int64 -> output[batch,8], stateN[2,1,16].

    h = input @ w_in + mean_0(state)[0]; the If on sr > 8000 runs h @ w_hi (then) or h @ w_lo
    (else); output = sigmoid(branch); stateN = tanh(state) * 0.5.
    """
    rng = np.random.default_rng(seed)
    inits = {
        "w_in": _w(rng, VAD_WIDTH, VAD_STATE),
        "w_hi": _w(rng, VAD_STATE, 8),
        "w_lo": _w(rng, VAD_STATE, 8),
        "thr": np.array(8000, np.int64),
        "half": np.array(0.5, np.float32),
    }

    def branch(name: str, weight: str) -> onnx.GraphProto:
        return helper.make_graph(
            [helper.make_node("MatMul", ["h", weight], [f"{name}_out"], name=f"{name}_matmul")],
            name, [], [helper.make_tensor_value_info(f"{name}_out", F, ["batch", 8])],
        )

    nodes = [
        helper.make_node("MatMul", ["input", "w_in"], ["x"], name="in_proj"),
        helper.make_node("ReduceMean", ["state"], ["s_mean"], name="state_mean", axes=[0], keepdims=0),
        helper.make_node("Add", ["x", "s_mean"], ["h"], name="mix"),
        helper.make_node("Greater", ["sr", "thr"], ["hi"], name="is_hi"),
        helper.make_node("If", ["hi"], ["logit"], name="rate_switch",
                         then_branch=branch("then", "w_hi"), else_branch=branch("else", "w_lo")),
        helper.make_node("Sigmoid", ["logit"], ["output"], name="prob"),
        helper.make_node("Tanh", ["state"], ["t"], name="state_tanh"),
        helper.make_node("Mul", ["t", "half"], ["stateN"], name="state_scale"),
    ]
    graph = helper.make_graph(
        nodes, "vad",
        [helper.make_tensor_value_info("input", F, ["batch", VAD_WIDTH]),
         helper.make_tensor_value_info("state", F, [2, 1, VAD_STATE]),
         helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("output", F, ["batch", 8]),
         helper.make_tensor_value_info("stateN", F, [2, 1, VAD_STATE])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    return _model(graph, 17)


def vad_oracle(model: onnx.ModelProto, x: np.ndarray, state: np.ndarray, sr: int) -> tuple[np.ndarray, np.ndarray]:
    """make_vad's outputs computed with numpy from the model's initializers."""
    w = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    h = x @ w["w_in"] + state.mean(axis=0)[0]
    logit = h @ (w["w_hi"] if sr > 8000 else w["w_lo"])
    return 1 / (1 + np.exp(-logit)), np.tanh(state) * 0.5


def make_crnn(seed: int = 0, height: int = 8) -> onnx.ModelProto:
    """x[1,3,8,W] (fixed batch 1, symbolic width) -> Conv 3x3 -> Relu -> mean over H -> per-column
    MatMul -> logits[1,W,5]."""
    rng = np.random.default_rng(seed)
    inits = {"conv_w": _w(rng, 8, 3, 3, 3), "conv_b": _w(rng, 8, scale=0.1), "fc_w": _w(rng, 8, 5)}
    nodes = [
        helper.make_node("Conv", ["x", "conv_w", "conv_b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("ReduceMean", ["r"], ["m"], name="pool_h", axes=[2], keepdims=0),
        helper.make_node("Transpose", ["m"], ["t"], name="to_seq", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["t", "fc_w"], ["logits"], name="fc"),
    ]
    graph = helper.make_graph(
        nodes, "crnn",
        [helper.make_tensor_value_info("x", F, [1, 3, height, "W"])],
        [helper.make_tensor_value_info("logits", F, [1, "W", 5])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    return _model(graph, 17)


def make_detector(seed: int = 0, batch: int | str = 1) -> onnx.ModelProto:
    """images[batch,3,H,W] -> a = Conv s2, b = Conv s2(a), Concat(a, Resize x2(b)) -> Conv 1x1 ->
    out[batch,6,H/2,W/2]. H and W must be multiples of 4: tiny symbolic dims fail in Concat."""
    rng = np.random.default_rng(seed)
    inits = {
        "w1": _w(rng, 4, 3, 3, 3), "w2": _w(rng, 4, 4, 3, 3), "w3": _w(rng, 6, 8, 1, 1),
        "scales": np.array([1, 1, 2, 2], np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["images", "w1"], ["a"], name="down1", pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Conv", ["a", "w2"], ["b"], name="down2", pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Resize", ["b", "", "scales"], ["u"], name="up", mode="nearest"),
        helper.make_node("Concat", ["a", "u"], ["cat"], name="cat", axis=1),
        helper.make_node("Conv", ["cat", "w3"], ["out"], name="head"),
    ]
    graph = helper.make_graph(
        nodes, "detector",
        [helper.make_tensor_value_info("images", F, [batch, 3, "height", "width"])],
        [helper.make_tensor_value_info("out", F, [batch, 6, None, None])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    return _model(graph, 17)


def make_nhwc_opset9(seed: int = 0) -> onnx.ModelProto:
    """A TensorFlow-style opset-9 classifier: input[unk__0,16,16,3] NHWC -> Transpose -> Conv ->
    Relu -> GlobalAveragePool -> Flatten -> Gemm -> Softmax -> probs[unk__0,10]."""
    rng = np.random.default_rng(seed)
    inits = {"cw": _w(rng, 8, 3, 3, 3), "cb": _w(rng, 8, scale=0.1), "fw": _w(rng, 8, 10), "fb": _w(rng, 10, scale=0.1)}
    nodes = [
        helper.make_node("Transpose", ["input"], ["nchw"], name="to_nchw", perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "cw", "cb"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["z"], name="fc"),
        helper.make_node("Softmax", ["z"], ["probs"], name="softmax"),
    ]
    graph = helper.make_graph(
        nodes, "tf_nhwc",
        [helper.make_tensor_value_info("input", F, ["unk__0", 16, 16, 3])],
        [helper.make_tensor_value_info("probs", F, ["unk__0", 10])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    return _model(graph, 9)


def make_constant_weights(seed: int = 0) -> onnx.ModelProto:
    """paddle2onnx style, every weight a Constant node and no initializer:
    x[batch,4,6,6] -> Conv 1x1 (w_conv[16,4,1,1]) + b -> Relu -> GlobalAveragePool -> Flatten ->
    MatMul (w_fc[16,32]) -> y[batch,32]."""
    rng = np.random.default_rng(seed)
    consts = {"w_conv": _w(rng, 16, 4, 1, 1), "b_conv": _w(rng, 16, scale=0.1), "w_fc": _w(rng, 16, 32),
              "axes_shape": np.array([-1, 16], np.int64)}
    nodes = [helper.make_node("Constant", [], [k], name=f"const_{k}", value=numpy_helper.from_array(v, k))
             for k, v in consts.items()]
    nodes += [
        helper.make_node("Conv", ["x", "w_conv", "b_conv"], ["c"], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
        helper.make_node("Reshape", ["g", "axes_shape"], ["f"], name="flat"),
        helper.make_node("MatMul", ["f", "w_fc"], ["y"], name="fc"),
    ]
    graph = helper.make_graph(
        nodes, "paddle_like",
        [helper.make_tensor_value_info("x", F, ["batch", 4, 6, 6])],
        [helper.make_tensor_value_info("y", F, ["batch", 32])],
    )
    return _model(graph, 17)


def constant_values(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The values of a model's Constant nodes and initializers, by tensor name."""
    out = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant":
            out[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    return out


def constant_weights_oracle(weights: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """make_constant_weights' output computed with numpy from the given weights."""
    c = np.einsum("bchw,oc->bohw", x, weights["w_conv"][:, :, 0, 0]) + weights["b_conv"][None, :, None, None]
    g = np.maximum(c, 0).mean(axis=(2, 3))
    return g @ weights["w_fc"]


def make_byte_classifier(seed: int = 0, length: int = 64) -> onnx.ModelProto:
    """bytes[batch,64] int32 -> Gather(embedding[256,8]) -> mean over the sequence -> MatMul -> logits[batch,4]."""
    rng = np.random.default_rng(seed)
    inits = {"emb": _w(rng, 256, 8, scale=1.0), "w": _w(rng, 8, 4)}
    nodes = [
        helper.make_node("Gather", ["emb", "bytes"], ["e"], name="embed", axis=0),
        helper.make_node("ReduceMean", ["e"], ["m"], name="pool", axes=[1], keepdims=0),
        helper.make_node("MatMul", ["m", "w"], ["logits"], name="fc"),
    ]
    graph = helper.make_graph(
        nodes, "bytes",
        [helper.make_tensor_value_info("bytes", TensorProto.INT32, ["batch", length])],
        [helper.make_tensor_value_info("logits", F, ["batch", 4])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    return _model(graph, 17)
