"""`make distill-demo`: does distillation pay on digits? Three student sizes x 3 seeds, both frameworks.

1. A 3-conv teacher (749,495 parameters, examples/distill_models.py:torch_teacher3) is trained on
   labels (PyTorch) and exported to ONNX; its logits on the training split are computed once in
   onnxruntime and serve the PyTorch and the Keras students alike.
2. For each framework, student size (about 1/500, 1/50 and 1/10 of the teacher:
   examples/distill_models.py STUDENT_SIZES) and seed, `distill_model` runs with its defaults:
   the labels-only baseline to convergence, T x alpha tuned on the selection split, the
   distilled student to convergence, and the better of the two on the selection split is the
   one handed back ("written").
3. Accuracies are measured in onnxruntime on the held-out test split (digits_val.npz), which
   no choice ever sees. Tuning runs on seed 0 of every (framework, size); seeds 1 and 2 reuse
   its (T, alpha), which keeps the demo near 10 minutes on 2 cores (--tune-every-seed tunes
   every run). Runs go to --jobs worker processes (one thread each).

Prints one table per framework (mean +- sd over the seeds) and writes --json if asked.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT))


@dataclass(frozen=True)
class Task:
    """One distillation run of the demo."""

    framework: str
    size: str
    seed: int
    tuned: tuple[float, float] | None  # None: tune in this run; else use this (T, alpha)


def _splits(holdout: int, seed: int = 0) -> tuple[Any, Any, Any]:
    """(train, selection, test): the selection split (stopping, tuning, choice) is carved from digits_train."""
    from onnxopt.core.feeds import load_labelled_npz

    x, y = load_labelled_npz(ROOT / "models" / "digits_train.npz")
    test = load_labelled_npz(ROOT / "models" / "digits_val.npz")
    idx = np.random.default_rng(seed).permutation(len(x))
    sel, tr = np.sort(idx[:holdout]), np.sort(idx[holdout:])
    return (x[tr], y[tr]), (x[sel], y[sel]), test


def _init_worker() -> None:
    """One thread per worker: the runs are small and the machine has 2 cores."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import torch

    torch.set_num_threads(1)


_SHARED: dict[str, Any] = {}


def _run(task: Task, teacher_bytes: bytes, holdout: int, budget: float) -> dict[str, Any]:
    """Train one (framework, size, seed) and return its numbers."""
    import onnx
    from distill_models import keras_sized_student, torch_sized_student

    from onnxopt.distillation.api import DistillConfig, TuneConfig, distill_model

    t0 = time.perf_counter()
    if "splits" not in _SHARED:
        _SHARED["splits"] = _splits(holdout)
    train, select, test = _SHARED["splits"]
    teacher = onnx.load_from_string(teacher_bytes)
    if task.framework == "torch":
        import torch

        torch.manual_seed(task.seed)
        student = torch_sized_student(task.size)
    else:
        from onnxopt.frameworks import require_keras

        keras = require_keras()
        import tensorflow as tf

        try:
            tf.config.threading.set_intra_op_parallelism_threads(1)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:  # already initialized by an earlier run in this worker
            pass
        keras.utils.set_random_seed(task.seed)
        student = keras_sized_student(task.size)
    cfg = DistillConfig(seed=task.seed, threads=1)
    tune: Any = TuneConfig(budget_minutes=budget)
    if task.tuned is not None:
        cfg = DistillConfig(seed=task.seed, threads=1, temperature=task.tuned[0], alpha=task.tuned[1])
        tune = False
    res = distill_model(teacher, student, train, select, cfg, test=test, tune=tune, benchmark_latency=False,
                        teacher_onnx=teacher)
    d, b, t = res.row("student"), res.row("labels-only"), res.row("teacher")
    return {
        "framework": task.framework, "size": task.size, "seed": task.seed,
        "params": d.params, "teacher_params": t.params, "teacher_test": t.test_accuracy,
        "T": res.config.temperature, "alpha": res.config.alpha, "tuned_here": task.tuned is None,
        "tuning": res.tuning.to_dict() if res.tuning else None,
        "distilled_test": d.test_accuracy, "labels_only_test": b.test_accuracy,
        "distilled_val": d.val_accuracy, "labels_only_val": b.val_accuracy,
        "written": res.written,
        "written_test": d.test_accuracy if res.written == "distilled" else b.test_accuracy,
        "epochs": [res.history.epochs_run, res.baseline_history.epochs_run if res.baseline_history else None],
        "seconds": round(time.perf_counter() - t0, 1),
    }  # fmt: skip


def _train_teacher(train: Any, select: Any, epochs: int) -> tuple[bytes, int, float]:
    """The 3-conv teacher trained on labels, exported to ONNX: (bytes, parameters, selection accuracy)."""
    import torch
    from distill_models import torch_teacher3

    from onnxopt.distillation.api import DistillConfig, export_student
    from onnxopt.frameworks import torch_distill

    torch.manual_seed(0)
    teacher, hist = torch_distill.distill(None, torch_teacher3(), train, select,
                                          DistillConfig(epochs=epochs, patience=0, seed=0, threads=1))
    conv = export_student(teacher, "torch", select[0], output_name="logits")
    return conv.model.SerializeToString(), torch_distill.param_count(teacher), hist.best_val_accuracy


def main() -> None:
    """Run the demo and print the tables."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--frameworks", default="torch,keras")
    ap.add_argument("--sizes", default="1/500,1/50,1/10")
    ap.add_argument("--teacher-epochs", type=int, default=6)
    ap.add_argument("--holdout", type=int, default=300, help="training samples kept aside for selection")
    ap.add_argument("--jobs", type=int, default=2, help="worker processes (one thread each)")
    ap.add_argument("--budget-minutes", type=float, default=10.0, help="per run (see onnxopt distill)")
    ap.add_argument("--tune-every-seed", action="store_true", help="tune in every run, not only seed 0")
    ap.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    args = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    frameworks = [f.strip() for f in args.frameworks.split(",") if f.strip()]
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    t_start = time.perf_counter()

    train, select, test = _splits(args.holdout)
    print(f"data: {len(train[1])} train / {len(select[1])} selection / {len(test[1])} test samples", flush=True)
    teacher_bytes, t_params, t_sel = _train_teacher(train, select, args.teacher_epochs)
    print(f"teacher: {t_params:,} parameters, {t_sel:.2f}% on the selection split "
          f"({time.perf_counter() - t_start:.0f} s)", flush=True)

    results: list[dict[str, Any]] = []
    first = [Task(fw, size, 0, None) for fw in frameworks for size in sizes]
    later_seeds = range(1, args.seeds)
    with ProcessPoolExecutor(max_workers=args.jobs, initializer=_init_worker) as pool:
        def submit(task: Task) -> Any:
            return pool.submit(_run, task, teacher_bytes, args.holdout, args.budget_minutes)

        if args.tune_every_seed:
            first += [Task(fw, size, s, None) for fw in frameworks for size in sizes for s in later_seeds]
        futures = [submit(t) for t in first]
        pending = []
        for fut in futures:
            r = fut.result()
            results.append(r)
            _say(r)
            if not args.tune_every_seed and r["seed"] == 0:
                pending += [submit(Task(r["framework"], r["size"], s, (r["T"], r["alpha"]))) for s in later_seeds]
        for fut in pending:
            r = fut.result()
            results.append(r)
            _say(r)

    seconds = time.perf_counter() - t_start
    summary = _report(results, frameworks, sizes, t_params)
    print(f"total time: {seconds:.0f} s ({args.jobs} worker processes)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        out = {"seconds": round(seconds, 1), "teacher_params": t_params, "summary": summary, "runs": results}
        args.json.write_text(json.dumps(out, indent=2) + "\n")


def _say(r: dict[str, Any]) -> None:
    print(f"[{r['framework']} {r['size']} seed {r['seed']}] T {r['T']:g} alpha {r['alpha']:g}"
          f"{' (tuned)' if r['tuned_here'] else ''}: distilled {r['distilled_test']:.2f}%  "
          f"labels-only {r['labels_only_test']:.2f}%  written: {r['written']}  ({r['seconds']:.0f} s)", flush=True)


def _mean_sd(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def _report(results: list[dict[str, Any]], frameworks: list[str], sizes: list[str], t_params: int) -> dict[str, Any]:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 150))
    teacher_test = statistics.mean(r["teacher_test"] for r in results)
    summary: dict[str, Any] = {"teacher_test": teacher_test}
    for fw in frameworks:
        table = Table(title=f"{fw} students: test accuracy %, mean ± sd over seeds (teacher {teacher_test:.2f}%)")
        for col in ("student", "params", "of teacher", "T, alpha (tuned)", "distilled", "labels-only",
                    "distilled − labels-only", "written", "written student"):
            table.add_column(col, justify="left" if col == "student" else "right")
        summary[fw] = {}
        for size in sizes:
            runs = sorted((r for r in results if r["framework"] == fw and r["size"] == size), key=lambda r: r["seed"])
            if not runs:
                continue
            d = [r["distilled_test"] for r in runs]
            b = [r["labels_only_test"] for r in runs]
            w = [r["written_test"] for r in runs]
            diff = statistics.mean(d) - statistics.mean(b)
            settings = sorted({(r["T"], r["alpha"]) for r in runs})
            picks = sum(r["written"] == "distilled" for r in runs)
            table.add_row(size, f"{runs[0]['params']:,}", f"1/{t_params / runs[0]['params']:.0f}",
                          "; ".join(f"{t:g}, {a:g}" for t, a in settings), _mean_sd(d), _mean_sd(b),
                          f"{diff:+.2f}", f"distilled {picks}/{len(runs)}", _mean_sd(w))
            summary[fw][size] = {"params": runs[0]["params"], "settings": settings, "distilled": d,
                                 "labels_only": b, "written": w, "distilled_minus_labels_only": diff,
                                 "distilled_written": picks}  # fmt: skip
        console.print(table)
    return summary


if __name__ == "__main__":
    main()
