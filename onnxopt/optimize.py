"""Run a recipe on a model, verify and benchmark every stage, decide what to keep, apply gates."""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from onnx import ModelProto, StringStringEntryProto

from onnxopt.errors import InvalidInputError
from onnxopt.feeds import Feed, first_batch, synthesize_feed
from onnxopt.model import graph_inputs, save_model
from onnxopt.passes import OBJECTIVES, PassContext, PassSpec, Recipe, StageResult

log = logging.getLogger(__name__)

GATE_FAILED_KEY = "onnxopt.gate_failed"
RECIPE_KEY = "onnxopt.recipe"
# A measured candidate (auto quantization) must not be slower than this times its predecessor
# (upper end of the 95% CI of the latency ratio).
KEEP_MAX_RATIO_HIGH = 1.02
STAGE_LABELS = {
    "optimize_graph": "graph-optimized",
    "fold_constants": "constants-folded",
    "prune_magnitude": "magnitude-pruned",
    "prune_channels": "channel-pruned",
    "quantize": "quantized",
    "add_postprocessing": "post-processed",
}


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
    # Return the input model rather than one measured slower (CI upper end > 1.02x the input's
    # latency). None: on for the default recipe with objective latency, off for explicit recipes
    # (whose output bytes then never depend on timing).
    never_slower: bool | None = None

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise InvalidInputError(f"--objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.bench_runs < 2:
            raise InvalidInputError(f"--bench-runs must be >= 2 (a confidence interval needs samples), got {self.bench_runs}")
        if self.bench_seconds is not None and not self.bench_seconds > 0:
            raise InvalidInputError(f"--bench-seconds must be > 0, got {self.bench_seconds}")
        if self.warmup < 0 or self.threads < 0:
            raise InvalidInputError("--warmup and --threads must be >= 0")
        if self.synthetic_samples < 1 or self.eval_batch < 1:
            raise InvalidInputError("synthetic_samples and eval_batch must be >= 1")


@dataclass(frozen=True)
class Stage:
    """One row of the result table: the input model or the model after a pass."""

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
            "objective": self.config.objective,
            "seed": self.config.seed,
        }


def default_recipe(model: ModelProto, objective: str = "latency") -> Recipe:
    """The recipe used without --recipe: graph optimization, then quantization fit for the model.

    Conv nets: static int8 (per-channel), calibrated on --calib-data. Sequence models
    (RNN/attention/MatMul-heavy) and MLPs: dynamic int8. With objective latency the int8 model
    is a candidate kept only when measured faster; with objective size it is always kept.
    """
    from onnxopt.pass_adapters import model_family

    family = model_family(model)
    quant: dict[str, Any] = {"mode": "auto"}
    if family == "conv":
        quant["per_channel"] = True
    passes = [PassSpec("optimize_graph", {}), PassSpec("quantize", quant)]
    return Recipe(tuple(passes), description=f"default recipe for a {family} model (objective {objective})")


def stage_label(pass_name: str, report: dict[str, Any]) -> str:
    """A human name for the stage a pass produced, e.g. 'quantized (int8 static)'."""
    label = STAGE_LABELS.get(pass_name, pass_name)
    if pass_name == "quantize" and report.get("mode") and report["mode"] != "skipped":
        label += f" (int8 {report['mode']})"
    return label


def _unique(name: str, seen: set[str]) -> str:
    out, i = name, 2
    while out in seen:
        out, i = f"{name} #{i}", i + 1
    seen.add(out)
    return out


def _eval_feed(model: ModelProto, val: tuple[Feed, np.ndarray | None] | None, config: OptimizeConfig) -> tuple[Feed, np.ndarray | None, str]:
    if val is not None:
        feed, labels = val
        n = min(int(v.shape[0]) for v in feed.values()) if feed else 0
        return feed, labels, f"{n} samples from --data" + (" with labels" if labels is not None else "")
    feed = synthesize_feed(model, batch=config.synthetic_samples, seed=config.seed)
    n = min(int(v.shape[0]) for v in feed.values()) if feed else 0
    return feed, None, f"{n} synthetic random samples (seed {config.seed}); pass --data for real inputs"


def optimize(
    model: ModelProto,
    recipe: Recipe | None = None,
    config: OptimizeConfig | None = None,
    *,
    val: tuple[Feed, np.ndarray | None] | None = None,
    calib: Any = None,
    progress: Callable[[str], None] | None = None,
) -> OptimizeResult:
    """Run the recipe, verify each stage against the input, benchmark all stages interleaved,
    keep measured candidates only when faster, and check the gates on the final model."""
    cfg = config or OptimizeConfig()
    t_start = time.perf_counter()
    say = progress or (lambda _msg: None)
    warnings: list[str] = []
    if cfg.gates.max_accuracy_drop is not None and (val is None or val[1] is None):
        raise InvalidInputError(
            "--max-accuracy-drop needs labelled data: pass --data val.npz with a 'labels' array"
        )
    rec = recipe or default_recipe(model, cfg.objective)
    feed, labels, data_desc = _eval_feed(model, val, cfg)
    if calib is None and _needs_calibration(rec, model):
        if val is None:
            if _needs_calibration(rec, model, explicit_only=True):
                raise InvalidInputError(
                    "the recipe quantizes with mode static, which needs calibration data: "
                    "pass --calib-data calib.npz (or --data val.npz)"
                )
        else:
            calib = val[0]
            warnings.append("no --calib-data: calibrating static quantization on the --data inputs")
    context = PassContext(
        calib=calib,
        val=val[0] if val is not None else None,
        labels=labels,
        seed=cfg.seed,
        objective=cfg.objective,
    )
    pipeline = rec.pipeline()
    say(f"running {pipeline!r}")
    t0 = time.perf_counter()
    result = pipeline.run(model, context, on_stage=lambda s: say(f"{s.pass_name}: done in {s.wall_s:.2f} s"))
    passes_s = time.perf_counter() - t0

    seen: set[str] = set()
    stages = [
        Stage(_unique("original", seen), None, {}, False, model, model.ByteSize(), 0.0, {})
    ]
    for sr in result.stages:
        stages.append(_stage_from(sr, seen))

    for s in stages:
        if s.pass_name == "quantize" and not s.modified and s.report.get("reason"):
            warnings.append(f"int8 quantization skipped: {s.report['reason']}")
    measured = [s for s in stages if s.modified or s.pass_name is None]
    t0 = time.perf_counter()
    if cfg.verify:
        say("verifying every stage against the input model")
        fids = _verify(model, measured[1:], feed, labels, cfg.eval_batch)
        by_name = dict(zip([s.name for s in measured[1:]], fids))
        stages = [replace(s, fidelity=by_name[s.name]) if s.name in by_name else s for s in stages]
    verify_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    bench_by_name: dict[str, Any] = {}
    if cfg.benchmark:
        say(f"benchmarking {len(measured)} models interleaved ({cfg.bench_runs} runs each)")
        bench_by_name = _bench(measured, feed, cfg)
        stages = [replace(s, bench=bench_by_name.get(s.name)) for s in stages]
    bench_s = time.perf_counter() - t0

    stages, decide_warnings = _decide(stages, result.stages, cfg)
    warnings.extend(decide_warnings)
    guard = cfg.never_slower if cfg.never_slower is not None else (recipe is None and cfg.objective == "latency")
    if guard:
        stages, guard_warnings = _never_slower(stages)
        warnings.extend(guard_warnings)
    final_stage = [s for s in stages if s.kept and (s.modified or s.pass_name is None)][-1]
    final_model = _with_recipe(final_stage.model, rec)
    gates = check_gates(cfg.gates, final_stage, stages[0], final_model.ByteSize())
    timings = {
        "passes": passes_s,
        "verify": verify_s,
        "benchmark": bench_s,
        "total": time.perf_counter() - t_start,
    }
    return OptimizeResult(
        model=final_model,
        stages=tuple(stages),
        final=final_stage.name,
        gates=gates,
        recipe=rec,
        warnings=tuple(warnings),
        timings=timings,
        data=data_desc,
        config=cfg,
    )


def _needs_calibration(recipe: Recipe, model: ModelProto, *, explicit_only: bool = False) -> bool:
    """Whether a quantize pass of the recipe would run static (explicit_only: mode = "static")."""
    from onnxopt.pass_adapters import QuantizePass

    ctx = PassContext(calib={})
    for p in recipe.pipeline(check=False).passes:
        if not isinstance(p, QuantizePass):
            continue
        mode = p.mode if explicit_only else p.concrete_mode(model, ctx)
        if mode == "static":
            return True
    return False


def _stage_from(sr: StageResult, seen: set[str]) -> Stage:
    r = sr.result
    note = "" if r.modified else "no change"
    if not r.modified and r.report.get("reason"):
        note = f"no change: {r.report['reason']}"
    return Stage(
        name=_unique(stage_label(sr.pass_name, r.report), seen),
        pass_name=sr.pass_name,
        options=sr.options,
        modified=r.modified,
        model=r.model,
        size_bytes=r.model.ByteSize(),
        wall_s=sr.wall_s,
        report={**r.report, "keep_if_faster": r.keep_if_faster, "changes_outputs": r.changes_outputs},
        note=note,
    )


def _verify(
    reference: ModelProto, stages: list[Stage], feed: Feed, labels: np.ndarray | None, batch: int
) -> list[Any]:
    """FidelityReports of each stage vs the reference (run once; re-derived after a pass that
    changes the outputs by design, by applying that pass to the reference too)."""
    from onnxopt.fidelity import FidelityReport, accuracy_of, output_fidelity, run_batched
    from onnxopt.model import graph_outputs
    from onnxopt.passes import make_pass

    ref = reference
    ref_out = run_batched(ref, feed, batch)
    acc_ref = accuracy_of(ref_out[0], labels) if labels is not None else None
    reports = []
    for stage in stages:
        if stage.report.get("changes_outputs") and stage.pass_name is not None:
            ref = make_pass(stage.pass_name, stage.options)(ref, PassContext()).model
            ref_out = run_batched(ref, feed, batch)
            acc_ref = accuracy_of(ref_out[0], labels) if labels is not None else None
        specs = graph_outputs(ref)
        out = run_batched(stage.model, feed, batch)
        fids = tuple(output_fidelity(s.name, r, c, s) for s, r, c in zip(specs, ref_out, out))
        acc = accuracy_of(out[0], labels) if labels is not None else None
        reports.append(FidelityReport(fids, int(ref_out[0].shape[0]) if ref_out[0].ndim else 1, acc_ref, acc))
    return reports


def _bench(measured: list[Stage], feed: Feed, cfg: OptimizeConfig) -> dict[str, Any]:
    from onnxopt.benchmark import BenchConfig, benchmark
    from onnxopt.runtime import SessionConfig, physical_cores

    session = SessionConfig(intra_op_threads=cfg.threads or physical_cores(), allow_spinning=False)
    bcfg = BenchConfig(
        session=session, warmup=cfg.warmup, runs=cfg.bench_runs, duration_s=cfg.bench_seconds, seed=cfg.seed
    )
    one = first_batch(feed, 1) if _dynamic_batch(measured[0].model) else None
    results = benchmark([s.model for s in measured], bcfg, feed=one, names=[s.name for s in measured])
    return {s.name: r for s, r in zip(measured, results)}


def _dynamic_batch(model: ModelProto) -> bool:
    return all(not (s.shape and isinstance(s.shape[0], int)) for s in graph_inputs(model))


def _decide(
    stages: list[Stage], stage_results: tuple[StageResult, ...], cfg: OptimizeConfig
) -> tuple[list[Stage], list[str]]:
    """Attach ratios vs the input and drop measured candidates that are slower or break a gate."""
    from onnxopt.benchmark import latency_ratio

    warnings: list[str] = []
    original = stages[0]
    out = [original]
    kept_prev = original
    rejected_before = ""
    for s in stages[1:]:
        ratio = latency_ratio(s.bench, original.bench, seed=cfg.seed) if s.bench is not None and original.bench is not None else None
        s = replace(s, ratio=ratio)
        if not s.modified:
            out.append(replace(s, kept=not rejected_before))
            continue
        if rejected_before:
            out.append(replace(s, kept=False, note=f"dropped: built on the rejected stage {rejected_before!r}"))
            continue
        if s.report.get("keep_if_faster"):
            note, warning = _reject_reason(s, kept_prev, cfg)
            if note:
                rejected_before = s.name
                warnings.append(warning)
                out.append(replace(s, kept=False, note=note))
                continue
        out.append(s)
        kept_prev = s
    return out, warnings


def _never_slower(stages: list[Stage]) -> tuple[list[Stage], list[str]]:
    """Fall back to the latest kept stage (or the input) not measured slower than the input."""
    kept = [i for i, s in enumerate(stages) if i > 0 and s.kept and s.modified]
    bad: list[int] = []
    for i in reversed(kept):
        r = stages[i].ratio
        if r is None or r.high <= KEEP_MAX_RATIO_HIGH:
            break
        bad.append(i)
    if not bad:
        return stages, []
    out = list(stages)
    for i in bad:
        r = stages[i].ratio
        out[i] = replace(stages[i], kept=False, note=f"rejected: not measurably faster than the input ({r.ratio:.2f}x)")
    final = next((out[i] for i in reversed(kept) if i not in bad), stages[0])
    worst = stages[bad[0]]
    msg = (
        f"{worst.name} is not measurably faster than the input on this CPU "
        f"({worst.ratio.ratio:.2f}x its latency, 95% CI up to {worst.ratio.high:.2f}x): kept the {final.name} model instead"
    )
    return out, [msg]


def _reject_reason(s: Stage, prev: Stage, cfg: OptimizeConfig) -> tuple[str, str]:
    """(short note, warning line) saying why a measured candidate is not kept; ('', '') to keep it."""
    from onnxopt.benchmark import latency_ratio

    kind = "int8" if s.pass_name == "quantize" else s.name
    fallback = f"kept the float model ({prev.name})" if s.pass_name == "quantize" else f"kept the {prev.name} model"
    if s.bench is not None and prev.bench is not None:
        r = latency_ratio(s.bench, prev.bench, seed=cfg.seed)
        if r.ratio >= 1.0 or r.high > KEEP_MAX_RATIO_HIGH:
            verdict = "is slower" if r.low > 1.0 else "is not measurably faster"
            return (
                f"rejected: {r.ratio:.2f}x the latency of {prev.name}",
                f"{kind} {verdict} on this CPU: {s.name} takes {r.ratio:.2f}x the latency of {prev.name} "
                f"(95% CI {r.low:.2f}-{r.high:.2f}); {fallback}",
            )
    g = cfg.gates
    f = s.fidelity
    if f is not None:
        if g.max_accuracy_drop is not None and f.accuracy_drop is not None and f.accuracy_drop > g.max_accuracy_drop:
            return (
                f"rejected: -{f.accuracy_drop:.2f} accuracy points",
                f"{s.name} loses {f.accuracy_drop:.2f} accuracy points (> --max-accuracy-drop {g.max_accuracy_drop:g}); {fallback}",
            )
        if g.min_cosine is not None and f.min_cosine < g.min_cosine:
            return (
                f"rejected: cosine {f.min_cosine:.4f}",
                f"{s.name} has output cosine {f.min_cosine:.4f} (< --min-cosine {g.min_cosine:g}); {fallback}",
            )
    return "", ""


def _with_recipe(model: ModelProto, recipe: Recipe) -> ModelProto:
    """A copy of the model with the recipe recorded in metadata_props, unused opset imports
    dropped (onnxruntime adds every domain it has registered, which varies by process)."""
    from onnxopt.graph_opt import prune_opset_imports
    from onnxopt.model import copy_model

    m = copy_model(model)
    prune_opset_imports(m)
    entries = [p for p in m.metadata_props if p.key not in (RECIPE_KEY, GATE_FAILED_KEY)]
    del m.metadata_props[:]
    m.metadata_props.extend(entries)
    m.metadata_props.append(StringStringEntryProto(key=RECIPE_KEY, value=recipe.to_toml()))
    return m


def check_gates(gates: Gates, final: Stage, original: Stage, size_bytes: int) -> tuple[GateResult, ...]:
    """Evaluate every set gate on the final stage."""
    out = []
    for name, limit in gates.active().items():
        value: float | None = None
        if name == "max_accuracy_drop":
            value = 0.0 if final is original else (final.fidelity.accuracy_drop if final.fidelity else None)
        elif name == "min_cosine":
            value = 1.0 if final is original else (final.fidelity.min_cosine if final.fidelity else None)
        elif name == "min_speedup":
            value = 1.0 if final is original else (final.ratio.speedup if final.ratio else None)
        elif name == "max_size_mb":
            value = size_bytes / 1e6
        elif name == "max_latency_ms":
            value = final.bench.stats.p50_ms if final.bench is not None else None
        if value is None:
            passed = False
        elif name.startswith("max"):
            passed = value <= limit
        else:
            passed = value >= limit
        out.append(GateResult(name, float(limit), value, passed, GATE_RULES[name]))
    return tuple(out)


def mark_gate_failed(model: ModelProto, failed: tuple[GateResult, ...]) -> ModelProto:
    """A copy of the model with metadata_props[onnxopt.gate_failed] naming the failed gates."""
    from onnxopt.model import copy_model

    m = copy_model(model)
    m.metadata_props.append(
        StringStringEntryProto(key=GATE_FAILED_KEY, value="; ".join(g.describe() for g in failed))
    )
    return m


def save_result(
    result: OptimizeResult,
    output: str | os.PathLike[str],
    *,
    input_path: str | os.PathLike[str] | None = None,
    write_on_gate_failure: bool = True,
) -> Path | None:
    """Write the result model atomically; marked when a gate failed, or not written if asked."""
    model = result.model
    if not result.gates_passed:
        if not write_on_gate_failure:
            return None
        model = mark_gate_failed(model, result.failed_gates)
    return save_model(model, output, input_path=input_path)


def default_output(model_path: str | os.PathLike[str]) -> Path:
    """MODEL.opt.onnx beside the input."""
    p = Path(model_path)
    stem = p.name[: -len(".onnx")] if p.name.endswith(".onnx") else p.name
    return p.with_name(f"{stem}.opt.onnx")
