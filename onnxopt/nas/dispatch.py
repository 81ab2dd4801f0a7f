"""Dispatch fitness calls: inline, in a local process pool, or on any concurrent.futures.Executor.

A fitness call that raises (or whose worker dies) gives a failed outcome with the reason
instead of stopping the search; its result is checked into a metrics dict for a Record.
"""

from __future__ import annotations

import contextlib
import json
import math
import multiprocessing
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from onnxopt.core.errors import InvalidInputError, OnnxoptError
from onnxopt.nas.space import Genome
from onnxopt.nas.types import SearchConfig

Fitness = Callable[[Genome], Any]  # returns a float or a mapping of metric name -> value
Outcome = tuple[bool, Any, float]  # (ok, the fitness result or the error text, seconds)


def call_fitness(fitness: Fitness, genome: Genome) -> Outcome:
    """Run a fitness call, catching its exception (runs in the worker; returns plain data)."""
    start = time.perf_counter()
    try:
        return True, fitness(dict(genome)), time.perf_counter() - start
    except Exception as e:
        tb = traceback.extract_tb(e.__traceback__)
        where = f" (at {Path(tb[-1].filename).name}:{tb[-1].lineno})" if tb else ""
        return False, f"{type(e).__name__}: {e}{where}", time.perf_counter() - start


def normalize_metrics(raw: Any, config: SearchConfig) -> tuple[dict[str, Any] | None, str | None]:
    """(metrics, None) from a fitness result checked against the objectives and limits, or (None, why)."""
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


def run_fitness(fitness: Fitness, genomes: Sequence[Genome], executor: Executor | None) -> list[Outcome]:
    """The outcome of fitness on each genome, in order: inline when executor is None."""
    if executor is None:
        return [call_fitness(fitness, g) for g in genomes]
    futures = []
    for g in genomes:
        try:
            futures.append(executor.submit(call_fitness, fitness, g))
        except Exception as e:  # e.g. the fitness cannot be pickled
            raise OnnxoptError(f"cannot submit the fitness function to the executor: {e}") from e
    outcomes: list[Outcome] = []
    for fut in futures:
        try:
            outcomes.append(fut.result())
        except Exception as e:  # worker died, result not picklable, ...
            outcomes.append((False, f"{type(e).__name__}: {e}", 0.0))
    return outcomes


@contextlib.contextmanager
def evaluation_pool(executor: Executor | None, workers: int) -> Iterator[Executor | None]:
    """The executor to use (None: inline); a local pool started here is shut down on exit.

    An executor passed in belongs to the caller and is left running.
    """
    if executor is not None:
        yield executor
        return
    if workers < 1:
        raise InvalidInputError(f"workers must be >= 1, got {workers}")
    if workers == 1:
        yield None
        return
    # spawn: forking a process that holds torch / onnxruntime thread pools can deadlock.
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
