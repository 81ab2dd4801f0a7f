"""`onnxopt compare`: fidelity (per output, accuracy) and latency of a candidate against a reference."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from onnxopt.cli._options import echo_json, json_option
from onnxopt.cli.bench_cmd import bench_options

if TYPE_CHECKING:
    from onnxopt.measure.fidelity import FidelityReport


def check_gates(
    report: FidelityReport,
    speedup: float | None,
    max_accuracy_drop: float | None,
    min_speedup: float | None,
    min_cosine: float | None,
) -> list[str]:
    """Messages of the gates that failed (empty when every requested gate passed)."""
    failed = []
    drop = report.accuracy_drop
    if max_accuracy_drop is not None and drop is not None and drop > max_accuracy_drop:
        failed.append(f"accuracy drop {drop:.2f} pp > --max-accuracy-drop {max_accuracy_drop:g}")
    if min_cosine is not None and report.min_cosine < min_cosine:
        failed.append(f"min cosine {report.min_cosine:.6f} < --min-cosine {min_cosine:g}")
    if min_speedup is not None and speedup is not None and speedup < min_speedup:
        failed.append(f"speedup {speedup:.3f}x < --min-speedup {min_speedup:g}")
    return failed


def print_fidelity(report: FidelityReport, feed_source: str) -> None:
    """Print per-output fidelity and the accuracies with rich."""
    from rich.markup import escape
    from rich.table import Table

    from onnxopt.cli.bench_cmd import _console

    console = _console()
    table = Table(title=f"fidelity on {report.samples} samples ({escape(feed_source)})")
    for c in ("output", "max abs diff", "mean abs diff", "cosine", "top-1 agreement"):
        table.add_column(c, justify="left" if c == "output" else "right")
    for o in report.outputs:
        table.add_row(
            escape(o.name), f"{o.max_abs:.3g}", f"{o.mean_abs:.3g}", f"{o.cosine:.6f}",
            "-" if o.top1_agreement is None else f"{o.top1_agreement:.2f}%",
        )
    console.print(table)
    if report.accuracy_reference is not None and report.accuracy_candidate is not None:
        console.print(
            f"accuracy: reference {report.accuracy_reference:.2f}%, candidate "
            f"{report.accuracy_candidate:.2f}%, drop {report.accuracy_drop:.2f} pp"
        )


@click.command("compare")
@click.argument("reference", type=click.Path(path_type=Path, dir_okay=True, exists=False))
@click.argument("candidate", type=click.Path(path_type=Path, dir_okay=True, exists=False))
@click.option("--data", type=click.Path(path_type=Path), default=None,
              help=".npz with inputs (keys = input names) and optionally labels.")
@click.option("--labels-key", default="labels", show_default=True, help="Key of the labels in --data.")
@click.option("--samples", "n_samples", type=int, default=64, show_default=True,
              help="Synthesized samples for fidelity when --data is not given.")
@click.option("--max-accuracy-drop", type=float, default=None, metavar="PP",
              help="Exit 3 if accuracy drops by more than PP percentage points (needs labels).")
@click.option("--min-speedup", type=float, default=None, metavar="X",
              help="Exit 3 if the candidate's measured speedup (at --ratio-quantile) is below X.")
@click.option("--min-cosine", type=float, default=None, metavar="C",
              help="Exit 3 if any output's mean cosine similarity is below C.")
@click.option("--no-latency", is_flag=True, help="Only fidelity; skip the latency comparison.")
@bench_options
@json_option
def command(
    reference: Path,
    candidate: Path,
    data: Path | None,
    labels_key: str,
    n_samples: int,
    max_accuracy_drop: float | None,
    min_speedup: float | None,
    min_cosine: float | None,
    no_latency: bool,
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
    as_json: bool,
) -> None:
    """Compare CANDIDATE to REFERENCE: outputs on the same inputs, accuracy, then latency.

    Fidelity per output: max/mean absolute difference, cosine similarity, and for
    classifier-like outputs top-1 agreement; with labels in --data, the accuracy of both
    and the drop. Gates (--max-accuracy-drop, --min-speedup, --min-cosine) exit with 3.

    \b
    Examples:
      onnxopt compare model.onnx model.int8.onnx --data val.npz
      onnxopt compare model.onnx model.int8.onnx --data val.npz --max-accuracy-drop 0.5 --min-speedup 1.2
    """
    from onnxopt.cli.bench_cmd import (
        load_data_feed,
        make_config,
        parse_threads,
        print_comparisons,
        print_results,
        progress_bar,
        results_json,
    )
    from onnxopt.core.errors import GateFailedError, InvalidInputError
    from onnxopt.core.feeds import parse_shape_overrides, synthesize_feed
    from onnxopt.core.model import load_model
    from onnxopt.measure.benchmark import benchmark
    from onnxopt.measure.fidelity import check_same_inputs, compare_models, load_eval_data
    from onnxopt.measure.stats import latency_ratio

    if n_samples < 1:
        raise InvalidInputError(f"--samples must be >= 1, got {n_samples}")
    if min_speedup is not None and no_latency:
        raise InvalidInputError("--min-speedup needs the latency comparison: drop --no-latency")
    thread_list = parse_threads(threads)
    if thread_list and len(thread_list) > 1:
        raise InvalidInputError("compare takes one --threads value; use `onnxopt bench --threads 1,2` to sweep")
    config = make_config(thread_list, provider, inter_threads, opt_level, batch, shapes, runs, duration,
                         warmup, isolation, memory, seed, spin)
    ref = load_model(reference)
    cand = load_model(candidate)
    check_same_inputs(ref, cand)
    labels = None
    if data is not None:
        feed, labels = load_eval_data(ref, data, labels_key)
        if labels is None and labels_key != "labels":
            raise InvalidInputError(f"{data}: no array named {labels_key!r} (--labels-key)")
        source = str(data)
    else:
        feed = synthesize_feed(ref, batch=n_samples, overrides=parse_shape_overrides(shapes) or None, seed=seed)
        source = f"synthesized, seed {seed}"
    if max_accuracy_drop is not None and labels is None:
        raise InvalidInputError(
            f"--max-accuracy-drop needs labels: pass --data with a {labels_key!r} array (or set --labels-key)"
        )
    fid = compare_models(ref, cand, feed, labels)

    results: list[Any] = []
    ratio = None
    if not no_latency:
        bench_feed = load_data_feed(ref, data, batch, labels_key) if data is not None else None
        with progress_bar(not as_json, "benchmarking") as cb:
            results = benchmark([ref, cand], config, feed=bench_feed,
                                names=[reference.name, candidate.name], progress=cb)
        ratio = latency_ratio(results[1], results[0], quantile=ratio_quantile)
    failed = check_gates(fid, ratio.speedup if ratio else None, max_accuracy_drop, min_speedup, min_cosine)

    if as_json:
        doc: dict[str, Any] = {
            "reference": str(reference),
            "candidate": str(candidate),
            "data": source,
            "fidelity": fid.to_dict(),
        }
        if results and ratio is not None:
            doc["latency"] = results_json(results, config, [(results[1], results[0], ratio)])
            doc["speedup"] = ratio.speedup
        doc["gates_failed"] = failed
        echo_json(doc)
    else:
        print_fidelity(fid, source)
        if results and ratio is not None:
            print_results(results, config)
            print_comparisons([(results[1], results[0], ratio)])
    if failed:
        raise GateFailedError("gate failed: " + "; ".join(failed))
