"""Tests of the GA engine with synthetic fitness functions (no framework, fast)."""

from __future__ import annotations

import json
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onnxopt.core.errors import InvalidInputError
from onnxopt.nas.engine import (
    Objective,
    Record,
    SearchConfig,
    random_search,
    search,
)
from onnxopt.nas.ranking import crowding_distance, nondominated_fronts
from onnxopt.nas.space import ChoiceGene, FloatGene, IntGene, SearchSpace

TARGET = {"a": 13, "b": 4, "c": 17, "d": 8, "op": "mul"}


def make_space() -> SearchSpace:
    return SearchSpace(
        (
            IntGene("a", 0, 20),
            IntGene("b", 0, 20),
            IntGene("c", 0, 40, step=2),
            IntGene("d", 0, 20),
            ChoiceGene("op", ("add", "mul", "max", "min")),
        )
    )


def sphere(genome: dict[str, Any]) -> float:
    """Known optimum at TARGET (fitness 0); c can only be even so its best is 16 or 18."""
    err = sum((genome[k] - TARGET[k]) ** 2 for k in "abcd")
    return -float(err) - (0.0 if genome["op"] == "mul" else 5.0)


def optimum_value() -> float:
    return -1.0  # c = 16 or 18 gives (c - 17)^2 = 1


def test_known_optimum_found() -> None:
    res = search(make_space(), sphere, SearchConfig(population=20, generations=30, seed=1))
    assert res.best is not None
    assert res.best.value("fitness") == optimum_value()
    assert res.best.genome["op"] == "mul"
    # the space holds 21^3 * 21 * 4 ~ 780k genomes: far fewer evaluations than exhaustive
    assert res.evaluations <= 20 * 30


def test_ga_beats_random_search_same_budget() -> None:
    ga, rs = [], []
    for seed in range(3):
        cfg = SearchConfig(population=16, generations=15, seed=seed)
        g = search(make_space(), sphere, cfg)
        r = random_search(make_space(), sphere, g.evaluations, cfg)
        assert r.evaluations == g.evaluations
        ga.append(g.best.value("fitness"))  # type: ignore[union-attr]
        rs.append(r.best.value("fitness"))  # type: ignore[union-attr]
    assert np.mean(ga) > np.mean(rs)


def test_elitism_keeps_best() -> None:
    # heavy mutation makes children worse than their parents; only elitism keeps the best
    for gens in range(1, 9):
        cfg = SearchConfig(population=6, generations=gens, elite=1, seed=3, mutation_rate=1.0)
        res = search(make_space(), sphere, cfg)
        best_so_far = max(r.value("fitness") for r in res.records)
        assert res.population[0].value("fitness") == best_so_far
        assert res.best is not None and res.best.value("fitness") == best_so_far


def test_duplicates_not_reevaluated() -> None:
    calls: list[str] = []
    space = SearchSpace((IntGene("x", 0, 3), ChoiceGene("y", ("p", "q"))))

    def f(g: dict[str, Any]) -> float:
        calls.append(json.dumps(g, sort_keys=True))
        return float(g["x"])

    res = search(space, f, SearchConfig(population=4, generations=10, elite=1, seed=0))
    assert len(calls) == len(set(calls)) <= 8
    assert res.best is not None and res.best.genome["x"] == 3


def test_conditional_genes_share_cache_key() -> None:
    space = SearchSpace((IntGene("depth", 1, 2), IntGene("w2", 8, 16, step=8, when="depth >= 2")))
    assert space.key({"depth": 1, "w2": 8}) == space.key({"depth": 1, "w2": 16})
    assert space.key({"depth": 2, "w2": 8}) != space.key({"depth": 2, "w2": 16})
    calls: list[int] = []

    def f(g: dict[str, Any]) -> float:
        calls.append(1)
        return float(g["depth"])

    search(space, f, SearchConfig(population=3, generations=6, elite=1))
    assert len(calls) <= 3  # only 3 distinct phenotypes exist


def test_resume_equals_uninterrupted(tmp_path: Path) -> None:
    cfg6 = SearchConfig(population=10, generations=6, seed=7)
    full = search(make_space(), sphere, cfg6, checkpoint=tmp_path / "full.json")
    ck = tmp_path / "part.json"
    part = search(make_space(), sphere, SearchConfig(population=10, generations=3, seed=7), checkpoint=ck)
    assert part.evaluations < full.evaluations
    resumed = search(make_space(), sphere, cfg6, checkpoint=ck, resume=True)
    assert [r.to_dict() | {"seconds": 0} for r in resumed.records] == [
        r.to_dict() | {"seconds": 0} for r in full.records
    ]
    assert resumed.best == full.best or (
        resumed.best is not None and full.best is not None and resumed.best.key == full.best.key
    )
    assert [r.key for r in resumed.population] == [r.key for r in full.population]


def test_resume_refuses_other_settings(tmp_path: Path) -> None:
    ck = tmp_path / "c.json"
    search(make_space(), sphere, SearchConfig(population=6, generations=2, seed=1), checkpoint=ck)
    with pytest.raises(InvalidInputError, match="different settings"):
        search(make_space(), sphere, SearchConfig(population=8, generations=3, seed=1), checkpoint=ck, resume=True)
    other = SearchSpace((IntGene("a", 0, 5),))
    with pytest.raises(InvalidInputError, match="different search space"):
        search(other, lambda g: 0.0, SearchConfig(population=6, generations=3, seed=1), checkpoint=ck, resume=True)


def test_failing_candidate_marked_and_search_goes_on() -> None:
    def f(g: dict[str, Any]) -> float:
        if g["a"] % 3 == 0:
            raise RuntimeError(f"cannot build a={g['a']}")
        return sphere(g)

    res = search(make_space(), f, SearchConfig(population=10, generations=5, seed=0))
    failed = [r for r in res.records if not r.ok]
    assert failed, "some candidates should have failed"
    assert all("RuntimeError: cannot build" in (r.error or "") for r in failed)
    assert res.best is not None and res.best.ok and res.best.genome["a"] % 3 != 0
    assert any(h.failed for h in res.history)


def test_bad_fitness_results_are_failures() -> None:
    space = SearchSpace((IntGene("x", 0, 9),))

    def f(g: dict[str, Any]) -> Any:
        return {0: "text", 1: {"other": 1.0}, 2: float("nan")}.get(g["x"] % 4, float(g["x"]))

    res = search(space, f, SearchConfig(population=10, generations=1))
    errors = {r.genome["x"]: r.error for r in res.records if not r.ok}
    assert any("expected a number" in e for e in errors.values() if e)
    assert any("no 'fitness' metric" in e for e in errors.values() if e)
    assert any("finite" in e for e in errors.values() if e)


def test_latency_limit_constraint() -> None:
    space = SearchSpace((IntGene("w", 1, 30),))

    def f(g: dict[str, Any]) -> dict[str, float]:
        return {"accuracy": float(g["w"]), "latency_ms": g["w"] / 10}

    cfg = SearchConfig(
        population=8, generations=8, seed=0, objectives=(Objective("accuracy"),), limits={"latency_ms": 1.5}
    )
    res = search(space, f, cfg)
    assert res.feasible and res.best is not None
    assert res.best.genome["w"] == 15


def test_impossible_budget_reports_closest() -> None:
    space = SearchSpace((IntGene("w", 5, 30),))

    def f(g: dict[str, Any]) -> dict[str, float]:
        return {"accuracy": float(g["w"]), "latency_ms": g["w"] / 10}

    cfg = SearchConfig(
        population=8, generations=6, seed=0, objectives=(Objective("accuracy"),), limits={"latency_ms": 0.1}
    )
    res = search(space, f, cfg)
    assert not res.feasible
    assert res.best is not None and res.best.genome["w"] == 5  # the closest to the budget


def test_pareto_front_is_nondominated_and_complete() -> None:
    space = SearchSpace((IntGene("x", 0, 15), IntGene("y", 0, 15)))

    def f(g: dict[str, Any]) -> dict[str, float]:
        # trade-off: accuracy grows with x, latency grows with x; y is a useless cost
        return {"accuracy": float(g["x"]), "latency_ms": float(g["x"] + g["y"])}

    cfg = SearchConfig(
        population=16, generations=20, seed=0, pareto=True,
        objectives=(Objective("accuracy"), Objective("latency_ms", maximize=False)),
    )
    res = search(space, f, cfg)
    front = res.front
    pts = {(r.value("accuracy"), r.value("latency_ms")) for r in front}
    for a, lat in pts:
        assert not any(a2 >= a and l2 <= lat and (a2, l2) != (a, lat) for a2, l2 in pts)
    # the true front is y == 0 for every x; most of it should be found
    assert all(r.genome["y"] == 0 for r in front)
    assert len(front) >= 12
    assert res.best is not None and res.best.genome == {"x": 15, "y": 0}


def test_nondominated_sort_and_crowding() -> None:
    pts = np.array([[0, 3], [1, 1], [3, 0], [2, 2], [3, 3]], dtype=float)
    fronts = nondominated_fronts(pts)
    assert fronts == [[0, 1, 2], [3], [4]]
    cd = crowding_distance(pts[[0, 1, 2]])
    assert math.isinf(cd[0]) and math.isinf(cd[2]) and cd[1] == pytest.approx(2.0)


def test_executor_threads_same_result() -> None:
    cfg = SearchConfig(population=8, generations=4, seed=5)
    inline = search(make_space(), sphere, cfg)
    with ThreadPoolExecutor(2) as ex:
        threaded = search(make_space(), sphere, cfg, executor=ex)
    assert [r.key for r in inline.records] == [r.key for r in threaded.records]


def test_process_pool_workers() -> None:
    cfg = SearchConfig(population=4, generations=2, seed=0)
    res = search(make_space(), sphere, cfg, workers=2)
    inline = search(make_space(), sphere, cfg)
    assert [r.to_dict() | {"seconds": 0} for r in res.records] == [
        r.to_dict() | {"seconds": 0} for r in inline.records
    ]


def test_dask_local_cluster_executor() -> None:
    distributed = pytest.importorskip("distributed")
    cfg = SearchConfig(population=6, generations=3, seed=2)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        res = search(make_space(), sphere, cfg, executor=client.get_executor())
    inline = search(make_space(), sphere, cfg)
    assert [r.key for r in res.records] == [r.key for r in inline.records]
    assert res.best is not None and inline.best is not None and res.best.key == inline.best.key


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"population": 4, "elite": 4}, "larger than the elite count"),
        ({"population": 1}, "population must be >= 2"),
        ({"generations": 0}, "generations must be >= 1"),
        ({"tournament": 0}, "tournament size must be >= 1"),
        ({"pareto": True}, "at least two objectives"),
        ({"limits": {"latency_ms": -1.0}}, "positive number"),
        ({"crossover_rate": 1.5}, "crossover_rate"),
    ],
)
def test_bad_config(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        SearchConfig(**kwargs)


def test_record_roundtrip() -> None:
    r = Record(3, 1, "k", {"a": 1}, {"fitness": 0.5}, None, 0.1)
    assert Record.from_dict(json.loads(json.dumps(r.to_dict()))) == r


# --- gene operators respect their domains (property-based) ---------------------------------


@settings(max_examples=60, deadline=None)
@given(
    low=st.integers(-50, 50),
    n=st.integers(0, 30),
    step=st.integers(1, 7),
    seed=st.integers(0, 2**32 - 1),
)
def test_int_gene_mutation_in_domain(low: int, n: int, step: int, seed: int) -> None:
    gene = IntGene("g", low, low + n * step, step)
    rng = np.random.default_rng(seed)
    v = gene.sample(rng)
    for _ in range(20):
        new = gene.mutate(v, rng)
        assert gene.contains(new)
        if gene.size > 1:
            assert new != v
        v = new


@settings(max_examples=25, deadline=None)
@given(options=st.lists(st.sampled_from(['a', 'b', 'c', 'dd', 'e', 'ff', 'g']), min_size=1, max_size=6, unique=True), seed=st.integers(0, 2**32 - 1))
def test_choice_gene_mutation_in_domain(options: list[str], seed: int) -> None:
    gene = ChoiceGene("g", tuple(options))
    rng = np.random.default_rng(seed)
    v = gene.sample(rng)
    for _ in range(10):
        new = gene.mutate(v, rng)
        assert gene.contains(new)
        assert len(options) == 1 or new != v
        v = new


@settings(max_examples=40, deadline=None)
@given(
    low=st.floats(1e-3, 10), width=st.floats(1e-3, 100), log=st.booleans(), seed=st.integers(0, 2**32 - 1)
)
def test_float_gene_mutation_in_domain(low: float, width: float, log: bool, seed: int) -> None:
    gene = FloatGene("g", low, low + width, log=log)
    rng = np.random.default_rng(seed)
    v = gene.sample(rng)
    for _ in range(10):
        v = gene.mutate(v, rng)
        assert gene.contains(v)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_children_respect_domains_and_constraints(seed: int) -> None:
    space = SearchSpace(
        (IntGene("w1", 8, 64, 8), IntGene("w2", 8, 64, 8), ChoiceGene("act", ("relu", "gelu"))),
        constraints=("w2 >= w1",),
    )
    seen: list[dict[str, Any]] = []

    def f(g: dict[str, Any]) -> float:
        seen.append(g)
        return float(g["w1"] + g["w2"])

    search(space, f, SearchConfig(population=6, generations=3, seed=seed % 1000))
    assert seen
    for g in seen:
        assert space.is_valid(g), space.violations(g)


def test_time_budget_stops_after_a_generation_and_resumes(tmp_path: Path) -> None:
    cfg = SearchConfig(population=6, generations=5, seed=4)
    ck = tmp_path / "c.json"
    part = search(make_space(), sphere, cfg, checkpoint=ck, max_seconds=1e-9)
    assert len(part.history) == 1 and part.evaluations == 6
    rest = search(make_space(), sphere, cfg, checkpoint=ck, resume=True)
    full = search(make_space(), sphere, cfg)
    assert [r.key for r in rest.records] == [r.key for r in full.records]
    with pytest.raises(InvalidInputError, match="time budget"):
        search(make_space(), sphere, cfg, max_seconds=0)
