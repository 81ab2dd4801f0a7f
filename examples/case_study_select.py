"""Which model the case study keeps: the Pareto-best over every stage, under the stated targets.

Each stage's output is a `Candidate` with three objectives: accuracy on the select split (up),
latency (down) and file size (down). Latency here is the cost model's prediction (onnxopt.nas.cost),
so the choice is the same in every run of a seed; the final table then measures it.

- A candidate is **dominated** when another one is at least as good on all three objectives and
  strictly better on one; the non-dominated ones form the Pareto front.
- It is **feasible** when it meets every target against the teacher: size_ratio =
  teacher bytes / bytes >= min_smaller, speedup = teacher latency / latency >= min_faster, and
  accuracy >= teacher accuracy - max_drop.
- The kept model is the best feasible one for the objective: `latency` -> the lowest latency,
  `size` -> the smallest file (ties: higher accuracy, then the other objective, then stage order).
  It is always on the front of the feasible set. With nothing feasible, the most accurate
  candidate that meets the size and speed targets is kept (else the most accurate), flagged.
- A stage whose output is dominated by its input (the model it started from) made things
  worse: `stage_verdicts` says so, and the next stage starts from the kept model instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Candidate:
    """One model produced by a stage, with the objectives the choice uses."""

    name: str
    stage: str
    accuracy: float  # percent, select split
    latency_ms: float  # cost-model prediction (or the float parent's, scaled by a measured ratio)
    size_bytes: int
    parent: str | None = None  # the candidate this stage started from


@dataclass(frozen=True)
class Targets:
    """The case study's targets against the teacher."""

    min_smaller: float = 20.0
    min_faster: float = 5.0
    max_drop: float = 2.0  # accuracy points below the teacher


def dominates(a: Candidate, b: Candidate) -> bool:
    """a is at least as good as b on accuracy, latency and size, and strictly better on one."""
    ge = a.accuracy >= b.accuracy and a.latency_ms <= b.latency_ms and a.size_bytes <= b.size_bytes
    gt = a.accuracy > b.accuracy or a.latency_ms < b.latency_ms or a.size_bytes < b.size_bytes
    return ge and gt


def pareto(cands: Sequence[Candidate]) -> list[str]:
    """Names of the non-dominated candidates, in input order."""
    return [c.name for c in cands if not any(dominates(o, c) for o in cands if o is not c)]


def target_checks(c: Candidate, teacher: Candidate, targets: Targets) -> dict[str, bool]:
    """{'smaller', 'faster', 'accuracy'}: whether c meets each target against the teacher."""
    return {
        "smaller": teacher.size_bytes / c.size_bytes >= targets.min_smaller,
        "faster": teacher.latency_ms / c.latency_ms >= targets.min_faster,
        "accuracy": c.accuracy >= teacher.accuracy - targets.max_drop,
    }


def choose(cands: Sequence[Candidate], teacher: Candidate, targets: Targets,
           objective: str = "latency") -> tuple[Candidate, bool]:
    """(the kept candidate, whether it meets every target); see the module docstring."""
    if objective not in ("latency", "size"):
        raise ValueError(f"objective must be latency or size, got {objective!r}")
    if not cands:
        raise ValueError("no candidates to choose from")
    order = {c.name: i for i, c in enumerate(cands)}
    feasible = [c for c in cands if all(target_checks(c, teacher, targets).values())]
    if feasible:
        if objective == "latency":
            best = min(feasible, key=lambda c: (c.latency_ms, -c.accuracy, c.size_bytes, order[c.name]))
        else:
            best = min(feasible, key=lambda c: (c.size_bytes, -c.accuracy, c.latency_ms, order[c.name]))
        return best, True
    fast_small = [c for c in cands if (t := target_checks(c, teacher, targets))["smaller"] and t["faster"]]
    pool = fast_small or list(cands)
    return max(pool, key=lambda c: (c.accuracy, -order[c.name])), False


def stage_verdicts(cands: Sequence[Candidate]) -> dict[str, str]:
    """{name: 'improved' | 'trade-off' | 'worse: dominated by <parent>'} for every candidate with a parent."""
    by = {c.name: c for c in cands}
    out: dict[str, str] = {}
    for c in cands:
        if c.parent is None or c.parent not in by:
            continue
        p = by[c.parent]
        if dominates(p, c) or (p.accuracy == c.accuracy and p.latency_ms == c.latency_ms
                               and p.size_bytes == c.size_bytes):
            out[c.name] = f"worse: dominated by {p.name}"
        elif dominates(c, p):
            out[c.name] = "improved"
        else:
            out[c.name] = "trade-off"
    return out


def start_of_next_stage(cands: Sequence[Candidate], teacher: Candidate, targets: Targets, objective: str) -> Candidate:
    """The model the next stage starts from: the kept one so far (a worse stage is not carried forward)."""
    return choose(cands, teacher, targets, objective)[0]
