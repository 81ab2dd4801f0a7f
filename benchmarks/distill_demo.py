"""`make distill-demo`: distill a VGG-style digits teacher into a ~34x smaller student, in PyTorch and Keras.

Trains the teacher once (PyTorch, exported to ONNX with a parity check), then for each seed and
framework trains the student with distillation and the same student on labels alone, exports
both, and measures accuracy (held-out split), parameters, size and onnxruntime latency.
Prints one table per framework with mean and spread over the seeds, and checks the targets.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT))


def _splits(holdout: int, seed: int = 0) -> tuple[Any, Any, Any]:
    """(train, selection, test): the selection split (early stopping) is carved from digits_train."""
    from onnxopt.core.feeds import load_labelled_npz

    x, y = load_labelled_npz(ROOT / "models" / "digits_train.npz")
    test = load_labelled_npz(ROOT / "models" / "digits_val.npz")
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(x))
    sel, tr = np.sort(idx[:holdout]), np.sort(idx[holdout:])
    return (x[tr], y[tr]), (x[sel], y[sel]), test


def _mean_sd(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def main() -> None:
    """Run the demo and print the tables."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--frameworks", default="torch,keras")
    ap.add_argument("--teacher-epochs", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--patience", type=int, default=6)
    ap.add_argument("--temperature", type=float, default=4.0)
    ap.add_argument("--alpha", type=float, default=0.7)
    ap.add_argument("--holdout", type=int, default=200, help="training samples kept aside for early stopping")
    ap.add_argument("--threads", type=int, default=1,
                    help="training threads (1 is fastest on a busy 2-core machine; measured)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    args = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    frameworks = [f.strip() for f in args.frameworks.split(",") if f.strip()]
    t_start = time.perf_counter()

    import torch

    torch.set_num_threads(args.threads)
    from distill_models import keras_student, keras_teacher, torch_student, torch_teacher  # noqa: F401

    from onnxopt.conversion.api import from_torch
    from onnxopt.distillation.api import DistillConfig, distill_model
    from onnxopt.frameworks import torch_distill

    train, select, test = _splits(args.holdout)
    print(f"data: {len(train[1])} train / {len(select[1])} early-stopping / {len(test[1])} test samples")

    torch.manual_seed(0)
    teacher = torch_teacher()
    t0 = time.perf_counter()
    tcfg = DistillConfig(epochs=args.teacher_epochs, patience=0, seed=0, threads=args.threads)
    teacher, th = torch_distill.distill(None, teacher, train, select, tcfg)
    conv = from_torch(teacher, (test[0][:1],), input_names=["input"], output_names=["logits"],
                      data={"input": test[0][:256]})
    print(f"teacher: {torch_distill.param_count(teacher):,} parameters, trained in {time.perf_counter() - t0:.0f} s, "
          f"parity max abs {conv.parity.max_abs:.1e}")
    teacher_onnx = conv.model

    if "keras" in frameworks:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)

    results: dict[str, list[Any]] = {fw: [] for fw in frameworks}
    for seed in range(args.seeds):
        for fw in frameworks:
            t0 = time.perf_counter()
            if fw == "torch":
                torch.manual_seed(seed)
                student = torch_student()
                t_arg: Any = teacher  # native teacher, frozen, logits cached once
            else:
                import keras

                keras.utils.set_random_seed(seed)
                student = keras_student()
                t_arg = teacher_onnx  # the ONNX teacher: logits computed once in onnxruntime
            cfg = DistillConfig(epochs=args.epochs, patience=args.patience, seed=seed,
                                temperature=args.temperature, alpha=args.alpha, threads=args.threads)
            res = distill_model(t_arg, student, train, select, cfg, test=test, teacher_onnx=teacher_onnx)
            results[fw].append(res)
            s, b = res.row("student"), res.row("labels-only")
            print(f"[{fw} seed {seed}] distilled {s.accuracy:.2f}%  labels-only {b.accuracy:.2f}%  "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)

    summary = _report(results, teacher_onnx)
    summary["seconds"] = round(time.perf_counter() - t_start, 1)
    print(f"total time: {summary['seconds']:.0f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2) + "\n")


def _report(results: dict[str, list[Any]], teacher_onnx: Any) -> dict[str, Any]:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    out: dict[str, Any] = {}
    for fw, runs in results.items():
        if not runs:
            continue
        t = runs[0].row("teacher")
        acc = {name: [r.row(name).accuracy for r in runs] for name in ("teacher", "student", "labels-only")}
        p50 = {name: statistics.median([r.row(name).latency_p50_ms for r in runs]) for name in acc}
        ratio = {name: statistics.median([r.row(name).latency_ratio for r in runs]) for name in acc}
        table = Table(title=f"{fw}: teacher vs distilled student vs labels-only student ({len(runs)} seeds)")
        for col in ("model", "test accuracy %", "params", "size KiB", "p50 ms (batch 1)", "latency / teacher"):
            table.add_column(col, justify="right" if col != "model" else "left")
        for name in ("teacher", "student", "labels-only"):
            row = runs[0].row(name)
            table.add_row(name, _mean_sd(acc[name]), f"{row.params:,}", f"{row.file_size / 1024:.1f}",
                          f"{p50[name]:.3f}", f"{ratio[name]:.2f}x")
        console.print(table)
        s = runs[0].row("student")
        gap = statistics.mean(acc["teacher"]) - statistics.mean(acc["student"])
        diff = [a - b for a, b in zip(acc["student"], acc["labels-only"])]
        checks = {
            "params_ratio": t.params / s.params,
            "accuracy_gap_points": gap,
            "distill_minus_labels_only_mean": statistics.mean(diff),
            "distill_minus_labels_only_per_seed": diff,
            "latency_ratio": ratio["student"],
        }
        console.print(
            f"  student has 1/{checks['params_ratio']:.0f} of the teacher's parameters "
            f"[{'ok' if checks['params_ratio'] >= 10 else 'MISSED'}: <= 1/10]\n"
            f"  teacher - distilled student: {gap:.2f} points [{'ok' if gap <= 1.5 else 'MISSED'}: <= 1.5]\n"
            f"  distilled - labels-only: {statistics.mean(diff):+.2f} points on average, per seed "
            f"{', '.join(f'{d:+.2f}' for d in diff)} "
            f"[{'distillation wins' if statistics.mean(diff) > 0 else 'distillation does NOT win'}]\n"
            f"  student latency / teacher latency: {ratio['student']:.2f}x "
            f"[{'ok' if ratio['student'] <= 0.3 else 'MISSED'}: <= 0.3x]",
            markup=False,
            highlight=False,
        )
        notes = sorted({n for r in runs for n in r.notes})
        if notes:
            console.print("  notes: " + "; ".join(notes), markup=False)
        out[fw] = {
            "accuracy": acc,
            "p50_ms": p50,
            "latency_ratio": ratio,
            "params": {n: runs[0].row(n).params for n in acc},
            "file_size": {n: runs[0].row(n).file_size for n in acc},
            "checks": checks,
            "histories": [r.history.to_dict() for r in runs],
        }
    return out


if __name__ == "__main__":
    main()
