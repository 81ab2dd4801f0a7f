"""`onnxopt bench`: latency, throughput and memory of models, measured side by side."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from onnxopt.cli._options import BenchOptions, bench_options, echo_json, human_bytes, json_option

if TYPE_CHECKING:
    from onnxopt.measure.benchmark import BenchConfig, BenchResult
    from onnxopt.measure.stats import RatioCI

MODE_TEXT = {
    "interleaved": "interleaved rounds in one process (spinning off, start order rotated each round)",
    "subprocess": "each model in its own fresh process, alternating blocks",
}


@contextmanager
def progress_bar(enabled: bool, description: str) -> Iterator[Callable[[int, int], None] | None]:
    """A rich progress bar on stderr (only on a terminal); yields the progress callback."""
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    if not console.is_terminal:
        yield None
        return
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def comparisons(
    results: Sequence[BenchResult], quantile: float = 0.5
) -> list[tuple[BenchResult, BenchResult, RatioCI]]:
    """(candidate, reference, ratio) for each row vs the first model at the same threads
    (a single model's thread sweep: vs its first setting)."""
    from onnxopt.measure.stats import latency_ratio

    out = []
    names = list(dict.fromkeys(r.name for r in results))
    for r in results:
        if len(names) > 1:
            ref = next(x for x in results if x.name == names[0] and x.threads == r.threads)
        else:
            ref = results[0]
        if ref is r:
            continue
        out.append((r, ref, latency_ratio(r, ref, quantile=quantile)))
    return out


def _console() -> Any:
    from rich.console import Console

    console = Console()
    # Piped output: do not squeeze the wide tables into 80 columns.
    return console if console.is_terminal else Console(width=200)


def print_results(results: Sequence[BenchResult], config: BenchConfig, title: str = "latency (ms)") -> None:
    """Print the results table (and the measurement mode) with rich."""
    from rich.markup import escape
    from rich.table import Table

    console = _console()
    table = Table(title=title)
    cols = ["model", "threads", "p50", "p90", "p95", "p99", "mean", "std", "min", "max",
            "cv %", "inf/s", "create ms", "size"]
    if config.measure_memory:
        cols.append("peak RSS")
    for c in cols:
        table.add_column(c, justify="left" if c == "model" else "right", no_wrap=c != "model")
    for r in results:
        s = r.stats
        row = [
            escape(r.name), str(r.threads or "default"),
            *(f"{v:.3f}" for v in (s.p50_ms, s.p90_ms, s.p95_ms, s.p99_ms, s.mean_ms, s.std_ms, s.min_ms, s.max_ms)),
            f"{100 * s.cv:.1f}", f"{s.throughput_per_s:,.0f}", f"{r.session_create_ms:.1f}", human_bytes(r.file_size),
        ]
        if config.measure_memory:
            row.append("-" if r.peak_rss_mb is None else f"{r.peak_rss_mb:.1f} MiB")
        table.add_row(*row)
    console.print(table)
    first = results[0]
    mode = MODE_TEXT[config.isolation]
    if config.isolation == "interleaved" and first.allow_spinning:
        mode = "one session in one process (spinning on)"
    console.print(
        f"mode: {mode}; provider {first.provider}; batch {config.batch}; "
        f"{first.stats.n} timed runs per model after {config.warmup} warm-up"
        + ("; peak RSS measured in a fresh subprocess" if config.measure_memory else "")
    )


def print_comparisons(comps: Sequence[tuple[BenchResult, BenchResult, RatioCI]]) -> None:
    """Print each candidate's p50 ratio to its reference with the 95% CI."""
    from rich.markup import escape
    from rich.table import Table

    q = comps[0][2].quantile if comps else 0.5
    stat = "p50" if q == 0.5 else f"p{100 * q:g}"
    over = "processes and runs" if comps and comps[0][0].isolation == "subprocess" else "rounds"
    table = Table(title=f"ratio to reference ({stat} latency, 95% bootstrap CI over {over})")
    for c in ("model", "reference", "ratio", "95% CI", "speedup", "verdict"):
        table.add_column(c, justify="left" if c in ("model", "reference", "verdict") else "right")
    for cand, ref, ci in comps:
        if not ci.significant:
            verdict = "not significant"
        else:
            verdict = "faster" if ci.ratio < 1 else "slower"
        table.add_row(
            escape(cand.label), escape(ref.label), f"{ci.ratio:.3f}", f"[{ci.low:.3f}, {ci.high:.3f}]",
            f"{ci.speedup:.2f}x", verdict,
        )
    _console().print(table)


def results_json(
    results: Sequence[BenchResult],
    config: BenchConfig,
    comps: Sequence[tuple[BenchResult, BenchResult, RatioCI]],
    samples: bool = False,
) -> dict[str, Any]:
    """The JSON document `bench --json` prints."""
    return {
        "mode": config.isolation,
        "mode_description": MODE_TEXT[config.isolation],
        "settings": {
            "provider": config.session.provider,
            "inter_op_threads": config.session.inter_op_threads,
            "opt_level": config.session.opt_level,
            "allow_spinning": results[0].allow_spinning if results else config.session.allow_spinning,
            "batch": config.batch,
            "warmup": config.warmup,
            "runs": config.runs,
            "duration_s": config.duration_s,
            "seed": config.seed,
        },
        "results": [r.to_dict(samples=samples) for r in results],
        "comparisons": [
            {"model": c.name, "threads": c.threads, "reference": r.name, "reference_threads": r.threads,
             **ci.to_dict()}
            for c, r, ci in comps
        ],
    }


@click.command("bench")
@click.argument("models", nargs=-1, type=click.Path(path_type=Path, dir_okay=True, exists=False))
@bench_options
@click.option("--data", type=click.Path(path_type=Path), default=None, help=".npz with real inputs (keys = input names).")
@click.option("--compare", "show_compare", is_flag=True, help="Print each model's ratio to the first, with a 95% CI.")
@click.option("--plot", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Save latency distributions side by side to this .png (needs onnxopt[report]).")
@click.option("--samples", "with_samples", is_flag=True, help="Include every latency sample in --json.")
@click.option("--list-providers", is_flag=True, help="Print the available execution providers and exit.")
@json_option
def command(
    models: tuple[Path, ...],
    bench: BenchOptions,
    data: Path | None,
    show_compare: bool,
    plot: Path | None,
    with_samples: bool,
    list_providers: bool,
    as_json: bool,
) -> None:
    """Measure latency, throughput (and with --memory, peak RSS) of one or more MODELS.

    Several models are measured side by side with the same settings and inputs, in
    interleaved rounds (default) or each in its own process (--isolation subprocess).

    \b
    Examples:
      onnxopt bench models/digits_cnn.onnx
      onnxopt bench model.onnx model.int8.onnx --compare --runs 200
      onnxopt bench model.onnx --threads 1,2 --compare --json
      onnxopt bench model.onnx --shape input=8,3,224,224 --memory --plot latency.png
    """
    if list_providers:
        _print_providers(as_json)
        return
    if not models:
        raise click.UsageError("give at least one MODEL (or --list-providers)")
    from onnxopt.core.errors import InvalidOptionError
    from onnxopt.core.files import FilePlan, staged
    from onnxopt.core.model import load_model
    from onnxopt.measure.benchmark import benchmark, data_feed

    plan = FilePlan.of(reads={"MODEL": models, "--data": data}, writes={"--plot": plot})
    plan.check()  # before any work: the plot may not clobber a model or the data
    config = bench.config()
    if plot is not None:
        from onnxopt.measure.plots import require_matplotlib

        if plot.suffix.lower() not in (".png", ".svg", ".pdf"):
            raise InvalidOptionError(f"--plot {plot}: use a .png, .svg or .pdf file name")
        require_matplotlib()
    feed = data_feed(load_model(models[0]), data, bench.batch) if data is not None else None
    names = [m.name for m in models]
    with progress_bar(not as_json, "benchmarking") as cb:
        results = benchmark(
            [str(m) for m in models], config, feed=feed, names=names, progress=cb,
            threads=bench.threads if bench.threads and len(bench.threads) > 1 else None,
        )
    comps = comparisons(results, bench.ratio_quantile) if show_compare and len(results) > 1 else []
    if plot is not None:
        from onnxopt.measure.plots import latency_plot

        with staged(plan) as outputs:
            latency_plot(results, outputs.path(plot), title=f"latency ({config.isolation})")
    if as_json:
        doc = results_json(results, config, comps, samples=with_samples)
        if plot is not None:
            doc["plot"] = str(plot)
        echo_json(doc)
        return
    print_results(results, config)
    if comps:
        print_comparisons(comps)
    if plot is not None:
        click.echo(f"plot: {plot}")


def _print_providers(as_json: bool) -> None:
    import onnxruntime as ort

    from onnxopt.core.runtime import CPU_SIDE_PROVIDERS

    available = ort.get_available_providers()
    if as_json:
        echo_json({"available": available, "cpu_side": [p for p in available if p in CPU_SIDE_PROVIDERS]})
        return
    for p in available:
        click.echo(p + ("" if p in CPU_SIDE_PROVIDERS else "  (not CPU-side)"))
