"""`onnxopt bench`: latency, throughput and memory of models, measured side by side."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from onnxopt.cli._options import echo_json, human_bytes, json_option, session_options

if TYPE_CHECKING:
    from onnx import ModelProto

    from onnxopt.core.feeds import Feed
    from onnxopt.measure.benchmark import BenchConfig, BenchResult
    from onnxopt.measure.stats import RatioCI

MODE_TEXT = {
    "interleaved": "interleaved rounds in one process (spinning off, start order rotated each round)",
    "subprocess": "each model in its own fresh process, alternating blocks",
}


def parse_threads(text: str | None) -> list[int] | None:
    """'1,2' -> [1, 2]; None -> None (the default: physical cores)."""
    from onnxopt.core.errors import InvalidInputError

    if text is None:
        return None
    try:
        values = [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError as e:
        raise InvalidInputError(f"--threads {text!r}: expected integers like 1,2") from e
    if not values or any(v < 0 for v in values):
        raise InvalidInputError(f"--threads {text!r}: expected non-negative integers like 1,2")
    return list(dict.fromkeys(values))


def bench_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Options shared by bench and compare: measurement settings and inputs."""
    f = click.option("--seed", type=int, default=0, show_default=True, help="Seed of synthesized inputs.")(f)
    f = click.option(
        "--ratio-quantile",
        type=click.FloatRange(0.0, 1.0),
        default=0.5,
        show_default=True,
        help="Latency quantile ratios compare (0.5: medians; 0.25 is steadier on a busy machine).",
    )(f)
    f = click.option(
        "--spin/--no-spin",
        default=False,
        show_default=True,
        help="Let idle intra-op threads spin (onnxruntime's default). Honoured for a single session "
        "or --isolation subprocess; interleaved runs of several sessions always turn it off.",
    )(f)
    f = click.option(
        "--memory", is_flag=True, help="Also measure peak RSS of each session (fresh subprocess; slower)."
    )(f)
    f = click.option(
        "--isolation",
        type=click.Choice(["interleaved", "subprocess"]),
        default="interleaved",
        show_default=True,
        help="Interleaved rounds in one process, or each model in its own process.",
    )(f)
    f = click.option("--warmup", type=int, default=5, show_default=True, help="Untimed runs per model first.")(f)
    f = click.option(
        "--duration", type=float, default=None, help="Keep measuring for this many seconds (at least --runs)."
    )(f)
    f = click.option("--runs", type=int, default=50, show_default=True, help="Timed runs per model.")(f)
    f = click.option(
        "--shape", "shapes", multiple=True, metavar="NAME=D0,D1,..", help="Concrete shape of an input."
    )(f)
    f = click.option("--batch", type=int, default=1, show_default=True, help="Batch size of each run.")(f)
    f = click.option(
        "--threads", default=None, metavar="N[,N..]", help="Intra-op threads; a list sweeps (default: physical cores)."
    )(f)
    return session_options(f)


def make_config(
    threads: list[int] | None,
    provider: str,
    inter_threads: int,
    opt_level: str,
    batch: int,
    shapes: Sequence[str],
    runs: int,
    duration: float | None,
    warmup: int,
    isolation: str,
    memory: bool,
    seed: int,
    spin: bool = False,
) -> BenchConfig:
    """A BenchConfig from the CLI options (the first thread count is the session's)."""
    from onnxopt.core.feeds import parse_shape_overrides
    from onnxopt.core.runtime import SessionConfig, physical_cores
    from onnxopt.measure.benchmark import BenchConfig

    session = SessionConfig(
        provider=provider,
        intra_op_threads=threads[0] if threads else physical_cores(),
        inter_op_threads=inter_threads,
        opt_level=opt_level,
        allow_spinning=spin,
    )
    return BenchConfig(
        session=session,
        warmup=warmup,
        runs=runs,
        duration_s=duration,
        batch=batch,
        seed=seed,
        isolation=isolation,
        measure_memory=memory,
        shape_overrides=parse_shape_overrides(shapes) or None,
    )


def load_data_feed(model: ModelProto, data: Path, batch: int, labels_key: str = "labels") -> Feed:
    """The first `batch` samples of an .npz for the model's inputs (checked; one line per mismatch)."""
    from onnxopt.core.errors import InvalidInputError
    from onnxopt.core.feeds import (
        check_feed,
        first_batch,
        load_npz,
        model_feed_from_npz,
        with_free_batch,
    )

    arrays = load_npz(data)
    arrays.pop(labels_key, None)
    feed = model_feed_from_npz(with_free_batch(model), arrays, source=str(data))
    n = min(int(v.shape[0]) for v in feed.values()) if feed else 0
    if n < batch:
        raise InvalidInputError(f"{data}: has {n} samples, fewer than --batch {batch}")
    out = first_batch(feed, batch)
    check_feed(model, out, f"{data} (first {batch} samples; --batch)")
    return out


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
    threads: str | None,
    provider: str,
    inter_threads: int,
    opt_level: str,
    batch: int,
    shapes: tuple[str, ...],
    runs: int,
    duration: float | None,
    warmup: int,
    isolation: str,
    memory: bool,
    seed: int,
    ratio_quantile: float,
    spin: bool,
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
    from onnxopt.core.errors import InvalidInputError
    from onnxopt.core.model import load_model
    from onnxopt.measure.benchmark import benchmark

    thread_list = parse_threads(threads)
    config = make_config(thread_list, provider, inter_threads, opt_level, batch, shapes, runs, duration,
                         warmup, isolation, memory, seed, spin)
    protos = [load_model(m) for m in models]
    feed = load_data_feed(protos[0], data, batch) if data is not None else None
    if plot is not None:
        from onnxopt.measure.plots import require_matplotlib

        require_matplotlib()
        if plot.suffix.lower() not in (".png", ".svg", ".pdf"):
            raise InvalidInputError(f"--plot {plot}: use a .png, .svg or .pdf file name")
    names = [m.name for m in models]
    with progress_bar(not as_json, "benchmarking") as cb:
        results = benchmark(
            [str(m) for m in models], config, feed=feed, names=names, progress=cb,
            threads=thread_list if thread_list and len(thread_list) > 1 else None,
        )
    comps = comparisons(results, ratio_quantile) if show_compare and len(results) > 1 else []
    if plot is not None:
        from onnxopt.measure.plots import latency_plot

        latency_plot(results, plot, title=f"latency ({config.isolation})")
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
