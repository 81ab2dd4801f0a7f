"""`onnxopt optimize`: run a recipe, verify, benchmark, gate and report (the build-pipeline command)."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import click

from onnxopt.cli._options import (
    echo_json,
    json_option,
    max_accuracy_drop_option,
    min_cosine_option,
    min_speedup_option,
    model_argument,
    number_option,
    option_config,
    output_option,
    progress_printer,
    seed_option,
    threads_option,
)

_PATH = click.Path(path_type=Path, dir_okay=False)


def _limit(name: str, help_text: str) -> Any:
    return number_option(name, low=0, low_open=True, default=None, help=help_text)


@click.command("optimize")
@model_argument
@output_option(required=False, help="Output .onnx (default: MODEL.opt.onnx beside the input).")
@click.option("--recipe", type=click.Path(path_type=Path), default=None, help="Recipe TOML (default: chosen for the model; see --show-recipe).")
@click.option("--data", type=click.Path(path_type=Path), default=None, help="Validation .npz (inputs + optional 'labels') for verification and accuracy.")
@click.option("--calib-data", type=click.Path(path_type=Path), default=None, help="Calibration data for static quantization (.npz, folder of .npy/.npz or images).")
@click.option("--objective", type=click.Choice(["latency", "size"]), default="latency", show_default=True, help="latency: keep int8 only when measured clearly faster; size: the smallest model. Both hold the fidelity floor.")
@click.option("--show-recipe", is_flag=True, help="Print the recipe that would run, as TOML, and exit.")
@seed_option("Seed for synthetic inputs, calibration and the bootstrap.")
@max_accuracy_drop_option("Floor and gate: max accuracy points lost (needs --data with labels; default 0.5 when labels are given).")
@min_cosine_option("Floor and gate: min output cosine vs the input model, per sample (default 0.99; lower it explicitly, e.g. 0.9).")
@min_speedup_option("Gate: min p50 speedup (point estimate) vs the input model.")
@_limit("--max-size-mb", "Gate: max output size in MB (10^6 bytes).")
@_limit("--max-latency-ms", "Gate: max p50 latency of the output in ms.")
@click.option("--report-json", type=_PATH, default=None, help="Write the full report as JSON.")
@click.option("--report-md", type=_PATH, default=None, help="Write a Markdown report (fits $GITHUB_STEP_SUMMARY).")
@click.option("--report-html", type=_PATH, default=None, help="Write a self-contained HTML report with plots (report extra).")
@click.option("--no-output-on-fail", is_flag=True, help="Do not write the model when a gate fails.")
@click.option("--decisions", "decisions_path", type=_PATH, default=None,
              help="Decisions file: recorded by the first run (when gates pass), replayed after (no measuring, same bytes).")
@threads_option("Intra-op threads for benchmarking (0: physical cores).")
@number_option("--bench-runs", kind=int, low=2, default=50, show_default=True, help="Minimum timed runs per stage (interleaved).")
@number_option("--bench-seconds", low=0, low_open=True, default=2.0, show_default=True, help="Benchmark for at least this long (more rounds: tighter CIs).")
@number_option("--batch", kind=int, low=1, default=1, show_default=True, help="Batch latency is measured at (a fixed-batch model: its own).")
@click.option("--shape", "shapes", multiple=True, metavar="NAME=D0,D1,..", help="Deployment shape of an input with symbolic dims (repeatable).")
@json_option
@click.pass_context
# Longer than ~80 lines only because click passes one parameter per option: the signature and
# the help text are half of it; the work itself is in the library.
def command(
    ctx: click.Context,
    model: Path,
    output: Path | None,
    recipe: Path | None,
    data: Path | None,
    calib_data: Path | None,
    show_recipe: bool,
    report_json: Path | None,
    report_md: Path | None,
    report_html: Path | None,
    no_output_on_fail: bool,
    decisions_path: Path | None,
    as_json: bool,
    **settings: Any,
) -> None:
    """Optimize MODEL for CPU inference: run a recipe of passes, verify every stage against
    MODEL, benchmark all stages side by side, keep int8 only where it is clearly faster, reject
    any stage below the fidelity floor (cosine >= 0.99, accuracy drop <= 0.5 pt with labels,
    unless --min-cosine / --max-accuracy-drop lower it), check gates.

    \b
    Exit codes: 0 ok, 1 error, 2 usage error, 3 a gate failed.
    \b
    Examples:
      onnxopt optimize model.onnx --data val.npz --calib-data calib.npz
      onnxopt optimize model.onnx --show-recipe > recipe.toml
      onnxopt optimize model.onnx --recipe recipe.toml --data val.npz \\
          --max-accuracy-drop 0.5 --min-speedup 1.2 --report-md summary.md
      onnxopt optimize model.onnx --calib-data calib.npz --decisions model.decisions.json
    """
    from onnxopt.core.errors import MissingLabelsError
    from onnxopt.core.external import data_file, data_files
    from onnxopt.core.files import FilePlan
    from onnxopt.core.model import load_model
    from onnxopt.core.progress import listening
    from onnxopt.optimization import run
    from onnxopt.optimization.recipe import load_recipe

    config = _config(**settings)
    out = output or run.default_output(model)
    reports = {"--report-json": report_json, "--report-md": report_md, "--report-html": report_html}
    # A decisions file is read when it exists (replay) and written otherwise (record).
    replaying = decisions_path is not None and decisions_path.exists()
    record_to = None if replaying or show_recipe else decisions_path
    plan = FilePlan.of(
        reads={"input model": model, "input model's external data": data_files(model), "--recipe": recipe,
               "--data": data, "--calib-data": calib_data,
               "--decisions": decisions_path if replaying else None},
        writes={} if show_recipe else {"-o": out, "-o's external data": data_file(out), **reports,
                                       "--decisions": record_to},
    )
    plan.check()  # before any work: no output may clobber an input or another output
    # The graph is enough to plan and to check the data; run_plan loads the weights from the file
    # itself, hashes them and keeps them in its work directory only (not in memory through the run).
    proto = load_model(model, load_external_data=False)
    decided = run.plan(proto, load_recipe(recipe) if recipe is not None else None, config)
    if show_recipe:
        click.echo(decided.recipe.to_toml(), nl=False)
        return
    if report_html is not None:
        from onnxopt.optimization.report import check_html_available

        check_html_available()
    val, calib = run.load_data(proto, data, calib_data)
    del proto  # an inline model's weights: not held through the run
    replay = None
    if replaying:
        from onnxopt.optimization.decisions import load_decisions

        replay = load_decisions(typing.cast(Path, decisions_path))
    try:
        with listening(progress_printer(as_json)):
            result = run.run_plan(model, decided, val=val, calib=calib, decisions=replay)
    except MissingLabelsError as e:  # a missing --data is a usage error here, as for the other options
        raise click.UsageError(str(e)) from e
    from onnxopt.optimization import report

    prov = report.provenance_of(
        result, model_path=model, feed=val[0] if val is not None else None, invocation=_command_line(ctx)
    )
    final = _output_model(result, write_on_gate_failure=not no_output_on_fail)
    renderers = _renderers(report_json, report_md, report_html)
    written = _write_all(plan, result, prov, out, final, renderers, record_to)
    if as_json:
        echo_json({**report.report_dict(result, prov), "output": str(written) if written else None})
    else:
        _print_table(result, written, out)
        if decisions_path is not None:
            click.echo(_decisions_line(decisions_path, replayed=replay is not None, recorded=result.gates_passed))
    if not result.gates_passed:
        raise run.gate_error(result, written)


def _config(
    objective: str, seed: int, threads: int, bench_runs: int, bench_seconds: float, batch: int = 1,
    shapes: tuple[str, ...] = (), **gates: float | None
) -> Any:
    """The OptimizeConfig of the options; an out-of-range value is a usage error."""
    from onnxopt.core.feeds import parse_shape_overrides
    from onnxopt.optimization.types import Gates, OptimizeConfig

    return option_config(
        OptimizeConfig, objective=objective, seed=seed, threads=threads, bench_runs=bench_runs,
        bench_seconds=bench_seconds, gates=option_config(Gates, **gates), batch=batch,
        shape_overrides=parse_shape_overrides(shapes) or None,
    )


def _write_all(
    plan: Any, result: Any, prov: Any, out: Path, final: Any, renderers: list[tuple[Path, Any]], record_to: Path | None
) -> Path | None:
    """The model, every report and the decisions record, or (on any failure) none of them."""
    from onnxopt.core.files import staged

    with staged(plan) as outputs:
        written = outputs.model(out, final) if final is not None else None
        for path, render in renderers:
            outputs.text(path, render(result, provenance=prov))
        if record_to is not None and result.gates_passed:
            outputs.text(record_to, result.decisions.to_json())
    return written


def _decisions_line(path: Path, *, replayed: bool, recorded: bool) -> str:
    if replayed:
        return f"replayed the decisions in {path} (nothing measured)"
    return f"recorded the decisions in {path}" if recorded else f"decisions not recorded in {path}: a gate failed"


def _output_model(result: Any, *, write_on_gate_failure: bool) -> Any:
    """The model to write: the result, marked when a gate failed, or None (--no-output-on-fail)."""
    if result.gates_passed:
        return result.model
    if not write_on_gate_failure:
        return None
    from onnxopt.optimization.decide import mark_gate_failed

    return mark_gate_failed(result.model, result.failed_gates)


def _renderers(json_path: Path | None, md_path: Path | None, html_path: Path | None) -> list[tuple[Path, Any]]:
    """(path, render function) of each report asked for."""
    from onnxopt.optimization import report

    pairs = ((json_path, report.to_json), (md_path, report.to_markdown), (html_path, report.to_html))
    return [(path, render) for path, render in pairs if path is not None]


def _command_line(ctx: click.Context) -> str:
    """The command as given (options the user set, in canonical spelling), for the reports."""
    import shlex

    words = ctx.command_path.split()
    for param in ctx.command.params:
        source = ctx.get_parameter_source(param.name or "")
        value = ctx.params.get(param.name or "")
        if source is not click.core.ParameterSource.COMMANDLINE or value is None:
            continue
        if isinstance(param, click.Argument):
            words.append(str(value))
        elif isinstance(param, click.Option) and param.is_flag:
            words.append(param.opts[-1] if value else (param.secondary_opts or param.opts)[-1])
        elif isinstance(param, click.Option):
            words += [param.opts[-1], str(value)]
    return shlex.join(words)


def _print_table(result: Any, written: Path | None, out: Path) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from onnxopt.optimization.report import (
        COLUMNS,
        headline,
        stage_rows,
        summary_line,
        text_summary,
    )

    console = Console()
    if console.width < 140:  # keep the table on one line per stage in CI logs and narrow terminals
        console = Console(width=140)
    table = Table(title="onnxopt optimize: per stage, measured side by side")
    for c in COLUMNS:
        table.add_column(c, justify="left" if c in ("stage", "kept") else "right")
    for row in stage_rows(result):
        style = "bold green" if row["kept"] == "final" else None
        table.add_row(*(escape(row[c]) for c in COLUMNS), style=style)
    console.print(table)
    console.print(escape(f"verification data: {result.data}"), soft_wrap=True)
    for line in headline(result):
        style = "bold yellow" if line.startswith("WARNING") else "bold red"
        console.print(f"[{style}]{escape(line)}[/]", soft_wrap=True)  # one line, never wrapped
    console.print(escape(summary_line(result)), soft_wrap=True)
    text = text_summary(result)
    if text:
        console.print(escape(text), soft_wrap=True)
    if written is not None:
        console.print(f"wrote {escape(str(written))}")
    else:
        console.print(f"not written: {escape(str(out))} (--no-output-on-fail)")
