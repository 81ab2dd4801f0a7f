"""`onnxopt distill`: train a small student from a teacher (Hinton distillation), export it, compare.

Tunes T and alpha, trains to convergence and writes the better of the distilled and the
labels-only student (onnxopt.distillation.api.distill_model does the work).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from onnxopt.cli._options import (
    THREADS_MAX,
    echo_json,
    human_bytes,
    json_option,
    number_option,
    option_config,
    output_option,
    runs_option,
    seed_option,
    source_path,
)


def _hint(value: str | None) -> tuple[str, str] | None:
    if not value:
        return None
    teacher, sep, student = value.rpartition(":")
    if not sep or not teacher or not student:
        raise click.UsageError(f"--hint {value!r}: expected TEACHER_LAYER:STUDENT_LAYER")
    return teacher, student


@click.command("distill")
@click.option("--teacher", "teacher", required=True,
              help="Teacher: an .onnx file (logits computed once in onnxruntime), a model file, or file.py:factory.")
@click.option("--student", "student", required=True,
              help="Student to train: a PyTorch/Keras model file or file.py:factory.")
@click.option("--data", "data", type=click.Path(path_type=Path, dir_okay=False), required=True,
              help="Training .npz with inputs (key 'input') and labels (key 'labels').")
@click.option("--val", "val", type=click.Path(path_type=Path, dir_okay=False), required=True,
              help="Validation .npz: stopping, tuning and the distilled-vs-labels-only choice.")
@click.option("--test", "test", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Held-out .npz: its accuracies are reported, never used for a choice.")
@output_option(required=True)
@click.option("--framework", type=click.Choice(["auto", "torch", "keras"]), default="auto", show_default=True,
              help="Framework of the student.")
@click.option("--teacher-weights", default=None, help="Weights for a teacher factory (state dict / .weights.h5).")
@click.option("--student-weights", default=None, help="Initial weights for the student factory.")
@number_option("--temperature", "-T", low=0, low_open=True, default=4.0, show_default=True,
               help="Softening temperature (> 0); used as given when not tuning (giving it turns tuning off).")
@number_option("--alpha", low=0, high=1, default=0.7, show_default=True,
               help="Weight of the teacher term in [0, 1]; 1 - alpha goes to the labels "
                    "(giving it turns tuning off).")
@click.option("--tune/--no-tune", "tune", default=None,
              help="Search T in {1,2,4} x alpha in {0.3,0.5,0.7,0.9} with short proxy runs on --val, then train "
                   "the best to convergence. Default: on, unless --temperature or --alpha is given.")
@number_option("--budget-minutes", low=0, low_open=True, default=10.0, show_default=True,
               help="Training time budget: tuning tries only the settings that fit (baseline and final run always train).")
@number_option("--epochs", kind=int, low=1, default=None,
               help="Fixed budget: exactly N epochs, cosine learning rate. Default: train to convergence.")
@number_option("--min-epochs", kind=int, low=1, default=20, show_default=True,
               help="To convergence: never stop before this epoch.")
@number_option("--max-epochs", kind=int, low=1, default=300, show_default=True,
               help="To convergence: never train longer.")
@number_option("--batch-size", kind=int, low=1, default=64, show_default=True)
@number_option("--lr", low=0, low_open=True, default=None,
               help="Peak AdamW learning rate, cut 5x on each plateau (with --epochs: cosine decay). "
                    "Default: 1e-2, or 3e-3 with --epochs.")
@number_option("--weight-decay", low=0, default=1e-4, show_default=True)
@number_option("--patience", kind=int, low=0, default=10, show_default=True,
               help="Epochs without validation improvement before a learning-rate cut or the stop (0: never stop).")
@seed_option("Seed of initialization, shuffling and training.")
@click.option("--hint", "hint", default=None,
              help="Hint loss between intermediate features: TEACHER_LAYER:STUDENT_LAYER (ONNX tensor name for an .onnx teacher).")
@number_option("--hint-weight", low=0, default=1.0, show_default=True)
@number_option("--threads", kind=int, low=0, high=THREADS_MAX, default=1, show_default=True,
               help="PyTorch training threads (0: the framework's default). One is fastest for small students "
                    "(measured on a busy 2-core machine: two threads ran 3-25x slower per epoch).")
@click.option("--no-baseline", is_flag=True,
              help="Skip training the same student on labels alone (the distilled one is written, whatever it is worth).")
@click.option("--keep-distilled", is_flag=True,
              help="Write the distilled student even when the labels-only one is more accurate on --val.")
@click.option("--baseline-output", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Also save the labels-only student here.")
@click.option("--no-bench", is_flag=True, help="Skip the onnxruntime latency measurement.")
@runs_option(200, "Timed runs per model for latency.")
@click.option("--input-key", default=None, help="Name of the inputs array in the .npz files (default: 'input').")
@click.option("--labels-key", default=None, help="Name of the labels array (default: labels/label/y/targets).")
@json_option
def command(
    teacher: str, student: str, data: Path, val: Path, test: Path | None, output: Path, framework: str,
    teacher_weights: str | None, student_weights: str | None, temperature: float, alpha: float,
    tune: bool | None, budget_minutes: float, epochs: int | None, min_epochs: int, max_epochs: int,
    batch_size: int, lr: float | None, weight_decay: float, patience: int, seed: int,
    hint: str | None, hint_weight: float, threads: int, no_baseline: bool, keep_distilled: bool,
    baseline_output: Path | None, no_bench: bool, runs: int, input_key: str | None, labels_key: str | None,
    as_json: bool,
) -> None:
    """Distill TEACHER into STUDENT on --data, export the student to ONNX (parity-checked) and
    compare teacher, distilled student and the same student trained on labels alone:
    accuracy, parameters, size and onnxruntime latency.

    By default T and alpha are tuned on --val, both students train until --val stops
    improving, and the labels-only student is written instead of the distilled one when it
    is more accurate on --val (the output says so; --keep-distilled to keep the distilled).

    \b
    Examples:
      onnxopt distill --teacher teacher.onnx --student examples/distill_models.py:torch_student \\
          --data models/digits_train.npz --val models/digits_val.npz -o build/student.onnx
      onnxopt distill --teacher teacher.onnx --student examples/distill_models.py:keras_student \\
          --data models/digits_train.npz --val models/digits_val.npz -o build/student_keras.onnx --json
    """
    from onnxopt.core.feeds import load_labelled_npz
    from onnxopt.core.files import FilePlan, staged
    from onnxopt.distillation.api import DistillConfig, TuneConfig, distill_sources

    plan = FilePlan.of(
        reads={"--teacher": source_path(teacher), "--student": source_path(student),
               "--teacher-weights": teacher_weights, "--student-weights": student_weights,
               "--data": data, "--val": val, "--test": test},
        writes={"-o": output, "--baseline-output": baseline_output},
    )  # fmt: skip
    plan.check()  # before any work: no output may clobber an input or the other output
    config = option_config(
        DistillConfig,
        temperature=temperature, alpha=alpha, epochs=epochs, batch_size=batch_size, lr=lr,
        weight_decay=weight_decay, patience=patience, seed=seed, hint=_hint(hint),
        hint_weight=hint_weight, threads=threads, min_epochs=min_epochs, max_epochs=max_epochs,
    )
    if tune is None:  # on unless the user chose T or alpha
        ctx = click.get_current_context()
        tune = all(ctx.get_parameter_source(p) in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)
                   for p in ("temperature", "alpha"))
    tune_config = option_config(TuneConfig, enabled=tune, budget_minutes=budget_minutes)
    bench = None
    if not no_bench:
        from onnxopt.measure.benchmark import BenchConfig

        bench = BenchConfig(runs=runs, warmup=min(20, runs))
    test_data = load_labelled_npz(test, input_key=input_key, labels_key=labels_key) if test else None
    with _Progress(quiet=as_json) as progress:
        result = distill_sources(
            teacher, student, data, val, config, framework=framework,
            teacher_weights=teacher_weights, student_weights=student_weights,
            input_key=input_key, labels_key=labels_key,
            baseline=not no_baseline, tune=tune_config, keep_distilled=keep_distilled, bench=bench,
            benchmark_latency=not no_bench, progress=progress.epoch, stage=progress.stage, test=test_data,
        )
    with staged(plan) as outputs:  # the student and the baseline, or (on any failure) neither
        outputs.model(output, result.model)
        if baseline_output is not None and result.baseline_model is not None:
            outputs.model(baseline_output, result.baseline_model)
    report = result.to_dict()
    report["output"] = str(output)
    if as_json:
        echo_json(report)
        return
    _print(result, output)


class _Progress:
    """A rich progress bar per training run with loss and validation accuracy (stderr)."""

    def __init__(self, quiet: bool) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.console = Console(stderr=True)
        self.quiet = quiet
        self.bar = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
            console=self.console, disable=quiet, transient=False,
        )
        self.task: Any = None

    def __enter__(self) -> _Progress:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._finish()
        self.bar.__exit__(*exc)

    def _finish(self) -> None:
        """Mark the current run's bar done (a run that stopped before its epoch limit)."""
        if self.task is not None:
            done = self.bar.tasks[-1].completed
            self.bar.update(self.task, total=max(done, 1))
            self.task = None

    def stage(self, message: str) -> None:
        if not self.quiet:
            self.bar.console.print(f"[dim]{message}…[/dim]")

    def epoch(self, e: Any) -> None:
        if self.task is None or e.epoch == 1:
            self._finish()
            self.task = self.bar.add_task(f"{e.mode:>11}", total=e.epochs, info="")
        self.bar.update(
            self.task, completed=e.epoch,
            info=f"loss {e.train_loss:.4f}  val acc {e.val_accuracy:.2f}%",
        )


def _print(result: Any, output: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    has_test = any(r.test_accuracy is not None for r in result.rows)
    table = Table(title=f"distillation ({result.framework} student)")
    cols = ["model", "written", "val acc %"] + (["test acc %"] if has_test else []) + [
        "params", "size", "p50 ms", "latency / teacher"]
    for col in cols:
        table.add_column(col, justify="left" if col == "model" else "right")
    names = {"student": "distilled", "labels-only": "labels-only", "teacher": "teacher"}
    written = "student" if result.written == "distilled" else "labels-only"
    for r in result.rows:
        cells = [names.get(r.name, r.name), "yes" if r.name == written else "", f"{r.val_accuracy:.2f}"]
        if has_test:
            cells.append(f"{r.test_accuracy:.2f}")
        cells += [
            f"{r.params:,}", human_bytes(r.file_size),
            "-" if r.latency_p50_ms is None else f"{r.latency_p50_ms:.3f}",
            "-" if r.latency_ratio is None else f"{r.latency_ratio:.2f}x",
        ]
        table.add_row(*cells)
    console.print(table)
    if result.tuning is not None:
        _print_tuning(console, result.tuning)
    c = result.config
    console.print(f"distilled (T {c.temperature:g}, alpha {c.alpha:g}): {_stop_line(result.history)}", markup=False)
    if result.baseline_history is not None:
        console.print(f"labels-only: {_stop_line(result.baseline_history)}", markup=False)
    console.print(result.verdict, markup=False)
    console.print(
        f"parity max abs {result.parity.max_abs:.1e} ({'passed' if result.parity.passed else 'FAILED'}); "
        f"{result.seconds:.0f} s in all", markup=False,
    )
    for note in result.notes:
        console.print(f"note: {note}", markup=False)
    console.print(f"wrote {output} (the {result.written} student)", markup=False)


def _stop_line(h: Any) -> str:
    return f"stopped at epoch {h.epochs_run}: {h.stop_reason}; best validation accuracy {h.best_val_accuracy:.2f}%"


def _print_tuning(console: Any, tuning: Any) -> None:
    """Validation accuracy of every tried (T, alpha): T in rows, alpha in columns."""
    from rich.table import Table

    if not tuning.trials:
        console.print(tuning.describe(), markup=False)
        return
    temps = sorted({t.temperature for t in tuning.trials})
    alphas = sorted({t.alpha for t in tuning.trials})
    table = Table(title=f"tuning: validation accuracy % after {tuning.proxy_epochs} proxy epochs")
    table.add_column("T \\ alpha")
    for a in alphas:
        table.add_column(f"{a:g}", justify="right")
    cell = {(t.temperature, t.alpha): t for t in tuning.trials}
    for temp in temps:
        row = [f"{temp:g}"]
        for a in alphas:
            t = cell.get((temp, a))
            text = "-" if t is None or t.val_accuracy is None else f"{t.val_accuracy:.2f}"
            row.append(f"[bold]{text}*[/bold]" if tuning.best == (temp, a) else text)
        table.add_row(*row)
    console.print(table)
    console.print(tuning.describe() + " (* chosen; - skipped)", markup=False)
