"""`onnxopt prune`: magnitude (unstructured) or channel (structured) pruning of an ONNX model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from onnxopt.cli._options import (
    echo_json,
    human_bytes,
    json_option,
    model_argument,
    number_option,
    option_config,
    output_option,
    progress_printer,
)

MAGNITUDE_ONLY = ("sparsity", "threshold", "global_", "include", "min_elements", "sparse_storage", "gzip")
CHANNELS_ONLY = ("ratio", "importance", "min_channels", "round_to")


@click.command("prune")
@model_argument
@output_option(required=True)
@click.option("--method", type=click.Choice(["magnitude", "channels"]), default="magnitude", show_default=True,
              help="magnitude: zero small weights (smaller files, same speed); channels: remove whole "
                   "channels (faster, smaller; needs fine-tuning to recover accuracy).")
@number_option("--sparsity", low=0, high=1, high_open=True, default=None,
               help="magnitude: fraction of weights set to zero [default: 0.5].")
@click.option("--global", "global_", is_flag=True, default=None,
              help="magnitude: one threshold over all candidate tensors instead of per tensor.")
@number_option("--threshold", low=0, default=None, help="magnitude: zero every weight with |w| < T instead.")
@click.option("--include", multiple=True, help="magnitude: also prune this initializer (repeatable).")
@number_option("--min-elements", kind=int, low=0, default=None,
               help="magnitude: skip tensors smaller than this [default: 256].")
@click.option("--sparse-storage", is_flag=True, default=None,
              help="magnitude: store pruned tensors compressed (bitmask + values); onnxruntime rebuilds them at load.")
@click.option("--gzip", is_flag=True, default=None, help="magnitude: also report gzip sizes (slow on big models).")
@number_option("--ratio", low=0, high=1, high_open=True, default=None,
               help="channels: fraction of each group's channels removed [default: 0.3].")
@click.option("--importance", type=click.Choice(["l1", "l2"]), default=None, help="channels: channel score [default: l1].")
@number_option("--min-channels", kind=int, low=1, default=None,
               help="channels: keep at least this many per group [default: 1].")
@number_option("--round-to", kind=int, low=1, default=None, help="channels: round kept counts up to a multiple (e.g. 8).")
@click.option("--skip", multiple=True, help="Node or initializer name to leave alone (repeatable).")
@click.option("--strict", is_flag=True, help="Exit 1 (and write nothing) when there is nothing to prune.")
@click.option("--data", type=click.Path(path_type=Path), default=None,
              help="Validation .npz (inputs, optional 'labels'): the fidelity floor is measured on it "
                   "(else on 8 seeded synthetic samples); with labels, accuracy before/after too.")
@number_option("--min-cosine", low=0, high=1, default=None,
               help="Floor: min per-sample output cosine vs the input model; below it the sparsity/ratio is "
                    "lowered (exit 3 if none holds) [default: 0.99; 0 turns it off].")
@number_option("--max-accuracy-drop", low=0, default=None,
               help="Floor with labelled --data: max accuracy drop in points [default: 0.5].")
@click.option("--shape", "shapes", multiple=True, metavar="NAME=D0,D1,..",
              help="Shape of an input with symbolic dims for the synthetic samples (repeatable).")
@json_option
def command(model: Path, output: Path, method: str, strict: bool, data: Path | None, skip: tuple[str, ...],
            min_cosine: float | None, max_accuracy_drop: float | None, shapes: tuple[str, ...],
            as_json: bool, **opts: Any) -> None:
    """Prune MODEL and write the result to OUTPUT.

    \b
    Magnitude pruning zeroes the smallest weights of Conv/Gemm/MatMul initializers. Zeros alone
    do NOT make onnxruntime's dense kernels faster; with --sparse-storage the file shrinks.
    Channel pruning removes whole channels through the graph (residual groups, concat, depthwise,
    flatten heads) and makes the model faster; fine-tune afterwards to recover accuracy.

    Fidelity floor: the pruned model is checked per sample against MODEL (output cosine >= 0.99,
    accuracy drop <= 0.5 pt with labels); below it the sparsity/ratio is lowered and a line says
    so; when no value holds, nothing is written and the exit code is 3.
    \b
    Examples:
      onnxopt prune model.onnx -o sparse.onnx --sparsity 0.5 --sparse-storage
      onnxopt prune model.onnx -o sparse.onnx --threshold 0.01 --skip fc.weight
      onnxopt prune model.onnx -o slim.onnx --method channels --ratio 0.5 --round-to 8 --data val.npz
    """
    wrong = CHANNELS_ONLY if method == "magnitude" else MAGNITUDE_ONLY
    given = [k for k in wrong if opts.get(k) not in (None, ())]
    if given:
        flags = ", ".join("--" + k.rstrip("_").replace("_", "-") for k in given)
        raise click.UsageError(f"{flags}: not an option of --method {method}")
    if method == "magnitude" and opts["sparsity"] is not None and opts["threshold"] is not None:
        raise click.UsageError("give --sparsity or --threshold, not both")

    from onnxopt.core.errors import OnnxoptError
    from onnxopt.core.external import data_file, data_files, uses_external
    from onnxopt.core.files import FilePlan, staged
    from onnxopt.core.model import load_model
    from onnxopt.core.progress import listening
    from onnxopt.pruning.channels.prune import ChannelConfig, prune_channels
    from onnxopt.pruning.channels.streamed import prune_channels_file
    from onnxopt.pruning.magnitude import MagnitudeConfig, prune_magnitude
    from onnxopt.pruning.streamed import on_disk_size, prune_magnitude_file, streams

    plan = FilePlan.of(reads={"input model": model, "input model's external data": data_files(model), "--data": data},
                       writes={"-o": output, "-o's external data": data_file(output)})
    plan.check()  # before any work: the output may not clobber an input
    proto = load_model(model, load_external_data=False)
    from_file = streams(model, proto)  # big: pruned tensor by tensor from the file
    if not from_file and uses_external(proto):
        proto = load_model(model)
    _validate(proto, model, from_file)
    floor, feed, labels = _floor(proto, data, min_cosine, max_accuracy_drop, shapes)
    if method == "magnitude":
        cfg: Any = option_config(
            MagnitudeConfig,
            sparsity=None if opts["threshold"] is not None else (opts["sparsity"] if opts["sparsity"] is not None else 0.5),
            threshold=opts["threshold"], global_=bool(opts["global_"]), skip=skip, include=opts["include"],
            min_elements=opts["min_elements"] if opts["min_elements"] is not None else 256,
            sparse_storage=bool(opts["sparse_storage"]), measure_gzip=bool(opts["gzip"]))
    else:
        cfg = option_config(
            ChannelConfig,
            ratio=opts["ratio"] if opts["ratio"] is not None else 0.3, importance=opts["importance"] or "l1",
            min_channels=opts["min_channels"] or 1, round_to=opts["round_to"] or 1, skip=skip)
    with staged(plan) as outputs:
        with listening(progress_printer(as_json)):
            if from_file:  # written into the staged output as it goes
                by_file = prune_magnitude_file if method == "magnitude" else prune_channels_file
                result = by_file(model, outputs.path(output), cfg, model=proto, floor=floor, feed=feed, labels=labels)
            elif method == "magnitude":
                result = prune_magnitude(proto, cfg, floor=floor, feed=feed, labels=labels)
            else:
                result = prune_channels(proto, cfg, floor=floor, feed=feed, labels=labels)
        report = dict(result.report)
        if not result.modified and strict:
            raise OnnxoptError(f"{model}: nothing to prune ({report.get('message', 'no change')}); --strict")
        if labels is not None and data is not None:
            report["accuracy"] = _accuracy(proto, model if from_file else proto,
                                           result.path if from_file else result.model, data)
        if not from_file:
            outputs.model(output, result.model)
    report["input_file_size"] = on_disk_size(model, proto if from_file else None)  # with its external data
    report["output_file_size"] = output.stat().st_size + (data_file(output).stat().st_size
                                                          if data_file(output).is_file() else 0)
    report["output"] = str(output)
    if as_json:
        echo_json(report)
        return
    _print(report, method)


def _validate(proto: Any, path: Path, from_file: bool) -> None:
    """The ONNX checker, an onnxruntime load and, when every input is floating point with a fixed
    sample shape (so random inputs are valid ones), one run: a model that fails them is not pruned.
    from_file: check and load the file at path (proto is its graph only)."""
    import numpy as np

    from onnxopt.core.errors import InvalidModelError
    from onnxopt.core.feeds import synthesize_feed
    from onnxopt.core.model import graph_inputs, validate_model
    from onnxopt.core.runtime import SessionConfig, create_session, lean_session, run

    try:
        validate_model(path if from_file else proto, check_runtime=False)
        sess = create_session(path if from_file else proto, lean_session(proto, SessionConfig(intra_op_threads=1)))
        specs = graph_inputs(proto)
        if specs and all(
            np.issubdtype(s.numpy_dtype, np.floating) and all(isinstance(d, int) and d > 0 for d in s.shape[1:])
            for s in specs
        ):
            run(sess, synthesize_feed(proto, batch=1))
    except InvalidModelError as e:  # checked from the file: the message names it already
        raise InvalidModelError(str(e) if str(path) in str(e) else f"{path}: {e}") from e


def _accuracy(proto: Any, before: Any, after: Any, data: Path) -> dict[str, float | None]:
    """Top-1 accuracy of before and after (protos or paths) on labelled data; proto: before's graph."""
    from onnxopt.core.errors import InvalidInputError
    from onnxopt.measure.fidelity import accuracy, load_eval_data

    feed, labels = load_eval_data(proto, data)
    if labels is None:
        raise InvalidInputError(f"{data}: no 'labels' array; accuracy needs labels")
    a0, a1 = accuracy(before, feed, labels), accuracy(after, feed, labels)
    return {"before": a0, "after": a1, "drop": a0 - a1}


def _floor(proto: Any, data: Path | None, min_cosine: float | None, max_accuracy_drop: float | None,
           shapes: tuple[str, ...]) -> tuple[Any, Any, Any]:
    """The fidelity floor and the data it is measured on: (FidelityFloor, feed or None, labels or None)."""
    from onnxopt.core.feeds import parse_shape_overrides
    from onnxopt.measure.fidelity import load_eval_data, require_labels
    from onnxopt.pruning.guard import DEFAULT_MAX_ACCURACY_DROP, DEFAULT_MIN_COSINE, FidelityFloor

    feed, labels = load_eval_data(proto, data) if data is not None else (None, None)
    if max_accuracy_drop is not None:
        require_labels(labels)
    floor = FidelityFloor(
        min_cosine=DEFAULT_MIN_COSINE if min_cosine is None else min_cosine,
        max_accuracy_drop=DEFAULT_MAX_ACCURACY_DROP if max_accuracy_drop is None else max_accuracy_drop,
        shape_overrides=parse_shape_overrides(shapes) or None)
    return floor, feed, labels


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _print(report: dict, method: str) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    if method == "magnitude":
        table = Table(title="magnitude pruning")
        for col in ("tensor", "shape", "elements", "sparsity before", "sparsity after"):
            table.add_column(col, justify="left" if col in ("tensor", "shape") else "right")
        for t in report["tensors"]:
            table.add_row(escape(t["name"]), "x".join(map(str, t["shape"])), f"{t['elements']:,}",
                          _pct(t["sparsity_before"]), _pct(t["sparsity_after"]))
        tot = report["total"]
        table.add_row("total", "", f"{tot['elements']:,}", _pct(tot["sparsity_before"]), _pct(tot["sparsity_after"]))
        console.print(table)
        st = report.get("storage", {})
        if st:
            line = f"size {human_bytes(st['size_before'])} -> {human_bytes(st['size_after'])}"
            if st.get("gzip_before") is not None:
                line += f"; gzip {human_bytes(st['gzip_before'])} -> {human_bytes(st['gzip_after'])}"
            console.print(escape(line + f" ({st.get('format')})"))
        console.print(escape(report["note"]))
    else:
        table = Table(title="channel pruning")
        for col in ("group (layers)", "channels before", "channels after"):
            table.add_column(col, justify="left" if col.startswith("group") else "right")
        for g in report["groups"]:
            table.add_row(escape(", ".join(g["layers"])), str(g["channels_before"]), str(g["channels_after"]))
        console.print(table)
        if report.get("params_after") is not None:
            console.print(f"parameters {report['params_before']:,} -> {report['params_after']:,}; "
                          f"MACs/sample {report['macs_before']:,} -> {report['macs_after']:,}")
        for g in report["left_alone"]:
            console.print(escape(f"left alone: {', '.join(g['layers'])}: {g['reason']}"))
    for skipped in report.get("skipped", []):
        console.print(escape(f"skipped {skipped['name']}: {skipped['reason']}"))
    if report.get("message"):
        console.print(escape(report["message"]))
    fid = report.get("fidelity", {})
    if fid.get("message"):
        console.print(escape(fid["message"]), soft_wrap=True)  # one line, whatever the terminal width
    elif fid.get("checked"):
        console.print(f"output cosine {fid['min_cosine']:.6f} >= {fid['min_cosine_checked']:g} "
                      f"(min over {fid['samples']} samples: {fid['inputs']})")
    acc = report.get("accuracy")
    if acc:
        console.print(f"accuracy {acc['before']:.2f}% -> {acc['after']:.2f}% (drop {acc['drop']:.2f} pp, no fine-tuning)")
    console.print(escape(f"wrote {report['output']} ({human_bytes(report['input_file_size'])} -> "
                         f"{human_bytes(report['output_file_size'])})"))
