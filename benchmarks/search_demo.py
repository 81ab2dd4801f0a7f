"""`make search-demo`: GA vs random search on the same budget, and a ~10 minute digits search vs a baseline.

Part 1 (ga-vs-random): the space is examples/search_space.toml plus a constraint predicate
params <= 5,000 (counted without training; genomes over it are repaired or rejected before
evaluation, by both methods); the fitness is a cheap proxy -- validation accuracy after 4 epochs
of training (PyTorch, seeded, deterministic), ties broken by fewer parameters. The GA (population
10, 9 generations, elite 2, tournament 2) and random search get the same number of evaluations;
the best feasible accuracy is averaged over 3 seeds.
Identical genomes give identical proxy fitness, so results are memoized across runs.

Part 2 (digits): a Pareto search (accuracy vs onnxruntime p50 latency, 1 thread) with the full
evaluator (15 epochs per candidate) and a wall-clock budget (default 10 minutes). The baseline
is the hand-written CNN of the same family, models/digits_cnn.py (depth 3, widths 16/32/64, 3x3
kernels, hidden 128), trained with the same 15-epoch recipe by the same evaluator. The front and
the baseline are re-measured together (interleaved) at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from onnxopt.nas.engine import Objective, SearchConfig, random_search, search  # noqa: E402
from onnxopt.nas.evaluate import EvalConfig, TorchEvaluator, load_split, remeasure  # noqa: E402
from onnxopt.nas.space import SearchSpace, describe_genome, load_space  # noqa: E402

SPACE = ROOT / "examples" / "search_space.toml"
TRAIN, VAL = ROOT / "models" / "digits_train.npz", ROOT / "models" / "digits_val.npz"
BUILD = ROOT / "build" / "search_demo"
PARAM_LIMIT = 5000


class ParamLimit:
    """Constraint predicate: the candidate has at most `limit` parameters (counted without torch)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def __call__(self, genome: dict[str, Any]) -> bool:
        from onnxopt.frameworks.torch_genome import count_params

        return count_params(genome, (1, 8, 8), 10) <= self.limit


class ProxyFitness:
    """Accuracy (%) after a short torch training run, plus the parameter count; memoized by genome."""

    def __init__(self, space: SearchSpace, epochs: int = 4) -> None:
        self.space = space
        self.evaluator = TorchEvaluator(load_split(TRAIN), load_split(VAL), EvalConfig(epochs=epochs))
        self.memo: dict[str, dict[str, float]] = {}
        self.trained = 0

    def __call__(self, genome: dict[str, Any]) -> dict[str, float]:
        key = self.space.key(genome)
        if key not in self.memo:
            from onnxopt.frameworks.torch_distill import predict
            from onnxopt.frameworks.torch_genome import param_count

            module = self.evaluator.train_module(genome)
            x, y = self.evaluator.val
            acc = float((predict(module, x).argmax(1) == y).mean() * 100)
            self.memo[key] = {"accuracy": acc, "params": float(param_count(module))}
            self.trained += 1
        return dict(self.memo[key])


def ga_vs_random(seeds: list[int], population: int, generations: int) -> dict[str, Any]:
    """Best feasible proxy accuracy of GA and random search with the same evaluation count."""
    space = replace(load_space(SPACE), predicate=ParamLimit(PARAM_LIMIT))
    fitness = ProxyFitness(space)
    rows = []
    start = time.perf_counter()
    for seed in seeds:
        cfg = SearchConfig(
            population=population, generations=generations, elite=2, tournament=2, seed=seed,
            objectives=(Objective("accuracy"), Objective("params", maximize=False)),
        )
        ga = search(space, fitness, cfg)
        rs = random_search(space, fitness, ga.evaluations, cfg)
        row = {
            "seed": seed, "evaluations": ga.evaluations,
            "ga_best": ga.best.value("accuracy") if ga.best else None,
            "random_best": rs.best.value("accuracy") if rs.best else None,
            "ga_genome": describe_genome(space.canonical(ga.best.genome)) if ga.best else None,
            "random_genome": describe_genome(space.canonical(rs.best.genome)) if rs.best else None,
            "ga_params": ga.best.value("params") if ga.best else None,
            "random_params": rs.best.value("params") if rs.best else None,
        }
        rows.append(row)
        print(f"seed {seed}: {row['evaluations']} evaluations each; best feasible accuracy "
              f"GA {row['ga_best']:.2f}%  random {row['random_best']:.2f}%", flush=True)
    ga_mean = float(np.mean([r["ga_best"] or 0.0 for r in rows]))
    rs_mean = float(np.mean([r["random_best"] or 0.0 for r in rows]))
    print(f"mean over {len(seeds)} seeds: GA {ga_mean:.2f}%  random {rs_mean:.2f}%  "
          f"({'GA better' if ga_mean > rs_mean else 'GA NOT better'}); "
          f"{fitness.trained} distinct genomes trained in {time.perf_counter() - start:.0f} s", flush=True)
    return {"fitness": f"val accuracy after 4 epochs, constraint params <= {PARAM_LIMIT}", "runs": rows,
            "ga_mean": ga_mean, "random_mean": rs_mean, "population": population, "generations": generations}


def digits_search(minutes: float, population: int, workers: int, seed: int) -> dict[str, Any]:
    """Pareto search on digits under a wall-clock budget; front vs the hand-written baseline."""
    from onnxopt.frameworks.torch_genome import DIGITS_BASELINE

    space = load_space(SPACE)
    eval_cfg = EvalConfig.from_settings(space.settings.get("train", {}), seed=seed)
    models = BUILD / "models"
    evaluator = TorchEvaluator(load_split(TRAIN), load_split(VAL), eval_cfg, workdir=models)
    start = time.perf_counter()
    base = evaluator(DIGITS_BASELINE)
    print(f"baseline (models/digits_cnn.py, {eval_cfg.epochs} epochs): {base['accuracy']:.2f}% "
          f"p50 {base['latency_ms']:.4f} ms, {int(base['params']):,} params", flush=True)
    cfg = SearchConfig(
        population=population, generations=100, elite=2, seed=seed, pareto=True,
        objectives=(Objective("accuracy"), Objective("latency_ms", maximize=False)),
    )

    def progress(s: Any) -> None:
        print(f"  generation {s.generation}: {s.evaluated} evaluated, best {s.best:.2f}%, "
              f"median {s.median:.2f}%, front {s.pareto_size} ({s.seconds:.0f} s)", flush=True)

    budget = minutes * 60 - (time.perf_counter() - start)
    res = search(space, evaluator, cfg, workers=workers, progress=progress, max_seconds=max(budget, 1.0),
                 checkpoint=BUILD / "checkpoint.json")
    elapsed = time.perf_counter() - start
    front = list(res.front)
    paths = {f"front{i}": r.metrics["model_path"] for i, r in enumerate(front)}  # type: ignore[index]
    paths["baseline"] = base["model_path"]
    lat = remeasure(paths, latency_threads=eval_cfg.latency_threads, runs=500, reference="baseline")
    rows = []
    print(f"\n{res.evaluations} candidates in {elapsed / 60:.1f} min (plus training the baseline); Pareto front "
          "re-measured together with the baseline (p50, 1 thread, interleaved):")
    print(f"  {'model':9} {'accuracy':>9} {'p50 ms':>8} {'speedup [95% CI]':>22} {'params':>7}  genome")
    print(f"  {'baseline':9} {base['accuracy']:8.2f}% {lat['baseline']['p50_ms']:8.4f} {'1.00x':>22} "
          f"{int(base['params']):7d}  models/digits_cnn.py")
    wins = []
    for i, r in enumerate(front):
        m, lt = r.metrics or {}, lat[f"front{i}"]
        ci = f"{lt['speedup']:.2f}x [{lt['ci_low']:.2f}, {lt['ci_high']:.2f}]"
        g = describe_genome(space.canonical(r.genome), space.names)
        print(f"  front{i:<4} {m['accuracy']:8.2f}% {lt['p50_ms']:8.4f} {ci:>22} {int(m['params']):7d}  {g}")
        row = {"accuracy": m["accuracy"], "params": m["params"], "genome": space.canonical(r.genome), **lt}
        rows.append(row)
        if m["accuracy"] >= base["accuracy"] and lt["significant"] and lt["speedup"] > 1:
            wins.append(row)
    if wins:
        w = max(wins, key=lambda r: r["speedup"])
        print(f"TARGET MET: a model at least as accurate as the baseline ({w['accuracy']:.2f}% vs "
              f"{base['accuracy']:.2f}%) and {w['speedup']:.2f}x as fast in onnxruntime.")
    else:
        print("Target not met in this budget: no front member is both at least as accurate and "
              "significantly faster; the front above shows the trade-off.")
    try:
        from onnxopt.nas.plot import plot_front

        plot_front(res.records, front, BUILD / "front.png",
                   baseline={"accuracy": base["accuracy"], "latency_ms": base["latency_ms"]})
        print(f"plot: {BUILD / 'front.png'}")
    except Exception as e:  # the plot is optional (report extra)
        print(f"(no plot: {e})")
    return {"baseline": base | {"remeasured": lat["baseline"]}, "front": rows, "evaluations": res.evaluations,
            "minutes": elapsed / 60, "target_met": bool(wins), "epochs": eval_cfg.epochs}


def main() -> None:
    """Run the parts asked for and save build/search_demo/results.json."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["ga-vs-random", "digits", "all"], default="all")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of part 1")
    ap.add_argument("--ga-population", type=int, default=10)
    ap.add_argument("--ga-generations", type=int, default=9)
    ap.add_argument("--minutes", type=float, default=10.0, help="budget of the digits search")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--population", type=int, default=10)
    args = ap.parse_args()
    BUILD.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {}
    if args.part in ("ga-vs-random", "all"):
        print("== GA vs random search (same number of evaluations, proxy fitness) ==", flush=True)
        out["ga_vs_random"] = ga_vs_random(args.seeds, args.ga_population, args.ga_generations)
    if args.part in ("digits", "all"):
        print(f"\n== digits: Pareto search, {args.minutes:g} minute budget ==", flush=True)
        ck = BUILD / "checkpoint.json"
        ck.unlink(missing_ok=True)
        out["digits"] = digits_search(args.minutes, args.population, args.workers, seed=0)
    name = "results.json" if args.part == "all" else f"results_{args.part}.json"
    if args.part == "ga-vs-random" and args.seeds != [0, 1, 2]:
        name = f"results_{args.part}_{'_'.join(map(str, args.seeds))}_p{args.ga_population}g{args.ga_generations}.json"
    (BUILD / name).write_text(json.dumps(out, indent=2, default=str) + "\n")
    print(f"\nresults: {BUILD / name}")


if __name__ == "__main__":
    main()
