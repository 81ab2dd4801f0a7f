"""Keep or reject each stage, and check the gates on the final model.

Every stage that changes numbers must hold the fidelity floor (OptimizeConfig.floor: output
cosine >= 0.99, accuracy drop <= 0.5 pt with labels, unless lowered explicitly); a stage below
it is rejected with one warning line. A measured candidate (keep_if_faster: int8 in auto mode)
is kept only when clearly faster than the stage before: the upper end of the 95% CI of its
latency ratio <= INT8_MARGIN, the rule `quantize --mode auto` applies too.
The never-slower rule falls back to the latest kept stage not measured slower than the input.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

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
from onnxopt.quantization.config import INT8_MARGIN
from onnxopt.quantization.evaluate import Budget

log = logging.getLogger(__name__)


def decide_stages(
    stages: list[Stage], stage_results: tuple[StageResult, ...], cfg: OptimizeConfig, floor: Budget | None = None
) -> tuple[list[Stage], list[str]]:
    """Attach ratios vs the input; drop stages below the floor and measured candidates not clearly faster."""
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
        note, warning = _below_floor(s, kept_prev, floor)
        if not note and s.report.get("keep_if_faster"):
            note, warning = _not_clearly_faster(s, kept_prev, cfg)
        if note:
            rejected_before = s.name
            warnings.append(warning)
            out.append(replace(s, kept=False, note=note))
            continue
        out.append(s)
        kept_prev = s
    return out, warnings


def worth_remeasuring(stages: list[Stage], cfg: OptimizeConfig) -> bool:
    """True when a longer run may settle a decision the CIs left open: a measured candidate was
    rejected although it looked clearly faster than the stage before (ratio <= INT8_MARGIN) and
    only its CI did not show it; or (never-slower) the final stage looks faster than the input but
    its CI reaches above NOT_SLOWER, which would throw away what a pass measured as a gain."""
    from onnxopt.measure.stats import latency_ratio

    prev = stages[0]
    for s in stages[1:]:
        if s.kept and s.modified:
            prev = s
            continue
        if not s.kept and s.report.get("keep_if_faster") and s.note.startswith("rejected: not clearly faster"):
            if s.bench is None or prev.bench is None:
                return False
            r = latency_ratio(s.bench, prev.bench, seed=cfg.seed)
            return r.ratio <= INT8_MARGIN < r.high
    final = prev.ratio if prev is not stages[0] else None
    return bool(cfg.never_slower and final is not None and final.ratio < 1.0 and final.high > NOT_SLOWER)


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


def repair_warnings(stages: list[Stage]) -> list[str]:
    """One line per kept int8 stage whose quantization returned nodes to float to hold the floor."""
    out = []
    for s in stages:
        nodes = s.report.get("repaired") if s.pass_name == "quantize" and s.kept else None
        if nodes:
            shown = ", ".join(nodes[:5]) + (f" and {len(nodes) - 5} more" if len(nodes) > 5 else "")
            out.append(f"int8 repaired: {len(nodes)} node(s) returned to float to hold the fidelity floor "
                       f"({s.report.get('budget', 'cosine')}): {shown}")
    return out


def _fallback_text(s: Stage, prev: Stage) -> str:
    return f"kept the float model ({prev.name})" if s.pass_name == "quantize" else f"kept the {prev.name} model"


def _below_floor(s: Stage, prev: Stage, floor: Budget | None) -> tuple[str, str]:
    """(short note, warning line) when the stage misses the fidelity floor; ('', '') when it holds."""
    f = s.fidelity
    if floor is None or f is None or floor.holds(f):
        return "", ""
    why = []
    if floor.min_cosine is not None and f.min_cosine < floor.min_cosine:
        why.append(f"output cosine {f.min_cosine:.4f} < {floor.min_cosine:g}")
    drop = f.accuracy_drop
    if floor.max_accuracy_drop is not None and (drop is None or drop > floor.max_accuracy_drop + 1e-9):
        why.append(f"accuracy drop {drop:.2f} pt > {floor.max_accuracy_drop:g}" if drop is not None else "no accuracy")
    text = ", ".join(why)
    return (
        f"rejected: {text} (fidelity floor)",
        f"{s.name} rejected: {text}, below the fidelity floor ({floor.describe()}; lower it explicitly with "
        f"--min-cosine / --max-accuracy-drop); {_fallback_text(s, prev)}",
    )


def _not_clearly_faster(s: Stage, prev: Stage, cfg: OptimizeConfig) -> tuple[str, str]:
    """(short note, warning line) when a measured candidate is not clearly faster than the stage before."""
    from onnxopt.measure.stats import latency_ratio

    if s.bench is None or prev.bench is None:
        return "", ""
    r = latency_ratio(s.bench, prev.bench, seed=cfg.seed)
    if r.high <= INT8_MARGIN:
        return "", ""
    kind = "int8" if s.pass_name == "quantize" else s.name
    verdict = "is slower" if r.low > 1.0 else "is not clearly faster"
    return (
        f"rejected: not clearly faster, {r.ratio:.2f}x the latency of {prev.name}",
        f"{kind} {verdict} on this CPU: {s.name} takes {r.ratio:.2f}x the latency of {prev.name} "
        f"(95% CI {r.low:.2f}-{r.high:.2f}; kept only when the upper end is <= {INT8_MARGIN}); {_fallback_text(s, prev)}",
    )


def check_gates(
    gates: Gates, final: Stage, original: Stage, size_bytes: int, recorded: dict[str, Any] | None = None
) -> tuple[GateResult, ...]:
    """Evaluate every set gate on the final stage.

    recorded: the final model's latency measured when --decisions were recorded ('speedup',
    'p50_ms'); a replay measures nothing, so its timing gates use these values.
    """
    out = []
    for name, limit in gates.active().items():
        value: float | None = None
        rule = GATE_RULES[name]
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
        if value is None and recorded and name in ("min_speedup", "max_latency_ms"):
            value = recorded.get("speedup" if name == "min_speedup" else "p50_ms")
            rule += " (as recorded in the --decisions file)"
        if value is None:
            passed = False
        elif name.startswith("max"):
            passed = value <= limit
        else:
            passed = value >= limit
        out.append(GateResult(name, float(limit), value, passed, rule))
    return tuple(out)


def mark_gate_failed(model: ModelProto, failed: tuple[GateResult, ...]) -> ModelProto:
    """A copy of the model with metadata_props[onnxopt.gate_failed] naming the failed gates."""
    from onnxopt.core.model import copy_model

    m = copy_model(model)
    m.metadata_props.append(
        StringStringEntryProto(key=GATE_FAILED_KEY, value="; ".join(g.describe() for g in failed))
    )
    return m
