"""`onnxopt compare`: fidelity (per output, accuracy) and latency of a candidate against a reference."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from onnxopt.cli._options import (
    BenchOptions,
    bench_options,
    echo_json,
    json_option,
    max_accuracy_drop_option,
    min_cosine_option,
    min_speedup_option,
    number_option,
)

if TYPE_CHECKING:
    from onnxopt.measure.benchmark import BenchConfig
    from onnxopt.measure.compare import Comparison
    from onnxopt.measure.fidelity import FidelityReport


def print_fidelity(report: FidelityReport, feed_source: str) -> None:
    """Print per-output fidelity and the accuracies with rich."""
    from rich.markup import escape
    from rich.table import Table

    from onnxopt.cli.bench_cmd import _console

    console = _console()
    table = Table(title=f"fidelity on {report.samples} samples ({escape(feed_source)})")
    for c in ("output", "max abs diff", "mean abs diff", "cosine (mean)", "worst sample", "top-1 agreement"):
        table.add_column(c, justify="left" if c == "output" else "right")
    for o in report.outputs:
        table.add_row(
            escape(o.name), f"{o.max_abs:.3g}", f"{o.mean_abs:.3g}", f"{o.cosine:.6f}", f"{o.worst_cosine:.6f}",
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
@number_option("--samples", "n_samples", kind=int, low=1, default=64, show_default=True,
               help="Synthesized samples for fidelity when --data is not given.")
@max_accuracy_drop_option("Exit 3 if accuracy drops by more than PP percentage points (needs labels).")
@min_speedup_option("Exit 3 if the candidate's measured speedup (at --ratio-quantile) is below X.")
@min_cosine_option("Exit 3 if any output's mean cosine similarity is below C.")
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
    bench: BenchOptions,
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
    from onnxopt.cli.bench_cmd import progress_bar
    from onnxopt.core.errors import GateFailedError
    from onnxopt.measure.compare import CompareGates, compare_files

    if bench.threads and len(bench.threads) > 1:
        raise click.UsageError("compare takes one --threads value; use `onnxopt bench --threads 1,2` to sweep")
    config = bench.config()
    with progress_bar(not as_json and not no_latency, "benchmarking") as cb:
        result = compare_files(
            reference, candidate, config, latency=not no_latency, data=data, labels_key=labels_key,
            samples=n_samples, quantile=bench.ratio_quantile,
            gates=CompareGates(max_accuracy_drop, min_speedup, min_cosine), progress=cb,
        )
    if as_json:
        echo_json(_json(result, reference, candidate, config))
    else:
        from onnxopt.cli.bench_cmd import print_comparisons, print_results

        print_fidelity(result.fidelity, result.data)
        if result.results and result.ratio is not None:
            print_results(result.results, config)
            print_comparisons([(result.results[1], result.results[0], result.ratio)])
    if result.failed:
        raise GateFailedError("gate failed: " + "; ".join(result.failed))


def _json(result: Comparison, reference: Path, candidate: Path, config: BenchConfig) -> dict[str, Any]:
    """The document `compare --json` prints."""
    from onnxopt.cli.bench_cmd import results_json

    doc: dict[str, Any] = {
        "reference": str(reference),
        "candidate": str(candidate),
        "data": result.data,
        "fidelity": result.fidelity.to_dict(),
    }
    if result.results and result.ratio is not None:
        doc["latency"] = results_json(result.results, config, [(result.results[1], result.results[0], result.ratio)])
        doc["speedup"] = result.ratio.speedup
    doc["gates_failed"] = list(result.failed)
    return doc
