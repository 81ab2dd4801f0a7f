"""`onnxopt search`: genetic architecture search; fitness = accuracy and latency in onnxruntime.

The workflow is onnxopt.nas.run.run_search; this module parses the options and prints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from onnxopt.cli._options import (
    echo_json,
    human_bytes,
    json_option,
    number_option,
    option_config,
    output_option,
    seed_option,
)


@click.command("search")
@click.option("--space", "space_path", type=click.Path(path_type=Path), required=True,
              help="Search space TOML (see examples/search_space.toml).")
@click.option("--data", "data_path", type=click.Path(path_type=Path), required=True,
              help="Training split .npz (input + labels).")
@click.option("--val", "val_path", type=click.Path(path_type=Path), required=True,
              help="Validation split .npz: accuracy of each candidate, measured in onnxruntime.")
@click.option("--framework", type=click.Choice(["torch", "keras"]), default="torch", show_default=True,
              help="Build and train candidates in PyTorch or Keras 3 (both exported to ONNX).")
@click.option("--teacher", type=click.Path(path_type=Path), default=None,
              help="ONNX teacher: train candidates by distillation from its logits.")
@number_option("--generations", kind=int, low=1, default=6, show_default=True, help="Generations; the first is random (at most population x generations evaluations).")
@number_option("--population", kind=int, low=2, default=8, show_default=True, help="Genomes per generation.")
@number_option("--elite", kind=int, low=0, default=2, show_default=True, help="Best genomes kept unchanged each generation.")
@output_option(required=True)
@number_option("--max-latency-ms", low=0, low_open=True, default=None,
               help="Latency budget (p50, ms): maximize accuracy among candidates under it.")
@click.option("--pareto", is_flag=True, help="Pareto search (accuracy vs latency); writes the whole front.")
@number_option("--workers", kind=int, low=1, high=1024, default=1, show_default=True, help="Parallel evaluations (local processes).")
@click.option("--dask", "dask_address", default=None,
              help="Evaluate on a Dask cluster at this scheduler address (needs dask distributed).")
@click.option("--resume", is_flag=True, help="Continue the search checkpointed in the work directory.")
@click.option("--log", "log_path", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="JSON-lines log of every evaluated genome (default: <workdir>/search.jsonl).")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Save accuracy vs latency with the front highlighted (needs the report extra).")
@click.option("--baseline", type=click.Path(path_type=Path), default=None,
              help="ONNX model to compare the result with (accuracy on --val, latency re-measured together).")
@number_option("--epochs", kind=int, low=1, default=None, help="Training epochs per candidate (default: [train] or 15).")
@number_option("--max-minutes", low=0, low_open=True, default=None,
               help="Wall-clock budget: stop after the generation that exceeds it (resumable).")
@number_option("--remeasure-runs", kind=int, low=5, default=300, show_default=True,
               help="Timed runs per model when the result is re-measured against the baseline.")
@seed_option("Seed of the search and of training.")
@click.option("--workdir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Where candidates and the checkpoint live (default: <output>.search/).")
@json_option
@click.pass_context
# Longer than ~80 lines only because click passes one parameter per option: the signature and
# the help text are half of it; the work itself is in the library.
def command(
    ctx: click.Context,
    space_path: Path,
    data_path: Path,
    val_path: Path,
    framework: str,
    teacher: Path | None,
    generations: int,
    population: int,
    elite: int,
    output: Path,
    max_latency_ms: float | None,
    pareto: bool,
    workers: int,
    dask_address: str | None,
    resume: bool,
    log_path: Path | None,
    plot_path: Path | None,
    baseline: Path | None,
    epochs: int | None,
    max_minutes: float | None,
    remeasure_runs: int,
    seed: int,
    workdir: Path | None,
    as_json: bool,
) -> None:
    """Search a space of CNNs with a genetic algorithm; write the best model (or the Pareto front).

    Each candidate is built in PyTorch (or Keras 3 with --framework keras), trained briefly
    (distilled when --teacher is given), exported to ONNX, and scored by its accuracy on --val
    and its p50 latency, both measured in onnxruntime. Progress goes to stderr; the summary to stdout.

    \b
    Examples:
      onnxopt search --space examples/search_space.toml --data models/digits_train.npz \\
          --val models/digits_val.npz -o build/best.onnx --baseline models/digits_cnn.onnx
      onnxopt search ... --pareto --plot build/front.png --workers 2
      onnxopt search ... --max-latency-ms 0.03 --resume
      onnxopt search ... --framework keras
    """
    from onnxopt.core.errors import GateFailedError
    from onnxopt.core.files import FilePlan, Outputs
    from onnxopt.nas.run import SearchRunConfig, run_search

    plan = FilePlan.of(
        reads={"--space": space_path, "--data": data_path, "--val": val_path, "--teacher": teacher,
               "--baseline": baseline},
        writes={"-o": output, "--log": log_path, "--plot": plot_path},
        dirs={"--workdir": workdir if workdir is not None else output.with_name(output.name + ".search")},
    )  # fmt: skip
    plan.check()  # before anything is created: no output may clobber an input or another output
    quiet = bool(ctx.obj and ctx.obj.get("quiet"))
    config = option_config(  # validates the options before the (long) search starts
        SearchRunConfig,
        framework=framework, generations=generations, population=population, elite=elite,
        max_latency_ms=max_latency_ms, pareto=pareto, workers=workers, dask_address=dask_address,
        resume=resume, epochs=epochs, max_minutes=max_minutes, remeasure_runs=remeasure_runs, seed=seed,
    )
    option_config(config.search_config)  # population vs elite, ...: usage errors, before any work

    def progress(s: Any) -> None:
        if quiet:
            return
        best = f"{s.best:.2f}%" if s.best is not None else "-"
        med = f"{s.median:.2f}%" if s.median is not None else "-"
        extra = f", feasible {s.feasible}" if max_latency_ms is not None else ""
        click.echo(
            f"generation {s.generation + 1}/{generations}: {s.evaluated} evaluated, {s.reused} reused, "
            f"{s.failed} failed; best accuracy {best}, median {med}, front {s.pareto_size}{extra} "
            f"({s.seconds:.0f} s)",
            err=True,
        )

    with Outputs() as outputs:  # the model(s) and the plot, or (on any failure) none of them
        result = run_search(
            space_path, data_path, val_path, output, config, teacher=teacher, baseline=baseline,
            workdir=workdir, log_path=log_path, plot_path=plot_path, progress=progress, outputs=outputs,
        )
        outputs.commit()
    summary = result.to_dict()
    if as_json:
        echo_json(summary)
    else:
        _print_table(summary, result.gene_names)
    if result.gate_error is not None:
        raise GateFailedError(result.gate_error)


def _print_table(summary: dict[str, Any], names: tuple[str, ...]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from onnxopt.nas.space import describe_genome

    console = Console()
    t = Table(title=f"search: {summary['evaluations']} candidates evaluated ({summary['failed']} failed)")
    for col in ("model", "accuracy", "latency p50", "speedup vs baseline", "params", "size", "genome"):
        t.add_column(col, overflow="fold")
    base = summary["baseline"]
    if base is not None:
        t.add_row("baseline", f"{base['accuracy']:.2f}%", f"{base['latency_ms']:.4f} ms", "1.00x", "", "",
                  escape(Path(base["path"]).name))
    for r in summary["models"]:
        sp = "-"
        if "speedup" in r:
            sp = f"{r['speedup']:.2f}x [{r['ci_low']:.2f}, {r['ci_high']:.2f}]"
        t.add_row(
            escape(Path(r.get("file", r["name"])).name), f"{r['accuracy']:.2f}%", f"{r['latency_ms']:.4f} ms", sp,
            f"{r['params']:,}", human_bytes(r["size_bytes"]), escape(describe_genome(r["genome"], names)),
        )
    console.print(t)
    console.print(f"log: {escape(summary['log'])}  work dir: {escape(summary['workdir'])}")
