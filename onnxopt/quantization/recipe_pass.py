"""The `quantize` pass of recipes: the engine of `onnxopt quantize` (options are QuantizeConfig's
fields; objective, seed, benchmark settings and the fidelity floor come from the PassContext).

mode "auto" is `onnxopt quantize --mode auto` exactly: CPU-ordered candidates, a brief then a
long measurement, per-op-type and per-node partial quantization, accuracy fallback. Under
objective latency its fastest int8 model that holds the floor (the winner, or the runner-up
when float won) is a candidate that optimize() keeps only when its own interleaved benchmark
shows it clearly faster than the stage before, by the same INT8_MARGIN rule.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from onnx import ModelProto

from onnxopt.core.external import load_external
from onnxopt.passes.base import ConfigPass, PassContext, PassResult, config_pass
from onnxopt.quantization.api import quantize
from onnxopt.quantization.config import QuantizeConfig
from onnxopt.quantization.engine import OpsetUpgradeError
from onnxopt.quantization.evaluate import Budget

log = logging.getLogger(__name__)


class _QuantizePass(ConfigPass):
    """int8 quantization (auto: measure candidates on this CPU, a candidate kept only if measured faster)."""

    mode: str  # declared for type checkers; the field itself comes from QuantizeConfig
    # A big model's stage is quantized from its file (quantize()'s file mode): Pipeline.run hands
    # over its graph and context.model_path, and holds no full model meanwhile.
    reads_file: ClassVar[bool] = True

    def __post_init__(self) -> None:
        self.config(objective="latency", seed=0)

    @property
    def calibrates(self) -> bool:
        """True when the pass uses calibration data given to it: static always, auto for its static candidates."""
        return self.mode != "dynamic"

    def __call__(self, model: ModelProto, context: PassContext) -> PassResult:
        """Quantize; in auto mode the result is a candidate kept only if measured faster."""
        config: QuantizeConfig = self.config(objective=context.objective, seed=context.seed)
        val = (context.val, context.labels) if context.val is not None else None
        try:
            if context.family == "transformer" and config.mode in ("auto", "dynamic"):
                full = model if context.model_path is None else load_external(context.model_path)
                result = _quantize_transformer(full, config, context, val)
            else:
                result = quantize(
                    model if context.model_path is None else context.model_path, config, calib=context.calib if self.calibrates else None, val=val,
                    bench=context.bench if config.mode == "auto" else None,
                    graph_optimized=context.prior[-1:] == ("optimize_graph",),
                    budget=_budget(config, context.floor),
                )
        except OpsetUpgradeError as e:  # the other passes still run; the stage says why
            return PassResult(model, False, {"mode": "skipped", "requested_mode": config.mode, "reason": str(e)})
        report = dict(result.report)
        report["requested_mode"] = config.mode
        keep_if_faster = config.mode == "auto" and context.objective == "latency"
        q_model = result.model if result.quantized else None
        if q_model is None and result.runner_up is not None and keep_if_faster:
            # float won quantize's own measurement; optimize measures the fastest int8 model that
            # holds the floor against it again, interleaved, by the same INT8_MARGIN rule, and
            # shows it in its table either way.
            report["engine_winner"] = report.get("winner")
            report.update({k: v for k, v in report["runner_up"].items() if k != "name"})
            report["winner"] = report["runner_up"]["name"]
            q_model = result.runner_up
        if q_model is None:
            report["mode"] = "skipped"
            report["reason"] = report.get("why") or "nothing was quantized"
            return PassResult(model, False, report)
        quantizer = report.get("quantizer") or {}
        report["mode"] = quantizer.get("mode", config.mode)
        repaired = [n for n in quantizer.get("exclude_nodes", ()) if n not in config.exclude_nodes]
        if repaired:
            report["repaired"] = repaired
        return PassResult(q_model, True, report, keep_if_faster=keep_if_faster)


def _quantize_transformer(model: ModelProto, config: QuantizeConfig, context: PassContext, val: Any) -> Any:
    """A transformer encoder's int8 (quantization.transformer): per-channel dynamic MatMuls, the
    sensitive ones found fast and kept in float, fidelity held on every sample at the run's batch."""
    from onnxopt.quantization.transformer import quantize_transformer

    bench = context.bench
    return quantize_transformer(
        model, config, val=val, calib=context.calib, budget=_budget(config, context.floor),
        batch=bench.batch if bench is not None else 1, overrides=bench.shape_overrides if bench is not None else None,
    )


def _budget(config: QuantizeConfig, floor: Budget | None) -> Budget | None:
    """The stricter of the pass's own budget and the floor (None outside optimize: the config's own)."""
    if floor is None:
        return None
    own = config.budget
    cosines = [c for c in (own.min_cosine, floor.min_cosine) if c is not None]
    drops = [d for d in (own.max_accuracy_drop, floor.max_accuracy_drop) if d is not None]
    return Budget(min(drops) if drops else None, max(cosines) if cosines else None)


QuantizePass = config_pass(_QuantizePass, QuantizeConfig, name="quantize", skip=("objective", "seed"))
