"""Base models for the fuzzer (the bundled digits CNN and tiny models built in code).

Each base model comes with a `Spec`: its input names, per-sample shapes and dtypes, so the data
builders can make valid .npz files for it before breaking them. Mutations live in `mutate`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "models" / "digits_cnn.onnx"
DIGITS_VAL = ROOT / "models" / "digits_val.npz"
DIGITS_CALIB = ROOT / "models" / "digits_calib.npz"
CLASSES = 10


@dataclass(frozen=True)
class InputSpec:
    """One model input: name, shape of one sample (without batch), numpy dtype, value range."""

    name: str
    sample_shape: tuple[int, ...]
    dtype: str
    high: int = 1  # integer inputs are drawn from [0, high)


@dataclass(frozen=True)
class Spec:
    """A base model: its bytes and what valid data for it looks like."""

    name: str
    model: bytes
    inputs: tuple[InputSpec, ...]
    # Inputs onnxopt cannot synthesize (embedding ids must lie in the table): valid cases give --data.
    needs_data: bool = False
    dynamic_batch: bool = True  # False: --batch 2 is refused, rightly


def _init(rng: np.random.Generator, name: str, shape: tuple[int, ...], scale: float = 0.3) -> TensorProto:
    return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)


def _finish(graph: onnx.GraphProto) -> bytes:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _mlp(rng: np.random.Generator) -> bytes:
    """input[batch,16] -> MatMul+Add -> Relu -> Gemm -> logits[batch,10]."""
    nodes = [
        helper.make_node("MatMul", ["input", "w1"], ["h0"], name="fc1"),
        helper.make_node("Add", ["h0", "b1"], ["h1"], name="fc1_bias"),
        helper.make_node("Relu", ["h1"], ["h2"], name="relu1"),
        helper.make_node("Gemm", ["h2", "w2", "b2"], ["logits"], name="fc2", transB=1),
    ]
    inits = [_init(rng, "w1", (16, 32)), _init(rng, "b1", (32,)), _init(rng, "w2", (10, 32)), _init(rng, "b2", (10,))]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        inits,
    )
    return _finish(graph)


def _convnet(rng: np.random.Generator) -> bytes:
    """input[batch,3,8,8] -> Conv-BN-Relu -> Conv-Relu -> GlobalAveragePool -> Flatten -> Gemm."""
    c = 8
    nodes = [
        helper.make_node("Conv", ["input", "c1_w", "c1_b"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "bn_s", "bn_b", "bn_m", "bn_v"], ["bn"], name="bn1"),
        helper.make_node("Relu", ["bn"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "c2_w", "c2_b"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], name="fc", transB=1),
    ]
    var = numpy_helper.from_array((1 + np.abs(rng.standard_normal(c) * 0.1)).astype(np.float32), "bn_v")
    inits = [
        _init(rng, "c1_w", (c, 3, 3, 3)), _init(rng, "c1_b", (c,)),
        _init(rng, "bn_s", (c,)), _init(rng, "bn_b", (c,)), _init(rng, "bn_m", (c,)), var,
        _init(rng, "c2_w", (2 * c, c, 3, 3)), _init(rng, "c2_b", (2 * c,)),
        _init(rng, "fc_w", (10, 2 * c)), _init(rng, "fc_b", (10,)),
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes,
        "convnet",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        inits,
    )
    return _finish(graph)


def _two_inputs(rng: np.random.Generator) -> bytes:
    """x[batch,8] + y[batch,8] -> MatMul -> Softmax: two inputs to match in data files."""
    nodes = [
        helper.make_node("Add", ["x", "y"], ["s"], name="add"),
        helper.make_node("MatMul", ["s", "w"], ["m"], name="mm"),
        helper.make_node("Softmax", ["m"], ["probs"], name="softmax", axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "two_inputs",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 8]) for n in ("x", "y")],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 10])],
        [_init(rng, "w", (8, 10))],
    )
    return _finish(graph)


def _embedding(rng: np.random.Generator) -> bytes:
    """ids[batch,4] int64 -> Gather(emb) -> ReduceMean -> MatMul -> logits: an integer input."""
    axes = numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")
    nodes = [
        helper.make_node("Gather", ["emb", "ids"], ["e"], name="gather"),
        helper.make_node("ReduceMean", ["e", "axes"], ["mean"], name="mean", keepdims=0),
        helper.make_node("MatMul", ["mean", "w"], ["logits"], name="head"),
    ]
    graph = helper.make_graph(
        nodes,
        "embedding",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        [_init(rng, "emb", (50, 16)), _init(rng, "w", (16, 10)), axes],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _fixed_batch(rng: np.random.Generator) -> bytes:
    """input[1,16] (a fixed batch of one) -> Gemm -> logits[1,10]."""
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["input", "w", "b"], ["logits"], name="fc", transB=1)],
        "fixed_batch",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
        [_init(rng, "w", (10, 16)), _init(rng, "b", (10,))],
    )
    return _finish(graph)


@functools.cache
def base_specs() -> tuple[Spec, ...]:
    """All base models, built once per process (seeded, so identical in every process)."""
    rng = np.random.default_rng(1234)
    f32 = "float32"
    return (
        Spec("digits", DIGITS.read_bytes(), (InputSpec("input", (1, 8, 8), f32),)),
        Spec("mlp", _mlp(rng), (InputSpec("input", (16,), f32),)),
        Spec("convnet", _convnet(rng), (InputSpec("input", (3, 8, 8), f32),)),
        Spec("two_inputs", _two_inputs(rng), (InputSpec("x", (8,), f32), InputSpec("y", (8,), f32))),
        Spec("embedding", _embedding(rng), (InputSpec("ids", (4,), "int64", high=50),), needs_data=True),
        Spec("fixed_batch", _fixed_batch(rng), (InputSpec("input", (16,), f32),), dynamic_batch=False),
    )


def spec_named(name: str) -> Spec:
    """The base model called name."""
    return next(s for s in base_specs() if s.name == name)


@functools.cache
def digits_arrays() -> dict[str, dict[str, np.ndarray]]:
    """The bundled digits validation and calibration arrays, loaded once."""
    out = {}
    for role, path in (("data", DIGITS_VAL), ("calib", DIGITS_CALIB)):
        with np.load(path) as z:
            out[role] = {k: z[k] for k in z.files}
    return out
