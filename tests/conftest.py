"""Shared fixtures: tiny models built in code, paths to the bundled sample models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"


def make_mlp(seed: int = 0, in_features: int = 16, hidden: int = 32, classes: int = 10) -> onnx.ModelProto:
    """input[batch,16] -> MatMul+Add -> Relu -> Gemm -> logits[batch,10], seeded weights."""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((in_features, hidden)).astype(np.float32) * 0.3
    b1 = rng.standard_normal(hidden).astype(np.float32) * 0.1
    w2 = rng.standard_normal((hidden, classes)).astype(np.float32) * 0.3
    b2 = rng.standard_normal(classes).astype(np.float32) * 0.1
    nodes = [
        helper.make_node("MatMul", ["input", "w1"], ["h0"], name="fc1"),
        helper.make_node("Add", ["h0", "b1"], ["h1"], name="fc1_bias"),
        helper.make_node("Relu", ["h1"], ["h2"], name="relu1"),
        helper.make_node("Gemm", ["h2", "w2", "b2"], ["logits"], name="fc2"),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["batch", in_features])],
        [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["batch", classes])],
        [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def make_convnet(seed: int = 0, channels: int = 8) -> onnx.ModelProto:
    """input[batch,3,16,16] -> Conv-BN-Relu -> Conv-Relu -> GlobalAveragePool -> Flatten -> Gemm."""
    rng = np.random.default_rng(seed)
    c = channels

    def t(shape: tuple[int, ...], scale: float = 0.3) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    inits = {
        "c1_w": t((c, 3, 3, 3)),
        "c1_b": t((c,), 0.1),
        "bn_scale": (1 + t((c,), 0.1)),
        "bn_bias": t((c,), 0.1),
        "bn_mean": t((c,), 0.1),
        "bn_var": np.abs(1 + t((c,), 0.1)),
        "c2_w": t((2 * c, c, 3, 3)),
        "c2_b": t((2 * c,), 0.1),
        "fc_w": t((10, 2 * c)),
        "fc_b": t((10,), 0.1),
    }
    nodes = [
        helper.make_node("Conv", ["input", "c1_w", "c1_b"], ["a"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node(
            "BatchNormalization", ["a", "bn_scale", "bn_bias", "bn_mean", "bn_var"], ["b"], name="bn1"
        ),
        helper.make_node("Relu", ["b"], ["c"], name="relu1"),
        helper.make_node("Conv", ["c", "c2_w", "c2_b"], ["d"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["d"], ["e"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["e"], ["f"], name="gap"),
        helper.make_node("Flatten", ["f"], ["g"], name="flatten"),
        helper.make_node("Gemm", ["g", "fc_w", "fc_b"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "convnet",
        [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["batch", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["batch", 10])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@pytest.fixture
def mlp_model() -> onnx.ModelProto:
    return make_mlp()


@pytest.fixture
def convnet_model() -> onnx.ModelProto:
    return make_convnet()


@pytest.fixture
def mlp_path(tmp_path: Path, mlp_model: onnx.ModelProto) -> Path:
    p = tmp_path / "mlp.onnx"
    onnx.save(mlp_model, str(p))
    return p


@pytest.fixture
def convnet_path(tmp_path: Path, convnet_model: onnx.ModelProto) -> Path:
    p = tmp_path / "convnet.onnx"
    onnx.save(convnet_model, str(p))
    return p


@pytest.fixture
def digits_cnn() -> Path:
    return MODELS / "digits_cnn.onnx"


@pytest.fixture
def digits_val() -> Path:
    return MODELS / "digits_val.npz"


@pytest.fixture
def digits_calib() -> Path:
    return MODELS / "digits_calib.npz"
