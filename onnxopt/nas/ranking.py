"""Ranking of search records: single-objective order with limits, and NSGA-II for Pareto searches.

Single objective: failed records last, infeasible ones (over a limit) ordered by their total
relative excess, feasible ones by the objectives (the first decides, the others break ties).
Pareto: constrained domination (Deb's rules): every feasible record beats every infeasible
one; feasible records are split into non-dominated fronts (fast non-dominated sorting) and,
within a front, prefer the larger crowding distance (less crowded regions of the front).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from onnxopt.nas.types import Objective, Record, SearchConfig


def violation(record: Record, limits: Mapping[str, float]) -> float:
    """Total relative excess over the limits (0 when feasible, inf when failed)."""
    if not record.ok:
        return math.inf
    total = 0.0
    for name, lim in limits.items():
        v = record.value(name)
        if math.isnan(v):
            return math.inf
        total += max(0.0, (v - lim) / lim)
    return total


def _objective_vector(record: Record, objectives: Sequence[Objective]) -> tuple[float, ...]:
    """Objectives as values to minimize."""
    return tuple(-record.value(o.name) if o.maximize else record.value(o.name) for o in objectives)


def single_key(record: Record, config: SearchConfig) -> tuple[Any, ...]:
    """Sort key (ascending = better): failed last, infeasible by violation, then objectives."""
    if not record.ok:
        return (2, math.inf, (), record.index)
    v = violation(record, config.limits)
    return (0 if v == 0 else 1, v, _objective_vector(record, config.objectives), record.index)


def nondominated_fronts(points: np.ndarray) -> list[list[int]]:
    """Fast non-dominated sorting of an (n, m) array of values to minimize; fronts of row indices."""
    n = len(points)
    if n == 0:
        return []
    le = np.all(points[:, None, :] <= points[None, :, :], axis=2)
    lt = np.any(points[:, None, :] < points[None, :, :], axis=2)
    dominates: np.ndarray = np.asarray(le & lt)  # dominates[i, j]: i dominates j
    counts = dominates.sum(axis=0)
    fronts: list[list[int]] = []
    current = [i for i in range(n) if counts[i] == 0]
    assigned = np.zeros(n, dtype=bool)
    while current:
        fronts.append(current)
        assigned[current] = True
        counts = counts - dominates[current].sum(axis=0)
        current = [i for i in range(n) if counts[i] == 0 and not assigned[i]]
    return fronts


def crowding_distance(points: np.ndarray) -> np.ndarray:
    """NSGA-II crowding distance of the rows of one front (boundary points get inf)."""
    n, m = points.shape
    dist = np.zeros(n)
    if n <= 2:
        return np.full(n, np.inf)
    for j in range(m):
        order = np.argsort(points[:, j], kind="stable")
        col = points[order, j]
        span = col[-1] - col[0]
        dist[order[0]] = dist[order[-1]] = np.inf
        if span > 0:
            dist[order[1:-1]] += (col[2:] - col[:-2]) / span
    return dist


def pareto_order(records: Sequence[Record], config: SearchConfig) -> list[tuple[int, float]]:
    """(front rank, crowding distance) per record under constrained domination (Deb's rules)."""
    out: list[tuple[int, float]] = [(0, 0.0)] * len(records)
    feas = [i for i, r in enumerate(records) if r.ok and violation(r, config.limits) == 0]
    infeas = [i for i, r in enumerate(records) if r.ok and 0 < violation(r, config.limits) < math.inf]
    failed = [i for i, r in enumerate(records) if i not in set(feas) | set(infeas)]
    rank = 0
    if feas:
        pts = np.array([_objective_vector(records[i], config.objectives) for i in feas], dtype=float)
        for front in nondominated_fronts(pts):
            cd = crowding_distance(pts[front])
            for pos, local in enumerate(front):
                out[feas[local]] = (rank, float(cd[pos]))
            rank += 1
    for i in sorted(infeas, key=lambda i: (violation(records[i], config.limits), records[i].index)):
        out[i] = (rank, 0.0)
        rank += 1
    for i in failed:
        out[i] = (rank, 0.0)
    return out


def pareto_front(records: Sequence[Record], config: SearchConfig) -> list[Record]:
    """The non-dominated records (among feasible ones when any are feasible), by first objective."""
    if not records:
        return []
    order = pareto_order(records, config)
    front = [r for r, (rank, _) in zip(records, order) if rank == 0 and r.ok]
    return sorted(front, key=lambda r: single_key(r, config))


def rank_records(records: Sequence[Record], config: SearchConfig) -> list[Record]:
    """Records best-first: by single-objective key, or by (front, -crowding) in Pareto mode."""
    if not config.pareto:
        return sorted(records, key=lambda r: single_key(r, config))
    order = pareto_order(records, config)
    idx = sorted(range(len(records)), key=lambda i: (order[i][0], -order[i][1], records[i].index))
    return [records[i] for i in idx]
