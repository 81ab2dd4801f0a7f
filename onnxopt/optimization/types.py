"""The data of an optimize run: Gates, OptimizeConfig, Plan, Stage, OptimizeResult."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onnx import ModelProto

from onnxopt.core.errors import InvalidInputError
from onnxopt.optimization.recipe import Recipe
from onnxopt.passes.base import OBJECTIVES
from onnxopt.quantization.evaluate import Budget

log = logging.getLogger(__name__)


GATE_FAILED_KEY = "onnxopt.gate_failed"


RECIPE_KEY = "onnxopt.recipe"


# The fidelity floor: every stage that changes numbers (quantization, pruning, ...) must keep the
# per-sample output cosine vs the input model (mean over the verification samples) at or above
# DEFAULT_MIN_COSINE and, when the data has labels, lose at most DEFAULT_MAX_ACCURACY_DROP
# accuracy points, under every objective. A stage below it is repaired (quantization returns
# nodes to float) or rejected; --min-cosine / --max-accuracy-drop move it, explicitly.
DEFAULT_MIN_COSINE = 0.99
DEFAULT_MAX_ACCURACY_DROP = 0.5


@dataclass(frozen=True)
class Gates:
    """Limits a pipeline checks on the final model; None disables a gate."""

    max_accuracy_drop: float | None = None  # percentage points (needs labels)
    min_cosine: float | None = None  # lowest output cosine similarity vs the input model
    min_speedup: float | None = None  # point estimate: p50(original) / p50(final)
    max_size_mb: float | None = None  # serialized model size, MB = 10^6 bytes
    max_latency_ms: float | None = None  # p50 latency of the final model

    def __post_init__(self) -> None:
        for name in ("max_accuracy_drop", "min_speedup", "max_size_mb", "max_latency_ms"):
            v = getattr(self, name)
            if v is not None and (not math.isfinite(v) or v < 0):
                raise InvalidInputError(f"--{name.replace('_', '-')} must be a number >= 0, got {v}")
        if self.min_cosine is not None and not -1.0 <= self.min_cosine <= 1.0:
            raise InvalidInputError(f"--min-cosine must be between -1 and 1, got {self.min_cosine}")

    def active(self) -> dict[str, float]:
        """The gates that are set."""
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass(frozen=True)
class GateResult:
    """One gate's verdict on the final model."""

    gate: str
    limit: float
    value: float | None
    passed: bool
    rule: str

    def describe(self) -> str:
        """E.g. 'min_speedup: 1.12 < 1.50 (p50 original / p50 final)'."""
        val = "n/a" if self.value is None else f"{self.value:.4g}"
        op = ("<=" if self.gate.startswith("max") else ">=") if self.passed else (">" if self.gate.startswith("max") else "<")
        return f"{self.gate}: {val} {op} {self.limit:g} ({self.rule})"


GATE_RULES = {
    "max_accuracy_drop": "accuracy points lost vs the input model, on --data labels",
    "min_cosine": "lowest output cosine similarity vs the input model",
    "min_speedup": "point estimate: p50 input / p50 output, interleaved runs",
    "max_size_mb": "serialized output size in MB (10^6 bytes)",
    "max_latency_ms": "p50 latency of the output in ms",
}


@dataclass(frozen=True)
class OptimizeConfig:
    """How optimize() verifies, benchmarks and judges the stages."""

    objective: str = "latency"  # latency | size
    seed: int = 0
    threads: int = 0  # intra-op threads for the benchmark (0: physical cores)
    bench_runs: int = 50  # minimum timed runs per stage
    bench_seconds: float | None = 2.0  # keep running interleaved rounds until this long (tiny models: tight CIs)
    warmup: int = 5
    gates: Gates = field(default_factory=Gates)
    eval_batch: int = 256
    synthetic_samples: int = 16  # inputs synthesized for fidelity when no --data is given
    verify: bool = True
    benchmark: bool = True
    # Return the input model rather than one measured slower (CI upper end > NOT_SLOWER x the
    # input's latency). None: plan() sets it, on for the default recipe with objective latency,
    # off for a given recipe (whose output bytes then never depend on timing).
    never_slower: bool | None = None
    batch: int = 1  # the batch latency is measured at (a model with a fixed batch: its own)
    shape_overrides: Mapping[str, tuple[int, ...]] | None = None  # --shape: sizes of symbolic dims

    def floor(self, has_labels: bool) -> Budget:
        """The fidelity floor every number-changing stage must hold: the --min-cosine and
        --max-accuracy-drop gates when set, else DEFAULT_MIN_COSINE and (with labels)
        DEFAULT_MAX_ACCURACY_DROP."""
        g = self.gates
        cosine = g.min_cosine if g.min_cosine is not None else DEFAULT_MIN_COSINE
        drop = g.max_accuracy_drop if g.max_accuracy_drop is not None else DEFAULT_MAX_ACCURACY_DROP
        return Budget(drop if has_labels else None, cosine)

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise InvalidInputError(f"--objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.bench_runs < 2:
            raise InvalidInputError(f"--bench-runs must be >= 2 (a confidence interval needs samples), got {self.bench_runs}")
        if self.bench_seconds is not None and not self.bench_seconds > 0:
            raise InvalidInputError(f"--bench-seconds must be > 0, got {self.bench_seconds}")
        if self.warmup < 0 or self.threads < 0:
            raise InvalidInputError("--warmup and --threads must be >= 0")
        if self.batch < 1:
            raise InvalidInputError(f"--batch must be >= 1, got {self.batch}")
        if self.synthetic_samples < 1 or self.eval_batch < 1:
            raise InvalidInputError("synthetic_samples and eval_batch must be >= 1")


@dataclass(frozen=True)
class Plan:
    """What an optimize run will do, decided once by run.plan() before any work."""

    recipe: Recipe
    config: OptimizeConfig  # never_slower is a bool here
    family: str  # core.model.model_family of the input model (conv | sequence | dense)


@dataclass(frozen=True)
class Stage:
    """One row of the result table: the input model or the model after a pass.

    model: the input model for the first stage; for a pass's stage above
    optimization.store.KEEP_BYTES, its graph only (optimize() kept the weights in its work
    directory, at `path`, removed when it returned: the result model with its weights is
    OptimizeResult.model). path: the stage's file during the run.
    """

    name: str
    pass_name: str | None
    options: dict[str, Any]
    modified: bool
    model: ModelProto = field(repr=False)
    size_bytes: int
    wall_s: float
    report: dict[str, Any]
    fidelity: Any = None  # FidelityReport | None
    bench: Any = None  # BenchResult | None
    ratio: Any = None  # RatioCI vs the input model | None
    kept: bool = True
    note: str = ""
    path: Path | None = None

    @property
    def source(self) -> ModelProto | Path:
        """What sessions load the stage from: its file during the run, else its proto."""
        return self.path if self.path is not None else self.model

    def to_dict(self, samples: bool = False) -> dict[str, Any]:
        """A JSON-serializable dict."""
        return {
            "name": self.name,
            "pass": self.pass_name,
            "options": self.options,
            "modified": self.modified,
            "size_bytes": self.size_bytes,
            "wall_s": self.wall_s,
            "kept": self.kept,
            "note": self.note,
            "report": self.report,
            "fidelity": self.fidelity.to_dict() if self.fidelity is not None else None,
            "latency": self.bench.to_dict(samples=samples) if self.bench is not None else None,
            "vs_original": self.ratio.to_dict() if self.ratio is not None else None,
        }


@dataclass(frozen=True)
class OptimizeResult:
    """What optimize() returns: the chosen model, every stage measured, gates, warnings, timings."""

    model: ModelProto = field(repr=False)
    stages: tuple[Stage, ...]
    final: str
    gates: tuple[GateResult, ...]
    recipe: Recipe
    warnings: tuple[str, ...]
    timings: dict[str, float]
    data: str  # where the verification inputs came from
    config: OptimizeConfig
    timed_shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)  # input -> shape of one timed run
    decisions: Any = None  # optimization.decisions.Decisions: what was decided (recorded or replayed)
    replayed: bool = False  # the decisions came from a --decisions file: nothing was measured

    @property
    def gates_passed(self) -> bool:
        """True when every gate passed (or none was set)."""
        return all(g.passed for g in self.gates)

    @property
    def failed_gates(self) -> tuple[GateResult, ...]:
        """The gates that failed."""
        return tuple(g for g in self.gates if not g.passed)

    @property
    def final_stage(self) -> Stage:
        """The stage whose model is the result."""
        return next(s for s in self.stages if s.name == self.final)

    def to_dict(self, samples: bool = False) -> dict[str, Any]:
        """A JSON-serializable dict (latency samples included when asked)."""
        return {
            "final": self.final,
            "gates_passed": self.gates_passed,
            "gates": [
                {**g.__dict__, "description": g.describe()} for g in self.gates
            ],
            "warnings": list(self.warnings),
            "stages": [s.to_dict(samples) for s in self.stages],
            "recipe": self.recipe.to_dict(),
            "timings_s": self.timings,
            "data": self.data,
            "timed_shapes": {k: list(v) for k, v in self.timed_shapes.items()},
            "objective": self.config.objective,
            "seed": self.config.seed,
            "decisions": self.decisions.to_dict() if self.decisions is not None else None,
            "replayed": self.replayed,
        }
