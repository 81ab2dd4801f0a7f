"""Genetic-algorithm search engine: framework-agnostic, fitness is a callable, executor pluggable.

Genomes come from a :class:`~onnxopt.nas.space.SearchSpace`. Each generation keeps the
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
The ranking lives in :mod:`onnxopt.nas.ranking`, the data types in :mod:`onnxopt.nas.types`.

Evaluations go through any ``concurrent.futures.Executor`` (:mod:`onnxopt.nas.dispatch`): none
(inline), a local process pool (``workers=N``), or a cluster executor such as Dask's
``distributed.Client(...).get_executor()``. A fitness call that raises marks that candidate
failed with the reason; the search goes on. The state (population, every evaluation, numpy
Generator state) is checkpointed to JSON after each generation, so a resumed search gives the
same result as an uninterrupted one.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import Executor
from pathlib import Path

import numpy as np

from onnxopt.core.errors import InvalidInputError
from onnxopt.nas.checkpoint import read_checkpoint, write_checkpoint
from onnxopt.nas.dispatch import Fitness, evaluation_pool, normalize_metrics, run_fitness
from onnxopt.nas.ranking import pareto_front, rank_records, single_key, violation
from onnxopt.nas.space import Genome, SearchSpace
from onnxopt.nas.types import GenerationStats, Objective, Record, SearchConfig, SearchResult

# The data types are re-exported: `from onnxopt.nas.engine import Objective, SearchConfig, search`
# is the documented import (README, examples).
__all__ = [
    "Fitness", "GenerationStats", "Objective", "Record", "SearchConfig", "SearchResult",
    "random_search", "search",
]

log = logging.getLogger(__name__)

DEFAULT_CONFIG = SearchConfig()  # frozen: safe as a shared default argument


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
        outcomes = run_fitness(self.fitness, [g for _, g in todo], self.executor)
        failed = 0
        for (k, g), (ok, payload, secs) in zip(todo, outcomes):
            metrics, error = (normalize_metrics(payload, self.config) if ok else (None, str(payload)))
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

    def draw(self, want: int, exclude: Collection[str] = ()) -> list[Genome]:
        """Up to `want` distinct valid random genomes whose keys are not in exclude."""
        out: list[Genome] = []
        keys: set[str] = set()
        for _ in range(want * 50):
            if len(out) >= want:
                break
            g = self.space.sample_valid(self.rng)
            if g is None:
                break
            k = self.space.key(g)
            if k not in keys and k not in exclude:
                keys.add(k)
                out.append(g)
        return out

    def initial(self) -> list[Genome]:
        """Generation 0: distinct valid random genomes (fewer when the space is small)."""
        out = self.draw(self.config.population)
        if not out:
            self.space.check_feasible(self.config.seed)
            raise InvalidInputError("could not draw any genome satisfying the constraints; relax them")
        if len(out) < self.config.population:
            log.warning("only %d distinct valid genomes found for a population of %d", len(out), self.config.population)
        return out

    # -- generations
    def first_generation(self) -> tuple[int, int, int]:
        """Evaluate the random generation 0; returns (evaluated, reused, failed)."""
        children = self.initial()
        evaluated, failed = self.evaluate(children, 0)
        self.population = list(dict.fromkeys(self.space.key(c) for c in children))
        return evaluated, 0, failed

    def next_generation(self, generation: int) -> tuple[int, int, int]:
        """Breed, evaluate and select one generation; returns (evaluated, reused, failed).

        Pareto: parents and children compete for survival (NSGA-II); otherwise the elite
        survive unchanged and children fill the rest of the population.
        """
        cfg = self.config
        ranked = rank_records([self.cache[k] for k in self.population], cfg)
        elites = [] if cfg.pareto else [r.key for r in ranked[: cfg.elite]]
        taken = set(self.population) if cfg.pareto else set(elites)
        children = self.breed(ranked, taken, cfg.population - len(elites))
        child_keys = [self.space.key(c) for c in children]
        reused = sum(1 for k in dict.fromkeys(child_keys) if k in self.cache)
        evaluated, failed = self.evaluate(children, generation)
        if cfg.pareto:
            union = list(dict.fromkeys(self.population + child_keys))
            ranked_all = rank_records([self.cache[k] for k in union], cfg)
            self.population = [r.key for r in ranked_all[: cfg.population]]
        else:
            self.population = elites + child_keys
        return evaluated, reused, failed

    def breed(self, ranked: Sequence[Record], taken: set[str], count: int) -> list[Genome]:
        """`count` children of the ranked population, each added to `taken` (kept novel)."""
        position = {r.key: i for i, r in enumerate(ranked)}
        children = []
        for _ in range(count):
            c = self.make_child(ranked, position, taken)
            taken.add(self.space.key(c))
            children.append(c)
        return children

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
        write_checkpoint(path, {
            "space": self.space.fingerprint(),
            "config": self.config.fingerprint(),
            "generation": self.generation,
            "rng": self.rng.bit_generator.state,
            "population": self.population,
            "records": [r.to_dict() for r in self.records],
            "history": [h.to_dict() for h in self.history],
        })

    def load(self, path: Path) -> None:
        """Restore the state from a checkpoint written by save()."""
        state = read_checkpoint(path, self.space.fingerprint(), self.config.fingerprint())
        self.generation = int(state["generation"])
        self.rng.bit_generator.state = state["rng"]
        self.records = [Record.from_dict(d) for d in state["records"]]
        self.cache = {r.key: r for r in self.records}
        self.population = list(state["population"])
        self.history = [GenerationStats(**h) for h in state["history"]]
        missing = [k for k in self.population if k not in self.cache]
        if missing:
            raise InvalidInputError(f"{path}: checkpoint is inconsistent (population not in records)")


def search(
    space: SearchSpace,
    fitness: Fitness,
    config: SearchConfig = DEFAULT_CONFIG,
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
    if resume:
        _resume(engine, ckpt)
    if engine.generation >= config.generations:
        return engine.result()
    with evaluation_pool(executor, workers) as pool:
        engine.executor = pool
        while engine.generation < config.generations:
            start = time.perf_counter()
            gen = engine.generation
            evaluated, reused, failed = engine.first_generation() if gen == 0 else engine.next_generation(gen)
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
    return engine.result()


def _resume(engine: _Engine, ckpt: Path | None) -> None:
    """Load the checkpoint when there is one (a missing one starts a new search)."""
    if ckpt is not None and ckpt.exists():
        engine.load(ckpt)
        log.info("resumed %s at generation %d (%d evaluations)", ckpt, engine.generation, len(engine.records))
    else:
        log.warning("no checkpoint to resume%s; starting a new search", f" at {ckpt}" if ckpt else "")


def random_search(
    space: SearchSpace,
    fitness: Fitness,
    evaluations: int,
    config: SearchConfig = DEFAULT_CONFIG,
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
    with evaluation_pool(executor, workers) as pool:
        engine.executor = pool
        gen = 0
        stale = 0
        while len(engine.records) < evaluations and stale < 50:
            start = time.perf_counter()
            batch = engine.draw(min(config.population, evaluations - len(engine.records)), engine.cache)
            stale = stale + 1 if not batch else 0
            evaluated, failed = engine.evaluate(batch, gen)
            engine.population = [r.key for r in rank_records(engine.records, config)[: config.population]]
            stats = engine.stats(gen, evaluated, 0, failed, time.perf_counter() - start)
            engine.history.append(stats)
            if progress is not None:
                progress(stats)
            gen += 1
    return engine.result()
