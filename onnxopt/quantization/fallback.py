"""Accuracy-aware fallback: rank quantized nodes by sensitivity and return the worst to float until the budget holds.

Sensitivity of node n = the output error (1 - cosine, plus the accuracy drop with labels) of the
model in which *only* n is quantized, measured against the float model on a calibration subset.
Isolating each node this way keeps one node's error from hiding behind another's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onnx import ModelProto

from onnxopt.core import progress
from onnxopt.measure.fidelity import FidelityReport
from onnxopt.quantization.engine import Candidate, CandidateFailed, model_size
from onnxopt.quantization.evaluate import Budget, Evaluator

log = logging.getLogger(__name__)

SENSITIVITY_SAMPLES = 64


@dataclass
class Built:
    """A candidate that was built, loaded, run and scored.

    path: set when the model is kept in a file (a big candidate, QuantSession.build): `model` is
    then its graph only, `full()` loads it, `source` is what sessions load; size: its full size.
    """

    cand: Candidate
    model: ModelProto
    quantized_nodes: list[str]
    float_nodes: list[dict[str, str]]
    fidelity: FidelityReport
    variant: str
    notes: list[str] = field(default_factory=list)
    path: Path | None = None
    size: int | None = None

    @property
    def source(self) -> ModelProto | Path:
        """The model for a session: its file when it has one."""
        return self.path if self.path is not None else self.model

    @property
    def nbytes(self) -> int:
        """The full model's serialized size (engine.model_size) without loading it."""
        return self.size if self.size is not None else model_size(self.model)

    def full(self) -> ModelProto:
        """The model with its weights (read from its file when it has one)."""
        if self.path is None:
            return self.model
        from onnxopt.core.external import load_external

        return load_external(self.path)


Builder = Callable[..., Built]  # (candidate, evaluator[, allow_unquantized]) -> Built
Ranker = Callable[[Built], list[tuple[str, float]] | None]  # rank_nodes without builds, or None


def harm(rep: FidelityReport) -> float:
    """A single error number for ranking: 1 - cosine, plus the accuracy drop (as a fraction) with labels."""
    h = 1.0 - rep.min_cosine
    if rep.accuracy_drop is not None:
        h += max(0.0, rep.accuracy_drop) / 100.0
    return h


def _steps(n: int) -> list[int]:
    """How many nodes to return to float at each step: 1..4 one by one, then about x1.5, ending at
    n - 1 (all float but the least harmful node: the partial model most likely to hold the budget)."""
    ks: list[int] = []
    k = 1
    while k < n:
        ks.append(k)
        k = k + 1 if k < 4 else int(k * 1.5)
    if n > 1 and ks[-1] != n - 1:
        ks.append(n - 1)
    return ks


def rank_nodes(base: Built, build: Builder, evaluator: Evaluator) -> list[tuple[str, float]]:
    """(node, harm) for every quantized node of base, most harmful first."""
    sub = evaluator.subset(min(SENSITIVITY_SAMPLES, evaluator.samples))
    nodes = base.quantized_nodes
    ranked: list[tuple[str, float]] = []
    for i, node in enumerate(nodes):
        progress.report(f"quantize: sensitivity of node {i + 1} of {len(nodes)} ({node})")
        others = [m for m in nodes if m != node]
        try:
            only = build(base.cand.with_excluded(others), sub)
            ranked.append((node, harm(only.fidelity)))
        except CandidateFailed as e:
            log.info("sensitivity of %s not measured: %s", node, e)
            ranked.append((node, float("inf")))
    ranked.sort(key=lambda t: -t[1])
    return ranked


def _bound(base: Built, build: Builder, evaluator: Evaluator, budget: Budget, report: dict[str, Any]) -> Built | None:
    """The closest model when no partial quantization can hold the budget, else None.

    Returning every quantized node to float bounds what the search can reach: when even that
    model misses the budget, the error comes from what the quantizer adds around the nodes
    (activation QDQ on other ops, the graph's pre-processing), and ranking the nodes (one
    model built per node) cannot help. One build instead of len(nodes) + len(steps).
    """
    try:
        probe = build(base.cand.with_excluded(base.quantized_nodes), evaluator, True)
    except CandidateFailed as e:
        log.info("fallback bound not measured: %s", e)
        return None
    report["bound"] = {"float_nodes": len(base.quantized_nodes), "min_cosine": probe.fidelity.min_cosine,
                       "accuracy_drop": probe.fidelity.accuracy_drop, "meets_budget": budget.holds(probe.fidelity)}
    if budget.holds(probe.fidelity):
        return None
    report["result"] = (f"even with all {len(base.quantized_nodes)} quantized node(s) back in float the budget is missed "
                        f"(min cosine {probe.fidelity.min_cosine:.4f}): the error is not in those nodes; kept the closest")
    progress.report("quantize: fallback cannot reach the budget (every node in float still misses it)")
    return probe if budget.shortfall(probe.fidelity) < budget.shortfall(base.fidelity) else base


def fallback(base: Built, build: Builder, evaluator: Evaluator, budget: Budget, rank: Ranker | None = None
             ) -> tuple[Built, bool, dict[str, Any]]:
    """Return nodes to float, most harmful first, until the budget holds; (best, meets, report).

    rank: a ranking that needs no build per node (quantization.local_rank, for big models); when
    it returns None the nodes are ranked by rank_nodes."""
    report: dict[str, Any] = {"budget": budget.describe(), "steps": []}
    if budget.holds(base.fidelity):
        report["needed"] = False
        return base, True, report
    report["needed"] = True
    if len(base.quantized_nodes) > 2:
        bound = _bound(base, build, evaluator, budget, report)
        if bound is not None:
            return bound, False, report
    ranked = rank(base) if rank is not None else None
    if ranked is not None:
        report["ranking"] = "each node's own error on the float model's activations (local_rank), no build per node"
        progress.report(f"quantize: ranked {len(ranked)} node(s) by their own error on float activations")
    else:
        ranked = rank_nodes(base, build, evaluator)
        report["ranking"] = "one model per node with only that node quantized"
    report["sensitivity"] = [{"node": n, "harm": float(f"{h:.4g}") if h != float("inf") else None} for n, h in ranked]
    best, best_short = base, budget.shortfall(base.fidelity)
    order = [n for n, _ in ranked]
    for k in _steps(len(order)):
        progress.report(f"quantize: fallback, {k} most sensitive node(s) back to float")
        cand = base.cand.with_excluded(order[:k])
        try:
            built = build(cand, evaluator)
        except CandidateFailed as e:
            report["steps"].append({"float_nodes": order[:k], "error": str(e)})
            continue
        ok = budget.holds(built.fidelity)
        report["steps"].append({
            "float_nodes": order[:k],
            "min_cosine": built.fidelity.min_cosine,
            "accuracy_drop": built.fidelity.accuracy_drop,
            "meets_budget": ok,
        })
        short = budget.shortfall(built.fidelity)
        if ok:
            log.info("budget holds with %d node(s) returned to float", k)
            return built, True, report
        if short < best_short:
            best, best_short = built, short
    report["result"] = "no partial quantization met the budget; kept the closest one"
    return best, False, report
