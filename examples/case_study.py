"""The classic model-optimization case study, done right: VGG teacher -> distill -> search -> prune + int8.

    .venv/bin/python examples/case_study.py --out build/case_study   # `make case-study`, ~7 min
    .venv/bin/python examples/case_study.py --out /tmp/cs --smoke    # tiny budgets (CI smoke test)

Every step is onnxopt's public API; this script only wires them together and prints. Data:
scikit-learn digits (models/digits_*.npz, [N, 1, 8, 8] in [0, 1]) upsampled to 32x32 by pixel
repetition, because three VGG blocks (each halving the resolution) need more than 8x8. The
bundled training split is divided into `fit` (training) and `select` (early stopping,
search selection, calibration checks); the bundled validation split is the held-out `test`
split, used for nothing but the final table.

Artifacts in --out: teacher.onnx, student_keras.onnx, student_keras_labels_only.onnx,
student_torch.onnx, search_best.onnx, final_*.onnx (one per optimize stage), final.onnx,
results.json, report.html, optimize.html (onnxopt's own report of step 5), search/ (every
candidate, the search checkpoint).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

import onnxruntime  # noqa: E402

from onnxopt.conversion.api import from_keras  # noqa: E402
from onnxopt.core.cpu import detect_cpu  # noqa: E402
from onnxopt.core.model import initializer_stats, load_model, save_model  # noqa: E402
from onnxopt.core.runtime import SessionConfig, physical_cores  # noqa: E402
from onnxopt.distillation.api import DistillConfig, distill_model  # noqa: E402
from onnxopt.measure.benchmark import BenchConfig, benchmark  # noqa: E402
from onnxopt.measure.fidelity import accuracy  # noqa: E402
from onnxopt.measure.stats import latency_ratio  # noqa: E402
from onnxopt.nas.engine import Objective, SearchConfig, search  # noqa: E402
from onnxopt.nas.evaluate import EvalConfig, TorchEvaluator, teacher_logits_for  # noqa: E402
from onnxopt.nas.space import describe_genome, space_from_dict  # noqa: E402
from onnxopt.optimization.recipe import PassSpec, Recipe  # noqa: E402
from onnxopt.optimization.report import to_html, write_text  # noqa: E402
from onnxopt.optimization.run import optimize  # noqa: E402
from onnxopt.optimization.types import OptimizeConfig  # noqa: E402

UPSAMPLE = 4  # 8x8 -> 32x32


@dataclass(frozen=True)
class Budget:
    """How much work each step may do (full run vs CI smoke test)."""

    teacher_epochs: int
    student_epochs: int
    population: int
    generations: int
    search_epochs: int
    final_epochs: int
    bench_seconds: float
    fit_samples: int = 0  # > 0: train on this many samples only
    search_samples: int = 0  # > 0: search candidates train on this many samples (a cheaper proxy)


FULL = Budget(teacher_epochs=15, student_epochs=25, population=6, generations=3, search_epochs=8,
              final_epochs=25, bench_seconds=20.0)
SMOKE = Budget(teacher_epochs=1, student_epochs=1, population=2, generations=1, search_epochs=1,
               final_epochs=1, bench_seconds=0.5, fit_samples=256)

# The student family the search explores (onnxopt.frameworks.torch_genome genes). Stage 1 always
# pools: at 32x32 an unpooled stage costs more than the whole rest of a small network.
SEARCH_SPACE: dict[str, Any] = {
    "constraints": ["depth < 3 or width_3 >= width_2", "width_2 >= width_1"],
    "genes": {
        "depth": {"type": "int", "low": 2, "high": 3},
        "width_1": {"type": "int", "low": 4, "high": 16, "step": 4},
        "kernel_1": {"type": "choice", "options": [3, 5]},
        "pool_1": {"type": "choice", "options": [True]},
        "width_2": {"type": "int", "low": 8, "high": 32, "step": 8},
        "pool_2": {"type": "choice", "options": [True]},
        "width_3": {"type": "int", "low": 16, "high": 64, "step": 16, "when": "depth >= 3"},
        "pool_3": {"type": "choice", "options": [False, True], "when": "depth >= 3"},
        "separable": {"type": "choice", "options": [False, True]},
        "activation": {"type": "choice", "options": ["relu", "hardswish"]},
        "head": {"type": "choice", "options": ["flatten", "gap"]},
        "hidden": {"type": "choice", "options": [0, 32]},
    },
}
# The hand-written student (same family, both frameworks): conv 16-32-64, a pool after each.
STUDENT = {"depth": 3, "width_1": 16, "width_2": 32, "width_3": 64,
           "pool_1": True, "pool_2": True, "pool_3": True, "head": "flatten"}

# Step 5: magnitude pruning, channel pruning (fewer FLOPs), int8 (static, per-channel). mode "auto"
# keeps int8 only when measured faster than the float model on this CPU (without VNNI, a model
# this small is often slower in int8: the table then shows the int8 row as not kept).
RECIPE = Recipe((
    PassSpec("optimize_graph", {}),
    PassSpec("prune_magnitude", {"sparsity": 0.3}),
    PassSpec("prune_channels", {"ratio": 0.1}),
    PassSpec("quantize", {"mode": "auto", "per_channel": True}),
), description="case study: magnitude 30% + channels 10% + int8 (kept when faster)")

T0 = time.perf_counter()


def say(msg: str) -> None:
    """Progress line with the elapsed time."""
    print(f"[{time.perf_counter() - T0:6.1f}s] {msg}", flush=True)


# ---------------------------------------------------------------- data and models


def load_data(seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """fit / select / test splits at 32x32: select is a stratified 15% of the training split."""
    def read(name: str) -> tuple[np.ndarray, np.ndarray]:
        d = np.load(ROOT / "models" / f"digits_{name}.npz")
        x = d["input"].repeat(UPSAMPLE, axis=2).repeat(UPSAMPLE, axis=3)
        return np.ascontiguousarray(x, np.float32), d["labels"].astype(np.int64)

    x, y = read("train")
    rng = np.random.default_rng(seed)
    select = np.concatenate([rng.permutation(np.flatnonzero(y == c))[: max(1, int(0.15 * (y == c).sum()))]
                             for c in np.unique(y)])
    is_fit = np.ones(len(y), bool)
    is_fit[select] = False
    return {"fit": (x[is_fit], y[is_fit]), "select": (x[~is_fit], y[~is_fit]), "test": read("val")}


def vgg_teacher(keras: Any, classes: int = 10) -> Any:
    """VGG16's pattern at reduced width: (conv3x3-conv3x3-maxpool) x 3 at 32-64-128, dense head, logits."""
    L = keras.layers
    inp = keras.Input((1, 32, 32), name="input")
    x = L.Permute((2, 3, 1))(inp)  # NCHW (the ONNX convention) -> NHWC (Keras on CPU)
    for width in (32, 64, 128):
        x = L.Conv2D(width, 3, padding="same", activation="relu")(x)
        x = L.Conv2D(width, 3, padding="same", activation="relu")(x)
        x = L.MaxPooling2D(2)(x)
    x = L.Flatten()(x)
    x = L.Dense(256, activation="relu")(x)
    x = L.Dropout(0.5)(x)
    return keras.Model(inp, L.Dense(classes, name="logits")(x), name="vgg_teacher")  # logits: no softmax


def keras_student(keras: Any, classes: int = 10) -> Any:
    """The hand-written student in Keras: conv 16-32-64, a max-pool after each, linear classifier."""
    L = keras.layers
    inp = keras.Input((1, 32, 32), name="input")
    x = L.Permute((2, 3, 1))(inp)
    for width in (STUDENT["width_1"], STUDENT["width_2"], STUDENT["width_3"]):
        x = L.Conv2D(width, 3, padding="same", activation="relu")(x)
        x = L.MaxPooling2D(2)(x)
    x = L.Flatten()(x)
    return keras.Model(inp, L.Dense(classes, name="logits")(x), name="student")


# ---------------------------------------------------------------- the steps


def train_teacher(data: dict[str, Any], out: Path, budget: Budget, seed: int) -> tuple[Any, Path]:
    """Step 1-2: train the Keras VGG teacher on labels, export it to ONNX with a parity check."""
    from onnxopt.frameworks import require_keras
    from onnxopt.frameworks.keras_distill import distill as train_keras

    keras = require_keras()
    keras.utils.set_random_seed(seed)
    teacher = vgg_teacher(keras)
    say(f"1. training the VGG-style Keras teacher ({teacher.count_params():,} parameters)")
    # Labels only (alpha 0): the library's seeded loop with early stopping on the select split.
    cfg = DistillConfig(alpha=0.0, epochs=budget.teacher_epochs, lr=1e-3, patience=4, seed=seed)
    teacher, hist = train_keras(None, teacher, data["fit"], data["select"], cfg, progress=_epoch_line)
    say(f"   teacher: best select accuracy {hist.best_val_accuracy:.2f}% at epoch {hist.best_epoch + 1}")
    path = out / "teacher.onnx"
    conv = from_keras(teacher, example_inputs=(data["fit"][0][:1],), output=path,
                      input_names=["input"], output_names=["logits"], data={"input": data["select"][0][:256]})
    say(f"2. converted to ONNX: parity max |diff| {conv.parity.max_abs:.2e} ({'passed' if conv.parity.passed else 'FAILED'})")
    return teacher, path


def distill_students(data: dict[str, Any], teacher: Any, teacher_path: Path, out: Path, budget: Budget,
                     seed: int) -> dict[str, Any]:
    """Step 3: distill the hand-written student in Keras (teacher = Keras model) and in PyTorch (teacher = ONNX file)."""
    from onnxopt.frameworks import require_keras
    from onnxopt.frameworks.torch_genome import build

    keras = require_keras()
    keras.utils.set_random_seed(seed)
    cfg = DistillConfig(temperature=4.0, alpha=0.7, epochs=budget.student_epochs, patience=6, seed=seed,
                        threads=1)
    say("3a. distilling the Keras student from the Keras teacher (+ the same student on labels alone)")
    k = distill_model(teacher, keras_student(keras), data["fit"], data["select"], cfg, test=data["test"],
                      teacher_onnx=load_model(teacher_path), output=out / "student_keras.onnx",
                      baseline_output=out / "student_keras_labels_only.onnx", benchmark_latency=False,
                      progress=_epoch_line)
    say("3b. distilling the PyTorch student from teacher.onnx (teacher logits computed once in onnxruntime)")
    t = distill_model(str(teacher_path), build(STUDENT, (1, 32, 32), 10, seed=seed), data["fit"], data["select"],
                      cfg, test=data["test"], baseline=False, output=out / "student_torch.onnx",
                      benchmark_latency=False, progress=_epoch_line)
    for name, res in (("keras", k), ("torch", t)):
        rows = ", ".join(f"{r.name} {r.accuracy:.2f}%" for r in res.rows)
        say(f"   {name}: {rows} (test split); parity {res.parity.max_abs:.1e}")
    return {"keras": k, "torch": t}


def run_search(data: dict[str, Any], teacher_path: Path, out: Path, budget: Budget, seed: int,
               teacher_select_acc: float) -> tuple[Any, dict[str, Any], Any]:
    """Step 4: GA over student architectures; fitness = distilled accuracy and onnxruntime latency (Pareto)."""
    space = space_from_dict(SEARCH_SPACE, "case study space")
    logits = teacher_logits_for(teacher_path, data["fit"][0])
    evaluator = TorchEvaluator(data["fit"], data["select"],
                               EvalConfig(epochs=budget.search_epochs, seed=seed, bench_runs=50,
                                          train_limit=budget.search_samples),
                               teacher_logits=logits, workdir=out / "search")
    cfg = SearchConfig(population=budget.population, generations=budget.generations, elite=1, seed=seed,
                       objectives=(Objective("accuracy"), Objective("latency_ms", maximize=False)), pareto=True)
    say(f"4. GA search: population {cfg.population}, {cfg.generations} generations, "
        f"{budget.search_epochs} distillation epochs per candidate")
    result = search(space, evaluator, cfg, checkpoint=out / "search" / "checkpoint.json",
                    on_record=lambda r: say(f"   {describe_genome(r.genome)}: "
                                            + (f"{r.value('accuracy'):.2f}%, {r.value('latency_ms'):.3f} ms"
                                               if r.ok else f"failed: {r.error}")))
    # The fastest front member within 1 point of the teacher (on the select split), else the most accurate.
    front = sorted(result.front, key=lambda r: r.value("latency_ms"))
    good = [r for r in front if r.value("accuracy") >= teacher_select_acc - 1.0]
    best = good[0] if good else max(front, key=lambda r: r.value("accuracy"))
    say(f"   chose {describe_genome(best.genome)} from a front of {len(front)}; retraining {budget.final_epochs} epochs")
    final = TorchEvaluator(data["fit"], data["select"], replace(evaluator.config, epochs=budget.final_epochs,
                                                                 train_limit=0), teacher_logits=logits)
    model = final.export(final.train_module(best.genome))
    save_model(model, out / "search_best.onnx")
    return result, best.genome, model


def prune_and_quantize(model: Any, data: dict[str, Any], out: Path, budget: Budget, seed: int) -> Any:
    """Step 5: one optimize() call with a recipe; every stage verified on the select split."""
    say(f"5. optimize: {RECIPE.description}")
    cfg = OptimizeConfig(seed=seed, bench_seconds=max(budget.bench_seconds / 5, 0.2))
    res = optimize(model, RECIPE, cfg, val=({"input": data["select"][0]}, data["select"][1]),
                   calib={"input": data["fit"][0][:200]}, progress=lambda m: say(f"   {m}"))
    for w in res.warnings:
        say(f"   warning: {w}")
    save_model(res.model, out / "final.onnx")
    write_text(out / "optimize.html", to_html(res, "case study: optimize the search's best student"))
    return res


def measure_all(models: dict[str, Any], data: dict[str, Any], budget: Budget, seed: int) -> list[dict[str, Any]]:
    """Step 6: test accuracy, parameters, size; latency of every model in ONE interleaved benchmark."""
    names = list(models)
    say(f"6. measuring {len(names)} models: accuracy on the held-out test split, latency interleaved "
        f"({budget.bench_seconds:.0f} s, {physical_cores()} threads, batch 1)")
    x, y = data["test"]
    cfg = BenchConfig(session=SessionConfig(intra_op_threads=physical_cores(), allow_spinning=False),
                      warmup=20, runs=50, duration_s=budget.bench_seconds, seed=seed)
    bench = benchmark([models[n] for n in names], cfg, names=names)
    rows = []
    for name, b in zip(names, bench):
        params, _ = initializer_stats(models[name])
        ci = latency_ratio(b, bench[0], seed=seed)  # model / teacher latency, 95% bootstrap CI over rounds
        rows.append({
            "model": name, "accuracy": accuracy(models[name], {"input": x}, y), "params": params,
            "file_size": b.file_size, "p50_ms": b.stats.p50_ms, "mean_ms": b.stats.mean_ms,
            "speedup": ci.speedup, "speedup_ci": [1 / ci.high, 1 / ci.low], "smaller": bench[0].file_size / b.file_size,
        })
    return rows


def _cpu_model() -> str:
    """The CPU's model name (lscpu's), or the architecture when /proc/cpuinfo is absent."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.machine()
    names = [ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")]
    return names[0] if names else platform.machine()


def _epoch_line(e: Any) -> None:
    if e.epoch == e.epochs or e.epoch % 5 == 0:
        say(f"   epoch {e.epoch}/{e.epochs}: loss {e.train_loss:.4f}, select accuracy {e.val_accuracy:.2f}%")


def print_table(rows: list[dict[str, Any]]) -> str:
    """The final table as Markdown (also printed)."""
    lines = ["| model | test accuracy | params | file size | p50 latency | vs teacher: faster (95% CI) | smaller |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lo, hi = r["speedup_ci"]
        lines.append(f"| {r['model']} | {r['accuracy']:.2f}% | {r['params']:,} | {r['file_size'] / 1e3:,.1f} kB | "
                     f"{r['p50_ms']:.3f} ms | {r['speedup']:.1f}x ({lo:.1f}-{hi:.1f}) | {r['smaller']:.1f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the case study; exit 0 when it completed (targets are reported, not enforced)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("build/case_study"))
    p.add_argument("--smoke", action="store_true", help="tiny budgets (seconds, not minutes): for CI")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    budget = SMOKE if args.smoke else FULL
    out: Path = args.out
    (out / "search").mkdir(parents=True, exist_ok=True)
    data = load_data(args.seed)
    if budget.fit_samples:
        data["fit"] = (data["fit"][0][: budget.fit_samples], data["fit"][1][: budget.fit_samples])
    say(f"data: digits at 32x32; fit {len(data['fit'][1])}, select {len(data['select'][1])}, "
        f"test {len(data['test'][1])} samples")

    teacher, teacher_path = train_teacher(data, out, budget, args.seed)
    teacher_select = accuracy(teacher_path, {"input": data["select"][0]}, data["select"][1])
    students = distill_students(data, teacher, teacher_path, out, budget, args.seed)
    search_result, genome, best = run_search(data, teacher_path, out, budget, args.seed, teacher_select)
    opt = prune_and_quantize(best, data, out, budget, args.seed)

    models: dict[str, Any] = {
        "1. teacher (Keras VGG)": load_model(teacher_path),
        "3a. student, Keras, labels only": students["keras"].baseline_model,
        "3a. student, Keras, distilled": students["keras"].model,
        "3b. student, PyTorch, distilled from ONNX": students["torch"].model,
    }
    final_label = ""
    for i, stage in enumerate(s for s in opt.stages if s.modified or s.pass_name is None):
        label = "4. search best (distilled)" if stage.pass_name is None else f"5. + {stage.name}"
        label += " = final" if stage.name == opt.final else ("" if stage.kept else f" ({stage.note})")
        final_label = label if stage.name == opt.final else final_label
        models[label] = stage.model
        if stage.pass_name is not None:
            save_model(stage.model, out / f"final_{i}_{stage.pass_name}.onnx")
    rows = measure_all(models, data, budget, args.seed)
    table = print_table(rows)
    print("\n" + table + "\n", flush=True)

    teacher_row = rows[0]
    final_row = next(r for r in rows if r["model"] == final_label)
    targets = {
        "smaller_20x": final_row["smaller"] >= 20,
        "faster_5x": final_row["speedup"] >= 5,
        "within_2_points": teacher_row["accuracy"] - final_row["accuracy"] <= 2,
    }
    cpu = detect_cpu()
    results = {
        "rows": rows,
        "final": final_label,
        "targets": targets,
        "seconds": time.perf_counter() - T0,
        "smoke": args.smoke,
        "seed": args.seed,
        "budget": budget.__dict__,
        "machine": {"cpu": _cpu_model(), "cpu_features": cpu.summary,
                    "physical_cores": physical_cores(), "onnxruntime": onnxruntime.__version__},
        "search": {"genome": genome, "result": search_result.to_dict(),
                   "records": [r.to_dict() for r in search_result.records]},
        "distill": {k: v.to_dict() for k, v in students.items()},
        "optimize": opt.to_dict(),
        "table_markdown": table,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    from case_study_report import write_report

    write_report(results, out / "report.html")
    say("targets: " + ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in targets.items()))
    say(f"wrote {out / 'final.onnx'}, {out / 'results.json'}, {out / 'report.html'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
