"""Framework adapters: the only place that imports torch or tensorflow/keras, lazily."""

from __future__ import annotations

from typing import Any

from onnxopt.core.errors import MissingExtraError


def require_torch() -> Any:
    """Import torch or raise MissingExtraError naming the extra."""
    try:
        import torch
    except ImportError as e:
        raise MissingExtraError("torch", "torch") from e
    return torch


def require_keras() -> Any:
    """Import keras (with tensorflow as backend) or raise MissingExtraError naming the extra."""
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    try:
        import keras
        import tensorflow  # noqa: F401
    except ImportError as e:
        raise MissingExtraError("tensorflow", "keras") from e
    return keras
