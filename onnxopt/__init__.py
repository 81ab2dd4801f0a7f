"""onnxopt: prepare trained models for CPU deployment with ONNX Runtime."""

from __future__ import annotations

import importlib
from typing import Any

from onnxopt.core.errors import (
    GateFailedError,
    InvalidInputError,
    InvalidModelError,
    MissingExtraError,
    OnnxoptError,
    PassError,
    UnsupportedModelError,
)
from onnxopt.core.model import ModelDescription, describe, load_model, save_model, validate_model

__version__ = "0.1.0"

# Public names that live in heavier modules: imported on first use, so `import onnxopt`
# stays fast and never pulls in onnxruntime.quantization, torch or tensorflow. No subpackage
# is named like a public function (quantization/ holds quantize, optimization/ holds optimize,
# nas/ holds search): importing a subpackage binds it as an attribute of this package, and a
# subpackage named `quantize` would then shadow the function `onnxopt.quantize`.
_LAZY = {
    "BenchConfig": "onnxopt.measure.benchmark",
    "BenchResult": "onnxopt.measure.benchmark",
    "RatioCI": "onnxopt.measure.stats",
    "benchmark": "onnxopt.measure.benchmark",
    "latency_ratio": "onnxopt.measure.stats",
    "FidelityReport": "onnxopt.measure.fidelity",
    "compare_models": "onnxopt.measure.fidelity",
    "accuracy": "onnxopt.measure.fidelity",
    "QuantizeConfig": "onnxopt.quantization.config",
    "QuantizeResult": "onnxopt.quantization.api",
    "quantize": "onnxopt.quantization.api",
    "open_calibration": "onnxopt.quantization.calibration",
    "MagnitudeConfig": "onnxopt.pruning.magnitude",
    "ChannelConfig": "onnxopt.pruning.channels.prune",
    "PruneResult": "onnxopt.pruning.result",
    "prune_magnitude": "onnxopt.pruning.magnitude",
    "prune_channels": "onnxopt.pruning.channels.prune",
    "from_torch": "onnxopt.conversion.api",
    "from_keras": "onnxopt.conversion.api",
    "convert_source": "onnxopt.conversion.api",
    "ConvertResult": "onnxopt.conversion.api",
    "ParityReport": "onnxopt.conversion.parity",
    "DistillConfig": "onnxopt.distillation.core",
    "DistillResult": "onnxopt.distillation.api",
    "distill_model": "onnxopt.distillation.api",
    "distill_sources": "onnxopt.distillation.api",
    "TuneConfig": "onnxopt.distillation.tune",
    "SearchConfig": "onnxopt.nas.engine",
    "SearchResult": "onnxopt.nas.engine",
    "search": "onnxopt.nas.engine",
    "random_search": "onnxopt.nas.engine",
    "Objective": "onnxopt.nas.engine",
    "Record": "onnxopt.nas.engine",
    "SearchSpace": "onnxopt.nas.space",
    "IntGene": "onnxopt.nas.space",
    "ChoiceGene": "onnxopt.nas.space",
    "FloatGene": "onnxopt.nas.space",
    "load_space": "onnxopt.nas.space",
    "TorchEvaluator": "onnxopt.nas.evaluate",
    "KerasEvaluator": "onnxopt.nas.evaluate",
    "EvalConfig": "onnxopt.nas.evaluate",
    "optimize": "onnxopt.optimization.run",
    "OptimizeConfig": "onnxopt.optimization.types",
    "OptimizeResult": "onnxopt.optimization.types",
    "Gates": "onnxopt.optimization.types",
    "default_recipe": "onnxopt.optimization.run",
    "Recipe": "onnxopt.optimization.recipe",
    "load_recipe": "onnxopt.optimization.recipe",
    "parse_recipe": "onnxopt.optimization.recipe",
    "available_passes": "onnxopt.optimization.recipe",
    "Pipeline": "onnxopt.passes.base",
    "PassResult": "onnxopt.passes.base",
    "register_pass": "onnxopt.passes.base",
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
