"""Quantization settings: QuantizeConfig (validated on construction) and its choices."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

from onnxopt.core.errors import InvalidInputError
from onnxopt.quantization.engine import (
    Candidate,
)
from onnxopt.quantization.evaluate import Budget
from onnxopt.quantization.weight_only import ACCURACY_LEVELS, ALGORITHMS, BITS, BLOCK_SIZES

log = logging.getLogger(__name__)


MODES = ("auto", "dynamic", "static", "weight-only")


FORMATS = ("qdq", "qoperator")


QTYPES = ("int8", "uint8")


CALIB_METHODS = ("minmax", "entropy", "percentile")


OBJECTIVES = ("latency", "size")


EVAL_SAMPLES = 256  # fidelity samples taken from the calibration data when no validation data is given


DEFAULT_AUTO_COSINE = 0.99  # the accuracy guard of --mode auto when no budget is given


# int8 is kept only when it is clearly faster than its float predecessor: the upper end of the
# 95% CI of (int8 latency / float latency) must be at most this, i.e. a win of 2% or more that
# the interval shows, not only its point estimate. A smaller or unproven win sits within the
# run-to-run noise of a shared CPU: keeping it would make two builds of the same model differ
# (int8 kept once, rejected once), and float, whose outputs are exact, is the safer choice.
# `quantize --mode auto` and `optimize` both judge int8 by this one rule.
INT8_MARGIN = 0.98


def _choice(name: str, value: str, options: tuple[str, ...]) -> None:
    if value not in options:
        raise InvalidInputError(f"{name} {value!r}: choose one of {', '.join(options)}")


@dataclass(frozen=True)
class QuantizeConfig:
    """What to quantize and how; `mode="auto"` measures candidates and keeps the best for the objective."""

    mode: str = "auto"  # auto | dynamic | static
    format: str = "qdq"  # qdq | qoperator (static)
    per_channel: bool = False
    reduce_range: bool = False
    weight_type: str = "int8"
    activation_type: str = "int8"
    calib_method: str = "minmax"
    calib_samples: int = 200
    op_types: tuple[str, ...] = ()
    exclude_nodes: tuple[str, ...] = ()
    objective: str = "latency"  # latency | size
    max_accuracy_drop: float | None = None
    min_cosine: float | None = None
    force: bool = False
    seed: int = 0
    grid: str = "auto"  # auto: a CPU-ordered shortlist | full: onnxruntime's whole quantizer grid
    quick_runs: int = 10  # auto: timed rounds per candidate in the first, brief benchmark
    final_runs: int = 30  # auto: timed rounds for the finalists
    finalists: int = 3  # auto: int8 candidates benchmarked longer (plus the float model)
    bits: int = 4  # weight-only: bits per MatMul weight (4 or 8)
    block_size: int = 32  # weight-only: weights per scale along K (16, 32, 64, 128)
    algorithm: str = "rtn"  # weight-only: rtn (round to nearest) | hqq (needs torch)
    accuracy_level: int = 4  # weight-only: 4 multiplies in int8 (fast on CPUs), 0/1 in float

    def __post_init__(self) -> None:
        _choice("--mode", self.mode, MODES)
        _choice("--format", self.format, FORMATS)
        _choice("--weight-type", self.weight_type, QTYPES)
        _choice("--activation-type", self.activation_type, QTYPES)
        _choice("--calib-method", self.calib_method, CALIB_METHODS)
        _choice("--objective", self.objective, OBJECTIVES)
        _choice("grid", self.grid, ("auto", "full"))
        if self.mode == "static" and self.activation_type == "int8" and self.weight_type == "uint8":
            raise InvalidInputError(
                "onnxruntime does not support int8 activations with uint8 weights: use --weight-type int8 "
                "or --activation-type uint8"
            )
        if self.calib_samples < 1:
            raise InvalidInputError(f"--calib-samples {self.calib_samples}: must be >= 1 (200 is a good default)")
        if self.max_accuracy_drop is not None and self.max_accuracy_drop < 0:
            raise InvalidInputError(f"--max-accuracy-drop {self.max_accuracy_drop}: must be >= 0 percentage points")
        if self.min_cosine is not None and not 0 <= self.min_cosine <= 1:
            raise InvalidInputError(f"--min-cosine {self.min_cosine}: must be in [0, 1], e.g. 0.99 (0 turns the floor off)")
        self._check_weight_only()
        if self.quick_runs < 2 or self.final_runs < 2 or self.finalists < 1:
            raise InvalidInputError("quick_runs and final_runs must be >= 2 and finalists >= 1")

    def _check_weight_only(self) -> None:
        if self.bits not in BITS:
            raise InvalidInputError(f"--bits {self.bits}: choose one of {', '.join(map(str, BITS))}")
        if self.block_size not in BLOCK_SIZES:
            raise InvalidInputError(f"--block-size {self.block_size}: choose one of {', '.join(map(str, BLOCK_SIZES))}")
        _choice("--algorithm", self.algorithm, ALGORITHMS)
        if self.accuracy_level not in ACCURACY_LEVELS:
            raise InvalidInputError(f"--accuracy-level {self.accuracy_level}: choose one of "
                                    f"{', '.join(map(str, ACCURACY_LEVELS))} (4: int8 compute, 0/1: float)")
        if self.mode == "weight-only" and set(self.op_types) - {"MatMul"}:
            raise InvalidInputError(f"--op-types {','.join(self.op_types)}: weight-only quantization handles MatMul "
                                    "only; drop --op-types or use --mode dynamic/static for other ops")

    @property
    def budget(self) -> Budget:
        """The accuracy budget given by the user (may be empty)."""
        return Budget(self.max_accuracy_drop, self.min_cosine)

    def candidate(self) -> Candidate:
        """The single quantizer configuration of mode dynamic/static/weight-only."""
        return Candidate(
            mode=self.mode,
            format=self.format if self.mode == "static" else "qdq",
            activation_type=self.activation_type,
            weight_type=self.weight_type,
            per_channel=self.per_channel,
            reduce_range=self.reduce_range,
            op_types=self.op_types,
            exclude_nodes=self.exclude_nodes,
            calib_method=self.calib_method,
            bits=self.bits,
            block_size=self.block_size,
            algorithm=self.algorithm,
            accuracy_level=self.accuracy_level,
        )


def _config_dict(cfg: QuantizeConfig) -> dict[str, Any]:
    d = asdict(cfg)
    d["op_types"] = list(cfg.op_types)
    d["exclude_nodes"] = list(cfg.exclude_nodes)
    return d
