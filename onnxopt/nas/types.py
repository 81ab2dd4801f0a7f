"""The data of a genetic search: Objective, SearchConfig, Record, GenerationStats, SearchResult.

Kept apart from the engine so the ranking (NSGA-II) and the plots can use them without
importing the genetic algorithm.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from onnxopt.core.errors import InvalidInputError


@dataclass(frozen=True)
class Objective:
    """A metric the search optimizes (maximized unless maximize=False)."""

    name: str
    maximize: bool = True

    def __post_init__(self) -> None:
        if not self.name:
            raise InvalidInputError("an objective needs a metric name, e.g. Objective('accuracy')")


@dataclass(frozen=True)
class SearchConfig:
    """Settings of the genetic search."""

    population: int = 16
    generations: int = 10  # generation 0 is the random initial population
    elite: int = 2
    tournament: int = 3
    crossover_rate: float = 0.9
    mutation_rate: float | None = None  # per gene; default 1 / number of genes
    objectives: tuple[Objective, ...] = (Objective("fitness"),)
    pareto: bool = False
    limits: Mapping[str, float] = field(default_factory=dict)  # upper bounds, e.g. {"latency_ms": 1.0}
    seed: int = 0
    novelty_tries: int = 25  # redraws before a child duplicating a known genome is accepted

    def __post_init__(self) -> None:
        if not isinstance(self.objectives, tuple):
            object.__setattr__(self, "objectives", tuple(self.objectives))
        if self.population < 2:
            raise InvalidInputError(f"population must be >= 2, got {self.population}")
        if self.generations < 1:
            raise InvalidInputError(f"generations must be >= 1, got {self.generations}")
        if self.elite < 0:
            raise InvalidInputError(f"elite must be >= 0, got {self.elite}")
        if self.elite >= self.population:
            raise InvalidInputError(
                f"population ({self.population}) must be larger than the elite count ({self.elite}); "
                f"raise --population or lower --elite"
            )
        if self.tournament < 1:  # a tournament larger than the population uses all of it
            raise InvalidInputError(f"tournament size must be >= 1, got {self.tournament}")
        if not 0.0 <= self.crossover_rate <= 1.0:
            raise InvalidInputError(f"crossover_rate must be in [0, 1], got {self.crossover_rate}")
        if self.mutation_rate is not None and not 0.0 < self.mutation_rate <= 1.0:
            raise InvalidInputError(f"mutation_rate must be in (0, 1], got {self.mutation_rate}")
        if not self.objectives:
            raise InvalidInputError("at least one objective is needed")
        names = [o.name for o in self.objectives]
        if len(set(names)) != len(names):
            raise InvalidInputError(f"objectives repeat a metric: {names}")
        if self.pareto and len(self.objectives) < 2:
            raise InvalidInputError("a Pareto search needs at least two objectives, e.g. accuracy and latency_ms")
        for k, v in self.limits.items():
            if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
                raise InvalidInputError(f"limit on {k!r} must be a positive number, got {v!r}")
        if self.novelty_tries < 1:
            raise InvalidInputError("novelty_tries must be >= 1")

    def fingerprint(self) -> dict[str, Any]:
        """Settings that must match for a checkpoint to be resumed (generations may grow)."""
        d = asdict(self)
        d.pop("generations")
        d["limits"] = dict(sorted(self.limits.items()))
        return json.loads(json.dumps(d))


@dataclass(frozen=True)
class Record:
    """One evaluated genome: its metrics, or the error that made it fail."""

    index: int  # evaluation order (0-based)
    generation: int
    key: str  # canonical genome key
    genome: dict[str, Any]
    metrics: dict[str, Any] | None
    error: str | None
    seconds: float

    @property
    def ok(self) -> bool:
        """True when the fitness function returned usable metrics."""
        return self.error is None and self.metrics is not None

    def value(self, name: str) -> float:
        """A numeric metric (nan when failed or missing)."""
        if not self.metrics or name not in self.metrics:
            return math.nan
        return float(self.metrics[name])

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict."""
        return asdict(self)

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> Record:
        """Inverse of to_dict."""
        return Record(
            int(d["index"]), int(d["generation"]), str(d["key"]), dict(d["genome"]),
            dict(d["metrics"]) if d.get("metrics") is not None else None,
            d.get("error"), float(d["seconds"]),
        )


@dataclass(frozen=True)
class GenerationStats:
    """Progress of one generation."""

    generation: int
    evaluated: int  # new evaluations this generation
    reused: int  # children found in the fitness cache
    failed: int
    feasible: int  # population members meeting the limits
    best: float | None  # primary objective of the best record so far
    median: float | None  # median primary objective over the population
    pareto_size: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict."""
        return asdict(self)


@dataclass(frozen=True)
class SearchResult:
    """Outcome of a search: the best record, the Pareto front, every evaluation."""

    best: Record | None
    feasible: bool  # best meets every limit (False: best is the closest infeasible one)
    front: tuple[Record, ...]
    population: tuple[Record, ...]
    records: tuple[Record, ...]
    history: tuple[GenerationStats, ...]
    config: SearchConfig

    @property
    def evaluations(self) -> int:
        """Number of fitness evaluations performed."""
        return len(self.records)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable summary."""
        return {
            "best": self.best.to_dict() if self.best else None,
            "feasible": self.feasible,
            "front": [r.to_dict() for r in self.front],
            "evaluations": self.evaluations,
            "failed": sum(not r.ok for r in self.records),
            "history": [h.to_dict() for h in self.history],
            "config": self.config.fingerprint() | {"generations": self.config.generations},
        }
