"""onnxopt: prepare trained models for CPU deployment with ONNX Runtime."""

from __future__ import annotations

import importlib
from typing import Any

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

# Public names that live in heavier modules: imported on first use, so `import onnxopt`
# stays fast and never pulls in onnxruntime.quantization, torch or tensorflow.
_LAZY = {
    "BenchConfig": "onnxopt.benchmark",
    "BenchResult": "onnxopt.benchmark",
    "RatioCI": "onnxopt.benchmark",
    "benchmark": "onnxopt.benchmark",
    "latency_ratio": "onnxopt.benchmark",
    "FidelityReport": "onnxopt.fidelity",
    "compare_models": "onnxopt.fidelity",
    "accuracy": "onnxopt.fidelity",
    "QuantizeConfig": "onnxopt.quantize",
    "QuantizeResult": "onnxopt.quantize",
    "quantize": "onnxopt.quantize",
    "open_calibration": "onnxopt.calibration",
    "MagnitudeConfig": "onnxopt.prune",
    "ChannelConfig": "onnxopt.prune",
    "PruneResult": "onnxopt.prune",
    "prune_magnitude": "onnxopt.prune",
    "prune_channels": "onnxopt.prune",
    "from_torch": "onnxopt.convert",
    "from_keras": "onnxopt.convert",
    "convert_source": "onnxopt.convert",
    "ConvertResult": "onnxopt.convert",
    "ParityReport": "onnxopt.convert",
    "DistillConfig": "onnxopt.distill",
    "DistillResult": "onnxopt.distill",
    "distill_model": "onnxopt.distill",
    "distill_sources": "onnxopt.distill",
    "SearchConfig": "onnxopt.search",
    "SearchResult": "onnxopt.search",
    "search": "onnxopt.search",
    "random_search": "onnxopt.search",
    "Objective": "onnxopt.search",
    "Record": "onnxopt.search",
    "SearchSpace": "onnxopt.search_space",
    "IntGene": "onnxopt.search_space",
    "ChoiceGene": "onnxopt.search_space",
    "FloatGene": "onnxopt.search_space",
    "TorchEvaluator": "onnxopt.search_eval",
    "KerasEvaluator": "onnxopt.search_eval",
    "EvalConfig": "onnxopt.search_eval",
    "load_space": "onnxopt.search_space",
    "optimize": "onnxopt.optimize",
    "OptimizeConfig": "onnxopt.optimize",
    "OptimizeResult": "onnxopt.optimize",
    "Gates": "onnxopt.optimize",
    "default_recipe": "onnxopt.optimize",
    "Recipe": "onnxopt.passes",
    "load_recipe": "onnxopt.passes",
    "parse_recipe": "onnxopt.passes",
    "Pipeline": "onnxopt.passes",
    "PassResult": "onnxopt.passes",
    "register_pass": "onnxopt.passes",
    "available_passes": "onnxopt.passes",
}

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
    *sorted(_LAZY),
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'onnxopt' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
