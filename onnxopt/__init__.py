"""onnxopt: prepare trained models for CPU deployment with ONNX Runtime."""

from __future__ import annotations

from onnxopt.errors import (
    GateFailedError,
    InvalidInputError,
    InvalidModelError,
    MissingExtraError,
    OnnxoptError,
    PassError,
    UnsupportedModelError,
)
from onnxopt.model import ModelDescription, describe, load_model, save_model, validate_model

__version__ = "0.1.0"

__all__ = [
    "GateFailedError",
    "InvalidInputError",
    "InvalidModelError",
    "MissingExtraError",
    "ModelDescription",
    "OnnxoptError",
    "PassError",
    "UnsupportedModelError",
    "__version__",
    "describe",
    "load_model",
    "save_model",
    "validate_model",
]
