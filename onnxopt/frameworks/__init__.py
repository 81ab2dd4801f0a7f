"""Framework adapters: the PyTorch and Keras/TensorFlow side of onnxopt.

- torch_export, keras_export: conversion sources (run a model, export it to ONNX);
- torch_distill, keras_distill: back ends of the shared loop in onnxopt.distillation.loop;
- torch_genome, keras_genome: build search candidates from a genome;
- quiet: route exporters' warnings and prints to debug logging; shorten their errors.

These modules import torch, tensorflow and keras only inside functions, through
require_torch / require_keras (which name the extra to install), so importing them, or
onnxopt, stays fast. No module outside this package imports a framework.
"""

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
