"""Genetic-algorithm search engine: framework-agnostic, fitness is a callable, executor pluggable.

Genomes come from a :class:`~onnxopt.search_space.SearchSpace`. Each generation keeps the
``elite`` best genomes and fills the rest with children: two parents picked by tournament,
uniform crossover (each gene from either parent), per-gene mutation suited to the gene type
(integer genes move a few steps, choices resample another option, floats get Gaussian noise),
and constraint repair. Genomes are compared by their canonical key: a genome seen before is
never evaluated twice (fitness cache), and children that duplicate the population are redrawn.

Objectives: a single scalar (the first objective; further objectives break ties) with upper
limits on metrics such as ``latency_ms`` as constraints -- infeasible candidates rank below every
feasible one, ordered by how far they exceed the limits, so when nothing is feasible the
closest candidate is reported -- or a Pareto search (NSGA-II: constrained non-dominated sorting
plus crowding distance, parents and children competing for survival) returning the front.

Evaluations go through any ``concurrent.futures.Executor``: none (inline), a local process pool
(``workers=N``), or a cluster executor such as Dask's ``distributed.Client(...).get_executor()``.
A fitness call that raises marks that candidate failed with the reason; the search goes on.
The state (population, every evaluation, numpy Generator state) is checkpointed to JSON after
each generation, so a resumed search gives the same result as an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import os
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onnxopt.core.errors import InvalidInputError, OnnxoptError
from onnxopt.nas.space import Genome, SearchSpace

log = logging.getLogger(__name__)

Fitness = Callable[[Genome], Any]  # returns a float or a mapping of metric name -> value
CHECKPOINT_FORMAT = "onnxopt-search-checkpoint"
CHECKPOINT_VERSION = 1


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


# --- ranking ---------------------------------------------------------------------------------


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


# --- evaluation ------------------------------------------------------------------------------


def _call_fitness(fitness: Fitness, genome: Genome) -> tuple[bool, Any, float]:
    """Run a fitness call, catching its exception (runs in the worker; returns plain data)."""
    start = time.perf_counter()
    try:
        return True, fitness(dict(genome)), time.perf_counter() - start
    except Exception as e:
        tb = traceback.extract_tb(e.__traceback__)
        where = f" (at {Path(tb[-1].filename).name}:{tb[-1].lineno})" if tb else ""
        return False, f"{type(e).__name__}: {e}{where}", time.perf_counter() - start


def _normalize_metrics(raw: Any, config: SearchConfig) -> tuple[dict[str, Any] | None, str | None]:
    if isinstance(raw, int | float | np.number) and not isinstance(raw, bool):
        raw = {config.objectives[0].name: float(raw)}
    if not isinstance(raw, Mapping):
        return None, f"fitness returned {type(raw).__name__}; expected a number or a dict of metrics"
    metrics = {str(k): (v.item() if isinstance(v, np.generic) else v) for k, v in raw.items()}
    for name in [o.name for o in config.objectives] + list(config.limits):
        if name not in metrics:
            return None, f"fitness result has no {name!r} metric (has: {', '.join(metrics) or 'nothing'})"
        v = metrics[name]
        if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v):
            return None, f"fitness metric {name!r} is {v!r}; expected a finite number"
    try:
        json.dumps(metrics)
    except TypeError as e:
        return None, f"fitness metrics are not JSON-serializable: {e}"
    return metrics, None


class _Engine:
    """State and operators shared by the genetic and the random search."""

    def __init__(
        self,
        space: SearchSpace,
        fitness: Fitness,
        config: SearchConfig,
        executor: Executor | None,
        on_record: Callable[[Record], None] | None,
    ) -> None:
        self.space = space
        self.fitness = fitness
        self.config = config
        self.executor = executor
        self.on_record = on_record
        self.rng = np.random.default_rng(config.seed)
        self.cache: dict[str, Record] = {}
        self.records: list[Record] = []
        self.population: list[str] = []
        self.history: list[GenerationStats] = []
        self.generation = 0  # next generation to run
        self.rate = config.mutation_rate or 1.0 / len(space.genes)

    # -- evaluation
    def evaluate(self, genomes: Sequence[Genome], generation: int) -> tuple[int, int]:
        """Evaluate the genomes not in the cache; return (new evaluations, failures)."""
        todo: list[tuple[str, Genome]] = []
        seen: set[str] = set()
        for g in genomes:
            k = self.space.key(g)
            if k not in self.cache and k not in seen:
                seen.add(k)
                todo.append((k, g))
        outcomes: list[tuple[bool, Any, float]]
        if self.executor is None:
            outcomes = [_call_fitness(self.fitness, g) for _, g in todo]
        else:
            futures = []
            for _, g in todo:
                try:
                    futures.append(self.executor.submit(_call_fitness, self.fitness, g))
                except Exception as e:  # e.g. the fitness cannot be pickled
                    raise OnnxoptError(f"cannot submit the fitness function to the executor: {e}") from e
            outcomes = []
            for fut in futures:
                try:
                    outcomes.append(fut.result())
                except Exception as e:  # worker died, result not picklable, ...
                    outcomes.append((False, f"{type(e).__name__}: {e}", 0.0))
        failed = 0
        for (k, g), (ok, payload, secs) in zip(todo, outcomes):
            metrics, error = (_normalize_metrics(payload, self.config) if ok else (None, str(payload)))
            rec = Record(len(self.records), generation, k, dict(g), metrics, error, float(secs))
            if not rec.ok:
                failed += 1
                log.warning("candidate %d failed: %s", rec.index, rec.error)
            self.cache[k] = rec
            self.records.append(rec)
            if self.on_record is not None:
                self.on_record(rec)
        return len(todo), failed

    # -- operators
    def tournament(self, pop: Sequence[Record], position: Mapping[str, int]) -> Record:
        """The best of `tournament` random population members."""
        size = min(self.config.tournament, len(pop))
        idx = self.rng.choice(len(pop), size=size, replace=False)
        return min((pop[int(i)] for i in idx), key=lambda r: position[r.key])

    def crossover(self, a: Genome, b: Genome) -> Genome:
        """Uniform crossover: each gene from either parent with probability 1/2."""
        pick = self.rng.random(len(self.space.genes)) < 0.5
        return {g.name: (a[g.name] if p else b[g.name]) for g, p in zip(self.space.genes, pick)}

    def mutate(self, genome: Genome) -> Genome:
        """Mutate each active gene with probability `rate`; at least one gene changes."""
        child = dict(genome)
        active = self.space.active(child)
        names = [g for g in self.space.genes if active[g.name]]
        flips = self.rng.random(len(names)) < self.rate
        if not flips.any():
            flips[int(self.rng.integers(0, len(names)))] = True
        for gene, flip in zip(names, flips):
            if flip:
                child[gene.name] = gene.mutate(child[gene.name], self.rng)  # type: ignore[arg-type]
        return child

    def make_child(self, pop: Sequence[Record], position: Mapping[str, int], taken: set[str]) -> Genome:
        """A valid child, novel when possible (not in the population being built nor the cache)."""
        fallback: Genome | None = None
        for _ in range(self.config.novelty_tries):
            p1 = self.tournament(pop, position)
            p2 = self.tournament(pop, position)
            if self.rng.random() < self.config.crossover_rate:
                child = self.crossover(p1.genome, p2.genome)
            else:
                child = dict(p1.genome)
            child = self.mutate(child)
            repaired = self.space.repair(child, self.rng)
            if repaired is None:
                continue
            k = self.space.key(repaired)
            if k not in taken and k not in self.cache:
                return repaired
            if fallback is None or k not in taken:
                fallback = repaired
        if fallback is not None:
            return fallback
        return dict(pop[0].genome)

    def initial(self) -> list[Genome]:
        """Generation 0: distinct valid random genomes (fewer when the space is small)."""
        out: list[Genome] = []
        keys: set[str] = set()
        for _ in range(self.config.population * 50):
            if len(out) >= self.config.population:
                break
            g = self.space.sample_valid(self.rng)
            if g is None:
                break
            k = self.space.key(g)
            if k not in keys:
                keys.add(k)
                out.append(g)
        if not out:
            self.space.check_feasible(self.config.seed)
            raise InvalidInputError("could not draw any genome satisfying the constraints; relax them")
        if len(out) < self.config.population:
            log.warning("only %d distinct valid genomes found for a population of %d", len(out), self.config.population)
        return out

    # -- statistics
    def stats(self, generation: int, evaluated: int, reused: int, failed: int, seconds: float) -> GenerationStats:
        """Summary of the current population and the best record so far."""
        pop = [self.cache[k] for k in self.population]
        primary = self.config.objectives[0].name
        vals = [r.value(primary) for r in pop if r.ok]
        best = min(self.records, key=lambda r: single_key(r, self.config)) if self.records else None
        feasible = sum(1 for r in pop if r.ok and violation(r, self.config.limits) == 0)
        return GenerationStats(
            generation=generation,
            evaluated=evaluated,
            reused=reused,
            failed=failed,
            feasible=feasible,
            best=best.value(primary) if best is not None and best.ok else None,
            median=float(np.median(vals)) if vals else None,
            pareto_size=len(pareto_front(self.records, self.config)),
            seconds=seconds,
        )

    def result(self) -> SearchResult:
        """The SearchResult for the state so far."""
        best = min(self.records, key=lambda r: single_key(r, self.config)) if self.records else None
        if best is not None and not best.ok:
            best = None
        feasible = best is not None and violation(best, self.config.limits) == 0
        if self.config.pareto:
            front = tuple(pareto_front(self.records, self.config))
            if front:
                best = front[0]
        else:
            front = (best,) if best is not None else ()
        pop = tuple(rank_records([self.cache[k] for k in self.population], self.config))
        return SearchResult(best, feasible, front, pop, tuple(self.records), tuple(self.history), self.config)

    # -- checkpoints
    def save(self, path: Path) -> None:
        """Write the state atomically as JSON."""
        state = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "space": self.space.fingerprint(),
            "config": self.config.fingerprint(),
            "generation": self.generation,
            "rng": self.rng.bit_generator.state,
            "population": self.population,
            "records": [r.to_dict() for r in self.records],
            "history": [h.to_dict() for h in self.history],
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(state, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def load(self, path: Path) -> None:
        """Restore the state from a checkpoint written by save()."""
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise InvalidInputError(f"{path}: not a readable search checkpoint: {e}") from e
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise InvalidInputError(f"{path}: not an onnxopt search checkpoint")
        if state.get("version") != CHECKPOINT_VERSION:
            raise InvalidInputError(f"{path}: checkpoint version {state.get('version')} is not supported")
        if state["space"] != self.space.fingerprint():
            raise InvalidInputError(
                f"{path}: the checkpoint was made with a different search space; "
                "use the same space or start over without --resume"
            )
        if state["config"] != self.config.fingerprint():
            diff = sorted(k for k in state["config"] if state["config"][k] != self.config.fingerprint().get(k))
            raise InvalidInputError(
                f"{path}: the checkpoint was made with different settings ({', '.join(diff)}); "
                "use the same settings (only --generations may change) or start over without --resume"
            )
        self.generation = int(state["generation"])
        self.rng.bit_generator.state = state["rng"]
        self.records = [Record.from_dict(d) for d in state["records"]]
        self.cache = {r.key: r for r in self.records}
        self.population = list(state["population"])
        self.history = [GenerationStats(**h) for h in state["history"]]
        missing = [k for k in self.population if k not in self.cache]
        if missing:
            raise InvalidInputError(f"{path}: checkpoint is inconsistent (population not in records)")


def _executor_for(executor: Executor | None, workers: int) -> tuple[Executor | None, bool]:
    """The executor to use and whether this call owns (must shut down) it."""
    if executor is not None:
        return executor, False
    if workers < 1:
        raise InvalidInputError(f"workers must be >= 1, got {workers}")
    if workers == 1:
        return None, False
    # spawn: forking a process that holds torch / onnxruntime thread pools can deadlock.
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")), True


def search(
    space: SearchSpace,
    fitness: Fitness,
    config: SearchConfig = SearchConfig(),
    *,
    executor: Executor | None = None,
    workers: int = 1,
    checkpoint: str | os.PathLike[str] | None = None,
    resume: bool = False,
    on_record: Callable[[Record], None] | None = None,
    progress: Callable[[GenerationStats], None] | None = None,
    max_seconds: float | None = None,
) -> SearchResult:
    """Run the genetic search and return the best record (or the Pareto front).

    fitness(genome) returns a number (the first objective) or a dict of metrics that includes
    every objective and every limited metric. It must be picklable (a module-level function or
    an instance of a module-level class) when evaluations run in other processes. executor: any
    concurrent.futures.Executor, e.g. ``distributed.Client(...).get_executor()``; when None,
    ``workers`` > 1 starts a local process pool. checkpoint: JSON file written after each
    generation; with resume=True an existing checkpoint is continued (generations may be raised).
    max_seconds: stop after the generation during which this wall-clock budget ran out (the
    checkpoint lets the search be resumed later).
    """
    if max_seconds is not None and not max_seconds > 0:
        raise InvalidInputError(f"the time budget must be > 0 seconds, got {max_seconds}")
    t0 = time.perf_counter()
    space.check_feasible(config.seed)
    engine = _Engine(space, fitness, config, None, on_record)
    ckpt = Path(checkpoint) if checkpoint is not None else None
    if resume and ckpt is not None and ckpt.exists():
        engine.load(ckpt)
        log.info("resumed %s at generation %d (%d evaluations)", ckpt, engine.generation, len(engine.records))
    elif resume:
        log.warning("no checkpoint to resume%s; starting a new search", f" at {ckpt}" if ckpt else "")
    if engine.generation >= config.generations:
        return engine.result()
    pool, owned = _executor_for(executor, workers)
    engine.executor = pool
    try:
        while engine.generation < config.generations:
            start = time.perf_counter()
            gen = engine.generation
            if gen == 0:
                children = engine.initial()
                evaluated, failed = engine.evaluate(children, gen)
                engine.population = list(dict.fromkeys(space.key(c) for c in children))
                reused = 0
            else:
                pop = [engine.cache[k] for k in engine.population]
                ranked = rank_records(pop, config)
                position = {r.key: i for i, r in enumerate(ranked)}
                if config.pareto:
                    taken = set(engine.population)
                    children = []
                    for _ in range(config.population):
                        c = engine.make_child(ranked, position, taken)
                        taken.add(space.key(c))
                        children.append(c)
                else:
                    elites = [r.key for r in ranked[: config.elite]]
                    taken = set(elites)
                    children = []
                    for _ in range(config.population - len(elites)):
                        c = engine.make_child(ranked, position, taken)
                        taken.add(space.key(c))
                        children.append(c)
                child_keys = [space.key(c) for c in children]
                reused = sum(1 for k in dict.fromkeys(child_keys) if k in engine.cache)
                evaluated, failed = engine.evaluate(children, gen)
                if config.pareto:
                    union = list(dict.fromkeys(engine.population + child_keys))
                    ranked_all = rank_records([engine.cache[k] for k in union], config)
                    engine.population = [r.key for r in ranked_all[: config.population]]
                else:
                    engine.population = elites + child_keys
            engine.generation = gen + 1
            stats = engine.stats(gen, evaluated, reused, failed, time.perf_counter() - start)
            engine.history.append(stats)
            if ckpt is not None:
                engine.save(ckpt)
            log.info(
                "generation %d: %d evaluated, best %s, median %s, front %d",
                gen, evaluated, stats.best, stats.median, stats.pareto_size,
            )
            if progress is not None:
                progress(stats)
            if max_seconds is not None and time.perf_counter() - t0 >= max_seconds:
                if engine.generation < config.generations:
                    log.warning("time budget of %.0f s used after %d generations; stopping",
                                max_seconds, engine.generation)
                break
    finally:
        if owned and pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    return engine.result()


def random_search(
    space: SearchSpace,
    fitness: Fitness,
    evaluations: int,
    config: SearchConfig = SearchConfig(),
    *,
    executor: Executor | None = None,
    workers: int = 1,
    on_record: Callable[[Record], None] | None = None,
    progress: Callable[[GenerationStats], None] | None = None,
) -> SearchResult:
    """Baseline: evaluate `evaluations` distinct valid random genomes (batches of the population size)."""
    if evaluations < 1:
        raise InvalidInputError(f"evaluations must be >= 1, got {evaluations}")
    space.check_feasible(config.seed)
    engine = _Engine(space, fitness, config, None, on_record)
    pool, owned = _executor_for(executor, workers)
    engine.executor = pool
    try:
        gen = 0
        stale = 0
        while len(engine.records) < evaluations and stale < 50:
            start = time.perf_counter()
            batch: list[Genome] = []
            keys: set[str] = set()
            want = min(config.population, evaluations - len(engine.records))
            for _ in range(want * 50):
                if len(batch) >= want:
                    break
                g = space.sample_valid(engine.rng)
                if g is None:
                    break
                k = space.key(g)
                if k not in keys and k not in engine.cache:
                    keys.add(k)
                    batch.append(g)
            stale = stale + 1 if not batch else 0
            evaluated, failed = engine.evaluate(batch, gen)
            engine.population = [r.key for r in rank_records(engine.records, config)[: config.population]]
            stats = engine.stats(gen, evaluated, 0, failed, time.perf_counter() - start)
            engine.history.append(stats)
            if progress is not None:
                progress(stats)
            gen += 1
    finally:
        if owned and pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    return engine.result()
