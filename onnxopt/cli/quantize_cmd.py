"""`onnxopt quantize`: int8 quantization with onnxruntime (dynamic, static, or auto: measure and pick)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from onnxopt.cli._options import (
    echo_json,
    human_bytes,
    json_option,
    max_accuracy_drop_option,
    min_cosine_option,
    model_argument,
    number_option,
    option_config,
    output_option,
    progress_printer,
    runs_option,
    threads_option,
)


def _csv(value: str | None) -> tuple[str, ...]:
    return tuple(v.strip() for v in (value or "").split(",") if v.strip())


def _floats(value: str | None, what: str) -> tuple[float, ...] | None:
    import math

    if not value:
        return None
    try:
        values = tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.UsageError(f"{what} {value!r}: expected comma-separated numbers") from None
    if not all(math.isfinite(v) for v in values):
        raise click.UsageError(f"{what} {value!r}: every value must be a finite number")
    return values


@click.command("quantize")
@model_argument
@output_option(required=True)
@click.option("--mode", type=click.Choice(["auto", "dynamic", "static", "weight-only"]), default="auto",
              show_default=True, help="auto: build candidates, measure them here, keep the best for --objective "
              "(weight-only int4 included for MatMul-heavy models); weight-only: MatMul weights in --bits bits "
              "(onnxruntime's MatMulNBits), activations float.")
@click.option("--objective", type=click.Choice(["latency", "size"]), default="latency", show_default=True,
              help="auto: fastest model within the budget, or smallest model within the budget.")
@click.option("--calib-data", type=click.Path(path_type=Path), default=None,
              help="Calibration inputs: an .npz, a folder of .npy/.npz files, or a folder of images.")
@click.option("--calib-method", type=click.Choice(["minmax", "entropy", "percentile"]), default="minmax",
              show_default=True)
@number_option("--calib-samples", kind=int, low=1, default=200, show_default=True, help="Calibration samples to use.",
               hint="200 is a good default")
@click.option("--data", "val_data", type=click.Path(path_type=Path), default=None,
              help="Validation .npz (inputs + optional 'labels') for fidelity and --max-accuracy-drop.")
@max_accuracy_drop_option("Budget in percentage points (needs labels in --data).")
@min_cosine_option("Budget: minimum per-sample output cosine similarity (default 0.99 unless --max-accuracy-drop is given; 0: no floor).")
@click.option("--format", "fmt", type=click.Choice(["qdq", "qoperator"]), default="qdq", show_default=True,
              help="static: QDQ or QOperator (QLinear*) format. Format, types, --per-channel and "
              "--reduce-range apply to dynamic/static; auto tries them itself.")
@click.option("--per-channel", is_flag=True, help="Per-channel weight scales.")
@click.option("--reduce-range", is_flag=True, help="7-bit weights (avoids saturation on AVX2 without VNNI).")
@click.option("--weight-type", type=click.Choice(["int8", "uint8"]), default="int8", show_default=True)
@click.option("--activation-type", type=click.Choice(["int8", "uint8"]), default="int8", show_default=True)
@click.option("--op-types", default=None, help="Only quantize these op types, e.g. MatMul,Gemm.")
@click.option("--exclude-nodes", default=None, help="Keep these nodes in float (comma-separated names).")
@click.option("--bits", type=click.Choice(["4", "8"]), default="4", show_default=True,
              help="weight-only: bits per weight.")
@click.option("--block-size", type=click.Choice(["16", "32", "64", "128"]), default="32", show_default=True,
              help="weight-only: weights sharing one scale (smaller: more accurate, larger: smaller file).")
@click.option("--algorithm", type=click.Choice(["rtn", "hqq"]), default="rtn", show_default=True,
              help="weight-only: rtn (round to nearest) or hqq (optimized scales; needs torch).")
@click.option("--accuracy-level", type=click.Choice(["0", "1", "4"]), default="4", show_default=True,
              help="weight-only: 4 multiplies in int8 (fast on CPUs), 0/1 dequantizes and multiplies in float.")
@click.option("--image-size", default=None, help="Image calibration: H,W (default: the model's input size).")
@click.option("--layout", type=click.Choice(["NCHW", "NHWC"]), default="NCHW", show_default=True)
@click.option("--mean", default=None, help="Image calibration: per-channel mean after scaling, e.g. 0.485,0.456,0.406.")
@click.option("--std", default=None, help="Image calibration: per-channel std, e.g. 0.229,0.224,0.225.")
@number_option("--scale", low=0, low_open=True, default=1 / 255, show_default="1/255", help="Image calibration: pixel scale.")
@click.option("--grid", type=click.Choice(["auto", "full"]), default="auto", show_default=True,
              help="auto: a CPU-ordered shortlist of candidates; full: onnxruntime's whole quantizer grid.")
@threads_option("Benchmark intra-op threads (0: physical cores).")
@runs_option(30, "Timed rounds for the finalists.")
@number_option("--batch", kind=int, low=1, default=1, show_default=True, help="Batch latency is measured at (a fixed-batch model: its own).")
@click.option("--shape", "shapes", multiple=True, metavar="NAME=D0,D1,..", help="Deployment shape of an input with symbolic dims (repeatable).")
@click.option("--no-bench", is_flag=True, help="dynamic/static: skip the latency measurement.")
@click.option("--force", is_flag=True, help="Quantize even if the model already holds quantized ops.")
@click.option("--report", "report_path", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Also write the JSON report to this file.")
@json_option
def command(model: Path, output: Path, mode: str, objective: str, calib_data: Path | None, calib_method: str,
            calib_samples: int, val_data: Path | None, max_accuracy_drop: float | None, min_cosine: float | None,
            fmt: str, per_channel: bool, reduce_range: bool, weight_type: str, activation_type: str,
            op_types: str | None, exclude_nodes: str | None, bits: str, block_size: str, algorithm: str,
            accuracy_level: str, image_size: str | None, layout: str,
            mean: str | None, std: str | None, scale: float, grid: str, threads: int, runs: int, batch: int,
            shapes: tuple[str, ...], no_bench: bool, force: bool, report_path: Path | None, as_json: bool) -> None:
    """Quantize MODEL to int8 (or int4 weight-only) with onnxruntime and write OUTPUT.

    \b
    Examples:
      onnxopt quantize model.onnx -o model.int8.onnx --calib-data calib.npz
      onnxopt quantize model.onnx -o small.onnx --objective size --min-cosine 0.99
      onnxopt quantize model.onnx -o q.onnx --mode static --per-channel --calib-data images/ \\
          --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225
      onnxopt quantize model.onnx -o q.onnx --mode dynamic --data val.npz --max-accuracy-drop 0.5
      onnxopt quantize decoder.onnx -o q4.onnx --mode weight-only --bits 4 --block-size 32

    Exit codes: 0 ok, 1 bad input, 2 usage error, 3 the accuracy budget was not met (the closest model is
    still written).
    """
    from onnxopt.core.errors import GateFailedError
    from onnxopt.core.external import data_file, data_files
    from onnxopt.core.feeds import parse_shape_overrides
    from onnxopt.core.files import FilePlan, staged
    from onnxopt.core.model import load_model
    from onnxopt.core.progress import listening
    from onnxopt.core.runtime import bench_session
    from onnxopt.measure.benchmark import BenchConfig
    from onnxopt.measure.fidelity import load_eval_data
    from onnxopt.quantization.api import quantize
    from onnxopt.quantization.calibration import ImageSpec, open_calibration
    from onnxopt.quantization.config import QuantizeConfig

    plan = FilePlan.of(reads={"input model": model, "input model's external data": data_files(model),
                              "--calib-data": calib_data, "--data": val_data},
                       writes={"-o": output, "-o's external data": data_file(output), "--report": report_path})  # fmt: skip
    plan.check()  # before any work: no output may clobber an input or another output
    config = option_config(
        QuantizeConfig,
        mode=mode, format=fmt, per_channel=per_channel, reduce_range=reduce_range, weight_type=weight_type,
        activation_type=activation_type, calib_method=calib_method, calib_samples=calib_samples,
        op_types=_csv(op_types), exclude_nodes=_csv(exclude_nodes), objective=objective,
        max_accuracy_drop=max_accuracy_drop, min_cosine=min_cosine, force=force, grid=grid, final_runs=runs,
        bits=int(bits), block_size=int(block_size), algorithm=algorithm, accuracy_level=int(accuracy_level),
    )
    spec = None
    if calib_data is not None:
        size = None
        if image_size:
            dims = _floats(image_size, "--image-size") or ()
            if len(dims) != 2 or not all(d >= 1 and d == int(d) for d in dims):
                raise click.UsageError(f"--image-size {image_size!r}: give H,W e.g. 224,224")
            size = (int(dims[0]), int(dims[1]))
        spec = option_config(ImageSpec, size=size, layout=layout, mean=_floats(mean, "--mean") or (0.0,),
                             std=_floats(std, "--std") or (1.0,), scale=scale)  # fmt: skip
    proto = load_model(model, load_external_data=False)  # the graph the data are checked against
    calib = open_calibration(proto, calib_data, samples=calib_samples, image=spec) if calib_data is not None else None
    val = load_eval_data(proto, val_data) if val_data is not None else None
    bench = None
    if mode == "auto" or not no_bench:
        bench = BenchConfig(session=bench_session(threads), runs=max(2, runs), batch=batch,
                            shape_overrides=parse_shape_overrides(shapes) or None)
    with listening(progress_printer(as_json)):
        result = quantize(model, config, calib=calib, val=val, bench=bench)  # loads it (a big one: its graph only)
    report: dict[str, Any] = dict(result.report)
    report["output"] = str(output)
    with staged(plan) as outputs:  # the model and the report, or (on any failure) neither
        outputs.model(output, result.model)
        if report_path is not None:
            import json

            from onnxopt.core.jsonable import json_default

            outputs.text(report_path, json.dumps(report, indent=2, default=json_default))
    if as_json:
        echo_json(report)
    else:
        _print_report(report, output)
    if not result.meets_budget:
        raise GateFailedError(
            f"no configuration met the accuracy budget ({report['budget']}); the closest one was written to {output}"
        )


def _fmt_ratio(d: dict[str, Any] | None) -> str:
    if not d:
        return "-"
    return f"{d['ratio']:.3f} [{d['low']:.3f},{d['high']:.3f}]"


def _print_report(report: dict[str, Any], output: Path) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    if not console.is_terminal:
        console = Console(width=200)
    t = Table(title=f"quantize ({report['mode']}, objective {report['objective']}) on {escape(report['cpu']['summary'])}")
    for col in ("candidate", "status", "size", "min cosine", "acc drop", "ratio (brief)", "ratio (final)"):
        t.add_column(col, justify="left" if col in ("candidate", "status") else "right")
    for c in report.get("candidates", []):
        fid = c.get("fidelity") or {}
        drop = fid.get("accuracy_drop")
        status = c["status"]
        if status == "ok" and c.get("meets_budget") is False:
            status = "over budget"
        t.add_row(
            escape(c["name"] + (" *" if c["name"] == report.get("winner") else "")),
            escape(status if status != "failed" else "failed: " + c.get("reason", "")[:80]),
            human_bytes(c["size"]) if c.get("size") else "-",
            f"{fid['min_cosine']:.5f}" if "min_cosine" in fid else "-",
            f"{drop:.2f}" if drop is not None else "-",
            _fmt_ratio(c.get("quick")),
            _fmt_ratio(c.get("final")),
        )
    if report.get("candidates"):
        console.print(t)
    console.print(f"winner: [bold]{escape(str(report.get('winner')))}[/bold] - {escape(report.get('why', ''))}")
    fid = report.get("fidelity") or {}
    lat = report.get("latency") or {}
    console.print(
        f"size {human_bytes(report['size_before'])} -> {human_bytes(report['size_after'])} "
        f"({report['size_ratio']:.2f}x); min cosine {fid.get('min_cosine', float('nan')):.5f}"
        + (f"; accuracy drop {fid['accuracy_drop']:.2f} pt" if fid.get("accuracy_drop") is not None else "")
        + (f"; latency {lat['describe']}" if lat.get("describe") else "")
    )
    nodes = report.get("nodes") or {}
    if nodes.get("float"):
        console.print(f"{len(nodes['float'])} node(s) left in float:")
        for n in nodes["float"][:20]:
            console.print(f"  {escape(n['node'])} ({n['op']}): {escape(n['reason'])}")
    for note in report.get("notes", []):
        console.print(f"note: {escape(note)}")
    console.print(f"wrote {escape(str(output))} in {report['seconds']:.1f} s")
