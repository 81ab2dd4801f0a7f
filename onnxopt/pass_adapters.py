"""Registered passes over the quantize and prune modules (imported lazily, inside the passes)."""

from __future__ import annotations

import dataclasses
import importlib
import logging
from dataclasses import dataclass
from typing import Any, ClassVar

from onnx import ModelProto

from onnxopt.errors import InvalidInputError
from onnxopt.model import op_histogram
from onnxopt.passes import PassContext, PassResult, register_pass

log = logging.getLogger(__name__)

QUANT_MODES = ("auto", "dynamic", "static")
# Ops that make a model "sequence-like": dynamic quantization suits them best.
SEQUENCE_OPS = ("LSTM", "GRU", "RNN", "Attention", "MultiHeadAttention", "com.microsoft.Attention")
CONV_OPS = ("Conv", "ConvTranspose")
MATMUL_OPS = ("MatMul", "Gemm")


def model_family(model: ModelProto) -> str:
    """'sequence' (RNN/attention or MatMul-heavy), 'conv' (Conv-heavy) or 'dense' (MLP-like)."""
    hist = op_histogram(model)
    if any(hist.get(op, 0) for op in SEQUENCE_OPS):
        return "sequence"
    conv = sum(hist.get(op, 0) for op in CONV_OPS)
    matmul = sum(hist.get(op, 0) for op in MATMUL_OPS)
    if conv and conv >= matmul:
        return "conv"
    if hist.get("Softmax", 0) and matmul >= 4:
        return "sequence"
    return "dense"


def _config(module: str, cls: str, fields: dict[str, Any]) -> Any:
    """Build a config dataclass of another onnxopt module (None when that module is absent)."""
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name == module:
            return None
        raise
    return getattr(mod, cls)(**fields)


def _fields(obj: Any, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if f.name not in skip}


@register_pass
@dataclass(frozen=True)
class QuantizePass:
    """int8 quantization via onnxopt.quantize (auto: a candidate kept only if measured faster)."""

    name: ClassVar[str] = "quantize"
    mode: str = "auto"
    format: str = "qdq"
    per_channel: bool = False
    reduce_range: bool = False
    weight_type: str = "int8"
    activation_type: str = "int8"
    calib_method: str = "minmax"
    calib_samples: int = 200
    op_types: tuple[str, ...] = ()
    exclude_nodes: tuple[str, ...] = ()
    max_accuracy_drop: float | None = None
    min_cosine: float | None = None
    force: bool = False

    def __post_init__(self) -> None:
        if self.mode not in QUANT_MODES:
            raise InvalidInputError(f"mode must be one of {', '.join(QUANT_MODES)}, got {self.mode!r}")
        self._quant_config("static" if self.mode == "auto" else self.mode, "latency", 0)

    def _quant_config(self, mode: str, objective: str, seed: int) -> Any:
        fields = _fields(self)
        fields.update(mode=mode, objective=objective, seed=seed)
        return _config("onnxopt.quantize", "QuantizeConfig", fields)

    def concrete_mode(self, model: ModelProto, context: PassContext) -> str:
        """The mode actually used: auto picks static for conv nets with calibration data, else dynamic."""
        if self.mode != "auto":
            return self.mode
        return "static" if model_family(model) == "conv" and context.calib is not None else "dynamic"

    def __call__(self, model: ModelProto, context: PassContext) -> PassResult:
        """Quantize; in auto mode the result is a candidate kept only if measured faster."""
        mode = self.concrete_mode(model, context)
        if self.mode == "auto" and context.objective == "latency" and model_family(model) == "conv" and context.calib is None:
            reason = (
                "conv net without calibration data: pass --calib-data for static int8 "
                "(dynamic int8 convolutions, ConvInteger, are slower than float on CPUs)"
            )
            return PassResult(model, False, {"mode": "skipped", "requested_mode": self.mode, "reason": reason})
        if mode == "static" and context.calib is None:
            raise InvalidInputError(
                "static quantization needs calibration data: pass --calib-data calib.npz"
            )
        from onnxopt.quantize import quantize

        config = self._quant_config(mode, context.objective, context.seed)
        val = (context.val, context.labels) if context.val is not None else None
        result = quantize(model, config, calib=context.calib if mode == "static" else None, val=val, bench=None)
        report = dict(result.report)
        report.setdefault("mode", mode)
        report["requested_mode"] = self.mode
        return PassResult(
            result.model,
            bool(result.quantized),
            report,
            keep_if_faster=self.mode == "auto" and context.objective == "latency",
        )


@register_pass
@dataclass(frozen=True)
class PruneMagnitudePass:
    """Unstructured magnitude pruning of weight initializers via onnxopt.prune."""

    name: ClassVar[str] = "prune_magnitude"
    sparsity: float | None = 0.5
    threshold: float | None = None
    global_: bool = False
    skip: tuple[str, ...] = ()
    include: tuple[str, ...] = ()
    min_elements: int = 256
    sparse_storage: bool = False

    def __post_init__(self) -> None:
        _config("onnxopt.prune", "MagnitudeConfig", _fields(self))

    def __call__(self, model: ModelProto, context: PassContext) -> PassResult:
        """Zero the smallest weights."""
        from onnxopt.prune import MagnitudeConfig, prune_magnitude

        r = prune_magnitude(model, MagnitudeConfig(**_fields(self)))
        return PassResult(r.model, bool(r.modified), dict(r.report))


@register_pass
@dataclass(frozen=True)
class PruneChannelsPass:
    """Structured channel pruning (smaller Conv/Gemm layers) via onnxopt.prune."""

    name: ClassVar[str] = "prune_channels"
    ratio: float = 0.3
    importance: str = "l1"
    min_channels: int = 1
    round_to: int = 1
    skip: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _config("onnxopt.prune", "ChannelConfig", _fields(self))

    def __call__(self, model: ModelProto, context: PassContext) -> PassResult:
        """Remove the least important channels."""
        from onnxopt.prune import ChannelConfig, prune_channels

        r = prune_channels(model, ChannelConfig(**_fields(self)))
        return PassResult(r.model, bool(r.modified), dict(r.report))
