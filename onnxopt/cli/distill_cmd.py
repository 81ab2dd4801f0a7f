"""`onnxopt distill`: train a small student from a teacher (Hinton distillation), export it, compare."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

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
              help="Validation .npz (early stopping and, without --test, the report).")
@click.option("--test", "test", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Held-out .npz for the report's accuracies (default: --val).")
@output_option(required=True)
@click.option("--framework", type=click.Choice(["auto", "torch", "keras"]), default="auto", show_default=True,
              help="Framework of the student.")
@click.option("--teacher-weights", default=None, help="Weights for a teacher factory (state dict / .weights.h5).")
@click.option("--student-weights", default=None, help="Initial weights for the student factory.")
@number_option("--temperature", "-T", low=0, low_open=True, default=4.0, show_default=True,
               help="Softening temperature (> 0).")
@number_option("--alpha", low=0, high=1, default=0.7, show_default=True,
               help="Weight of the teacher term in [0, 1]; 1 - alpha goes to the labels.")
@number_option("--epochs", kind=int, low=1, default=40, show_default=True)
@number_option("--batch-size", kind=int, low=1, default=64, show_default=True)
@number_option("--lr", low=0, low_open=True, default=3e-3, show_default=True,
               help="Peak AdamW learning rate (cosine decay).")
@number_option("--weight-decay", low=0, default=1e-4, show_default=True)
@number_option("--patience", kind=int, low=0, default=8, show_default=True,
               help="Early stopping: epochs without validation improvement (0: never stop).")
@seed_option("Seed of initialization, shuffling and training.")
@click.option("--hint", "hint", default=None,
              help="Hint loss between intermediate features: TEACHER_LAYER:STUDENT_LAYER (ONNX tensor name for an .onnx teacher).")
@number_option("--hint-weight", low=0, default=1.0, show_default=True)
@number_option("--threads", kind=int, low=0, high=THREADS_MAX, default=0,
               help="PyTorch training threads (0: framework default).")
@click.option("--no-baseline", is_flag=True, help="Skip training the same student on labels alone.")
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
    epochs: int, batch_size: int, lr: float, weight_decay: float, patience: int, seed: int,
    hint: str | None, hint_weight: float, threads: int, no_baseline: bool, baseline_output: Path | None,
    no_bench: bool, runs: int, input_key: str | None, labels_key: str | None, as_json: bool,
) -> None:
    """Distill TEACHER into STUDENT on --data, export the student to ONNX (parity-checked) and
    compare teacher, distilled student and the same student trained on labels alone:
    accuracy, parameters, size and onnxruntime latency.

    \b
    Examples:
      onnxopt distill --teacher teacher.onnx --student examples/distill_models.py:torch_student \\
          --data models/digits_train.npz --val models/digits_val.npz -o build/student.onnx
      onnxopt distill --teacher teacher.onnx --student examples/distill_models.py:keras_student \\
          --data models/digits_train.npz --val models/digits_val.npz -o build/student_keras.onnx --json
    """
    from onnxopt.core.feeds import load_labelled_npz
    from onnxopt.core.files import FilePlan, staged
    from onnxopt.distillation.api import DistillConfig, distill_sources

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
        hint_weight=hint_weight, threads=threads,
    )
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
            baseline=not no_baseline, bench=bench, benchmark_latency=not no_bench, progress=progress.epoch,
            stage=progress.stage, test=test_data,
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
        self.mode = ""

    def __enter__(self) -> _Progress:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bar.__exit__(*exc)

    def stage(self, message: str) -> None:
        if not self.quiet:
            self.bar.console.print(f"[dim]{message}…[/dim]")

    def epoch(self, e: Any) -> None:
        if self.task is None or e.mode != self.mode:
            self.mode = e.mode
            self.task = self.bar.add_task(f"{e.mode:>11}", total=e.epochs, info="")
        self.bar.update(
            self.task, completed=e.epoch,
            info=f"loss {e.train_loss:.4f}  val acc {e.val_accuracy:.2f}%",
        )


def _print(result: Any, output: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"distillation ({result.framework} student)")
    for col in ("model", "accuracy %", "params", "size", "p50 ms", "latency / teacher"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for r in result.rows:
        table.add_row(
            r.name, f"{r.accuracy:.2f}", f"{r.params:,}", human_bytes(r.file_size),
            "-" if r.latency_p50_ms is None else f"{r.latency_p50_ms:.3f}",
            "-" if r.latency_ratio is None else f"{r.latency_ratio:.2f}x",
        )
    console.print(table)
    h = result.history
    console.print(
        f"best epoch {h.best_epoch + 1} of {len(h.train_loss)}"
        f"{' (stopped early)' if h.stopped_early else ''}; "
        f"parity max abs {result.parity.max_abs:.1e} ({'passed' if result.parity.passed else 'FAILED'})"
    )
    for note in result.notes:
        console.print(f"note: {note}")
    console.print(f"wrote {output}")
