"""Keep or reject each stage, and check the gates on the final model.

A measured candidate (keep_if_faster) is kept only when its latency ratio to the stage before
is below 1 with the upper end of its 95% CI <= NOT_SLOWER, and it meets the fidelity gates.
The never-slower rule falls back to the latest kept stage not measured slower than the input.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from onnx import ModelProto, StringStringEntryProto

from onnxopt.measure.stats import NOT_SLOWER
from onnxopt.optimization.types import (
    GATE_FAILED_KEY,
    GATE_RULES,
    GateResult,
    Gates,
    OptimizeConfig,
    Stage,
)
from onnxopt.passes.base import StageResult

log = logging.getLogger(__name__)


def decide_stages(
    stages: list[Stage], stage_results: tuple[StageResult, ...], cfg: OptimizeConfig
) -> tuple[list[Stage], list[str]]:
    """Attach ratios vs the input and drop measured candidates that are slower or break a gate."""
    from onnxopt.measure.stats import latency_ratio

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


def never_slower(stages: list[Stage]) -> tuple[list[Stage], list[str]]:
    """Fall back to the latest kept stage (or the input) not measured slower than the input."""
    kept = [i for i, s in enumerate(stages) if i > 0 and s.kept and s.modified]
    bad: list[int] = []
    for i in reversed(kept):
        r = stages[i].ratio
        if r is None or r.high <= NOT_SLOWER:
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
    from onnxopt.measure.stats import latency_ratio

    kind = "int8" if s.pass_name == "quantize" else s.name
    fallback = f"kept the float model ({prev.name})" if s.pass_name == "quantize" else f"kept the {prev.name} model"
    if s.bench is not None and prev.bench is not None:
        r = latency_ratio(s.bench, prev.bench, seed=cfg.seed)
        if r.ratio >= 1.0 or r.high > NOT_SLOWER:
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
    from onnxopt.core.model import copy_model

    m = copy_model(model)
    m.metadata_props.append(
        StringStringEntryProto(key=GATE_FAILED_KEY, value="; ".join(g.describe() for g in failed))
    )
    return m
