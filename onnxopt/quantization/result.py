"""What quantization returns (QuantizeResult), shared by quantization.api and quantization.transformer,
and the int8 size floor reports compare against:

    int8_floor = size - 0.75 * (bytes of float32 initializers)     (every float32 weight stored in 8 bits)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import ModelProto

from onnxopt.quantization.engine import model_size


@dataclass(frozen=True)
class QuantizeResult:
    """The model to keep, whether it holds int8 nodes, whether the budget holds, and the report."""

    model: ModelProto
    quantized: bool
    meets_budget: bool
    report: dict[str, Any]  # JSON-serializable
    # auto, objective latency, float won: the fastest int8 model that holds the budget (report['runner_up'])
    runner_up: ModelProto | None = None


def int8_floor(model: ModelProto) -> int:
    """Bytes of the model with every float32 initializer at a quarter of its size, the rest as it was."""
    f32 = sum(
        int(np.prod(t.dims)) * 4 for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT
    )
    return int(model_size(model) - 0.75 * f32)
