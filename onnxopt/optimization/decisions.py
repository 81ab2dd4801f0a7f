"""What an optimize run decided, recorded so that a rebuild repeats it without measuring.

A measured run records, per pass of its recipe, whether the pass changed the model and whether
its stage was kept, and for quantization the exact quantizer configuration that was built (mode,
format, types, granularity, op types, nodes kept in float). The record goes into the output's
metadata_props (DECISIONS_KEY), the JSON report and, with `--decisions FILE`, a file. Replaying
a record runs the kept passes with those concrete settings: no candidate search, no benchmark,
so the same input model, data and onnxopt version give the same bytes (a CI rebuild does not
flip int8 on measurement noise).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onnx import ModelProto

from onnxopt.core.errors import InvalidInputError
from onnxopt.optimization.recipe import PassSpec, Recipe, pass_option_names
from onnxopt.optimization.types import Stage
from onnxopt.quantization.evaluate import Budget

DECISIONS_KEY = "onnxopt.decisions"
VERSION = 1

# Options of the quantize pass that only steer the auto search; a replay builds one candidate.
_SEARCH_ONLY = ("grid", "quick_runs", "final_runs", "finalists")
# The fields of a recorded quantizer configuration (quantization.engine.Candidate) a replay sets.
_CANDIDATE_FIELDS = ("mode", "format", "activation_type", "weight_type", "per_channel", "reduce_range",
                     "op_types", "exclude_nodes", "calib_method", "bits", "block_size", "algorithm", "accuracy_level")


@dataclass(frozen=True)
class StageDecision:
    """One pass of the recipe as decided: did it change the model, was its stage kept, and how."""

    pass_name: str
    modified: bool
    kept: bool
    note: str = ""
    quantizer: dict[str, Any] | None = None  # the built candidate (Candidate.to_dict()) of a quantize pass

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict."""
        d: dict[str, Any] = {"pass": self.pass_name, "modified": self.modified, "kept": self.kept, "note": self.note}
        if self.quantizer is not None:
            d["quantizer"] = self.quantizer
        return d


@dataclass(frozen=True)
class Decisions:
    """The decisions of one optimize run, tied to its input model, recipe, objective and floor."""

    input_sha256: str
    recipe: str  # the recipe as TOML
    objective: str
    floor: str  # Budget.describe() of the fidelity floor
    stages: tuple[StageDecision, ...]
    final: str  # the name of the stage whose model is the output
    measured: dict[str, float] = field(default_factory=dict)  # the final model's speedup and p50_ms, when measured

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict (what the file, the metadata and the report hold)."""
        return {
            "version": VERSION,
            "input_sha256": self.input_sha256,
            "recipe": self.recipe,
            "objective": self.objective,
            "floor": self.floor,
            "stages": [s.to_dict() for s in self.stages],
            "final": self.final,
            "measured": dict(self.measured),
        }

    def to_json(self) -> str:
        """Canonical JSON text: the same decisions always give the same characters."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: Any, source: str = "decisions") -> Decisions:
        """Decisions from their dict; InvalidInputError naming the source when it is not one."""
        try:
            if data["version"] != VERSION:
                raise InvalidInputError(f"{source}: decisions version {data['version']!r}, this onnxopt reads {VERSION}")
            stages = tuple(
                StageDecision(s["pass"], bool(s["modified"]), bool(s["kept"]), str(s.get("note", "")), s.get("quantizer"))
                for s in data["stages"]
            )
            return cls(str(data["input_sha256"]), str(data["recipe"]), str(data["objective"]), str(data["floor"]),
                       stages, str(data["final"]), {k: float(v) for k, v in data.get("measured", {}).items()})
        except InvalidInputError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise InvalidInputError(f"{source}: not an onnxopt decisions file ({type(e).__name__}: {e}); "
                                    "delete it to measure and record again") from e


def model_sha256(model: ModelProto) -> str:
    """The hash a record ties its decisions to: sha256 of the model's deterministic serialization."""
    return hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()


def record(input_sha256: str, recipe: Recipe, objective: str, floor: Budget, stages: list[Stage], final: str) -> Decisions:
    """The decisions of a measured run: one StageDecision per pass (stages[0] is the input);
    input_sha256: model_sha256() of the input (taken when it was loaded: the run need not hold it)."""
    out = []
    for s in stages[1:]:
        assert s.pass_name is not None
        q = s.report.get("quantizer") if s.pass_name == "quantize" and s.modified else None
        quantizer = {k: q[k] for k in _CANDIDATE_FIELDS} if q else None
        out.append(StageDecision(s.pass_name, s.modified, s.kept, s.note, quantizer))
    final_stage = next(s for s in stages if s.name == final)
    measured: dict[str, float] = {}
    if final_stage.bench is not None:
        measured["p50_ms"] = float(final_stage.bench.stats.p50_ms)
        measured["speedup"] = float(final_stage.ratio.speedup) if final_stage.ratio is not None else 1.0
    return Decisions(input_sha256, recipe.to_toml(), objective, floor.describe(), tuple(out), final, measured)


def check_replayable(decisions: Decisions, input_sha256: str, recipe: Recipe, objective: str, floor: Budget,
                     source: str = "decisions") -> None:
    """Raise InvalidInputError when the record was made for another model (input_sha256: its
    model_sha256()), recipe, objective or floor."""
    checks = (
        ("input model", decisions.input_sha256, input_sha256),
        ("recipe", decisions.recipe, recipe.to_toml()),
        ("objective", decisions.objective, objective),
        ("fidelity floor", decisions.floor, floor.describe()),
    )
    for what, recorded, now in checks:
        if recorded != now:
            raise InvalidInputError(
                f"{source}: recorded for another {what} than this run's; delete the file to measure and record again"
            )
    if len(decisions.stages) != len(recipe.passes):
        raise InvalidInputError(f"{source}: {len(decisions.stages)} recorded stages for a recipe of "
                                f"{len(recipe.passes)} passes; delete the file to measure and record again")


def replay_specs(decisions: Decisions, recipe: Recipe) -> tuple[PassSpec, ...]:
    """The passes a replay runs: the recipe up to the last stage that changed the model and was kept
    (later ones were rejected), quantization pinned to the recorded configuration (no search, no
    benchmark), passes with a `measure` option (fuse_transformer) kept without measuring, and every
    pass left out where it changed nothing."""
    pairs = list(zip(recipe.passes, decisions.stages))
    last = max((i for i, (_, d) in enumerate(pairs) if d.modified and d.kept), default=-1)
    specs = []
    for spec, d in pairs[: last + 1]:
        if not d.modified:  # it changed nothing when recorded: nothing to repeat
            continue
        if "measure" in pass_option_names(spec.name):  # kept when recorded: keep it again, unmeasured
            spec = PassSpec(spec.name, {**spec.options, "measure": False})
        if d.quantizer is not None:
            options = {k: v for k, v in spec.options.items() if k not in _SEARCH_ONLY}
            options.update({k: tuple(v) if isinstance(v, list) else v for k, v in d.quantizer.items()})
            spec = PassSpec(spec.name, options)
        specs.append(spec)
    return tuple(specs)


def load_decisions(path: str | os.PathLike[str]) -> Decisions:
    """Read a decisions file written by save_decisions()."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidInputError(f"{p}: cannot read the decisions file ({e}); delete it to measure and record again") from e
    return Decisions.from_dict(data, str(p))


def save_decisions(decisions: Decisions, path: str | os.PathLike[str]) -> Path:
    """Write the decisions file atomically (canonical JSON, see Decisions.to_json)."""
    from onnxopt.optimization.report import write_text

    return write_text(path, decisions.to_json())
