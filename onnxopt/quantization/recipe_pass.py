"""The `quantize` pass of recipes: options are QuantizeConfig's fields (objective and seed come
from the PassContext)."""

from __future__ import annotations

import dataclasses
import logging

from onnx import ModelProto

from onnxopt.core.model import model_family
from onnxopt.passes.base import ConfigPass, PassContext, PassResult, config_pass
from onnxopt.quantization.api import quantize
from onnxopt.quantization.config import QuantizeConfig
from onnxopt.quantization.engine import OpsetUpgradeError

log = logging.getLogger(__name__)


class _QuantizePass(ConfigPass):
    """int8 quantization (auto: a candidate kept only if measured faster)."""

    mode: str  # declared for type checkers; the field itself comes from QuantizeConfig

    def __post_init__(self) -> None:
        self.config(objective="latency", seed=0)

    def concrete_mode(self, family: str, *, has_calib: bool) -> str:
        """The mode actually used: auto picks static for conv nets with calibration data, else dynamic.

        The one rule for whether this pass calibrates: optimize() asks it with has_calib=True to
        decide whether calibration data is wanted.
        """
        mode: str = self.mode
        if mode != "auto":
            return mode
        return "static" if family == "conv" and has_calib else "dynamic"

    def __call__(self, model: ModelProto, context: PassContext) -> PassResult:
        """Quantize; in auto mode the result is a candidate kept only if measured faster."""
        requested: str = self.mode
        family = context.family or model_family(model)
        if requested == "auto" and context.objective == "latency" and family == "conv" and context.calib is None:
            reason = (
                "conv net without calibration data: pass --calib-data for static int8 "
                "(dynamic int8 convolutions, ConvInteger, are slower than float on CPUs)"
            )
            return PassResult(model, False, {"mode": "skipped", "requested_mode": requested, "reason": reason})
        mode = self.concrete_mode(family, has_calib=context.calib is not None)
        config: QuantizeConfig = dataclasses.replace(
            self.config(objective=context.objective, seed=context.seed), mode=mode
        )
        val = (context.val, context.labels) if context.val is not None else None
        try:
            result = quantize(
                model, config, calib=context.calib if mode == "static" else None, val=val, bench=None,
                graph_optimized=context.prior[-1:] == ("optimize_graph",),
            )
        except OpsetUpgradeError as e:  # the other passes still run; the stage says why
            return PassResult(model, False, {"mode": "skipped", "requested_mode": requested, "reason": str(e)})
        report = dict(result.report)
        report.setdefault("mode", mode)
        report["requested_mode"] = requested
        return PassResult(
            result.model,
            bool(result.quantized),
            report,
            keep_if_faster=requested == "auto" and context.objective == "latency",
        )


QuantizePass = config_pass(_QuantizePass, QuantizeConfig, name="quantize", skip=("objective", "seed"))
