"""`onnxopt convert`: export a PyTorch, Keras or Hugging Face model to ONNX and prove numerical parity."""

from __future__ import annotations

import time
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
    source_path,
)
from onnxopt.frameworks.hf_folder import POOLING_MODES, TASKS


def _names(value: str | None) -> tuple[str, ...] | None:
    if not value:
        return None
    return tuple(n.strip() for n in value.split(","))


def _shapes(items: tuple[str, ...]) -> tuple[dict[str, tuple[int, ...]] | None, dict[str, str] | None]:
    """--input-shape name=1,3,224,224[@int64] (the name may be left out for a single input)."""
    from onnxopt.core.feeds import parse_shape_overrides

    if not items:
        return None, None
    dtypes: dict[str, str] = {}
    plain = []
    for item in items:
        spec, _, dtype = item.partition("@")
        if "=" not in spec:
            spec = f"input={spec}"
        plain.append(spec)
        if dtype:
            dtypes[spec.partition("=")[0].strip()] = dtype.strip()
    return option_config(parse_shape_overrides, plain), dtypes or None


@click.command("convert")
@click.argument("source")
@output_option(required=True)
@click.option("--framework", type=click.Choice(["auto", "torch", "keras"]), default="auto", show_default=True,
              help="Source framework (auto: from the file or the factory's return type).")
@click.option("--weights", type=click.Path(exists=True, dir_okay=False), default=None,
              help="State dict (torch) or .weights.h5 (keras) loaded into the factory's model.")
@click.option("--exporter", type=click.Choice(["auto", "dynamo", "torchscript", "keras", "tf2onnx"]),
              default="auto", show_default=True,
              help="auto: try each exporter, keep those that pass parity, keep the faster in onnxruntime.")
@number_option("--opset", kind=int, low=11, high=23, default=17, show_default=True, help="ONNX opset version.")
@click.option("--input-shape", "input_shape", multiple=True, metavar="NAME=D0,D1,..[@DTYPE]",
              help="Example input shape (repeatable), e.g. input=1,3,224,224 or ids=1,128@int64.")
@click.option("--input-names", default=None, help="Comma-separated ONNX input names.")
@click.option("--output-names", default=None, help="Comma-separated ONNX output names.")
@click.option("--static-batch", is_flag=True, help="Keep the example batch size fixed (default: dynamic batch axis).")
@number_option("--atol", low=0, default=1e-4, show_default=True, help="Parity: absolute tolerance.")
@number_option("--rtol", low=0, default=1e-3, show_default=True, help="Parity: relative tolerance.")
@click.option("--no-simplify", is_flag=True, help="Skip constant folding / redundant-node removal.")
@click.option("--data", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help=".npz of real inputs to check parity on too (keys = input names; 'labels' ignored).")
@click.option("--dynamic", "dynamic", multiple=True, metavar="NAME=AXIS:LABEL[,...]",
              help="Make more input axes symbolic (repeatable), e.g. input_ids=1:sequence; parity is "
                   "checked at other sizes of them too. HF folders get batch and sequence by default.")
@click.option("--task", type=click.Choice(["auto", *TASKS]), default="auto", show_default=True,
              help="HF folder: the model family (auto: from config.json's architectures).")
@click.option("--pooling", type=click.Choice(["auto", "none", *POOLING_MODES]), default="auto", show_default=True,
              help="HF encoder: pool last_hidden_state into sentence_embedding (auto: the "
                   "sentence-transformers folder's pooling, else none).")
@click.option("--normalize/--no-normalize", default=None,
              help="HF encoder: L2-normalize the pooled embedding (default: as the folder says).")
@click.option("--with-tokenizer", is_flag=True,
              help="HF text folder: put its tokenizer in front (onnxruntime-extensions), so the file "
                   "takes a batch of strings; verified against the Python tokenizer + model.")
@click.option("--texts", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="With --with-tokenizer: verify on these sentences (UTF-8, one per line) instead of "
                   "the built-in 300.")
@seed_option("Seed of the synthetic parity inputs.")
@json_option
def command(
    source: str,
    output: Path,
    framework: str,
    weights: str | None,
    exporter: str,
    opset: int,
    input_shape: tuple[str, ...],
    input_names: str | None,
    output_names: str | None,
    static_batch: bool,
    atol: float,
    rtol: float,
    no_simplify: bool,
    data: Path | None,
    dynamic: tuple[str, ...],
    task: str,
    pooling: str,
    normalize: bool | None,
    with_tokenizer: bool,
    texts: Path | None,
    seed: int,
    as_json: bool,
) -> None:
    """Convert SOURCE (PyTorch, Keras, a Hugging Face folder) to ONNX, check parity, simplify.

    \b
    SOURCE is one of:
      model.pt / model.pt2          TorchScript file / torch.export ExportedProgram
      file.py:factory               a function returning an nn.Module or keras.Model
      package.module:factory        the same, importable
      model.keras / model.h5        a saved Keras model
      saved_model_dir/              a TensorFlow SavedModel folder
      hf_model_dir/                 a Hugging Face folder (config.json + weights, as written by
                                    save_pretrained) or a sentence-transformers folder
    \b
    Examples:
      onnxopt convert models/digits_cnn.py:build --weights models/digits_cnn.pt \\
          --input-shape input=1,1,8,8 --output-names logits -o digits.onnx
      onnxopt convert models/digits_keras.keras -o digits_keras.onnx --data models/digits_val.npz
      onnxopt convert ./all-MiniLM-L6-v2 -o minilm.onnx --with-tokenizer
    \b
    Exit codes: 0 converted and parity passed; 1 error (bad source, export failed,
    parity above --atol/--rtol: no output file is written).
    """
    from onnxopt.conversion.api import convert_source
    from onnxopt.conversion.dynamic import axes_of, parse_dynamic
    from onnxopt.core.checks import check_data
    from onnxopt.core.feeds import load_npz
    from onnxopt.core.files import FilePlan, staged

    plan = FilePlan.of(reads={"SOURCE": source_path(source), "--weights": weights, "--data": data,
                              "--texts": texts},
                       writes={"-o": output})  # fmt: skip
    plan.check()  # before any work: the output may not clobber the source, its weights or the data
    shapes, dtypes = _shapes(input_shape)
    dynamic_axes = axes_of(option_config(parse_dynamic, dynamic)) if dynamic else None
    sentences = _read_texts(texts) if texts is not None else None
    feed = None
    if data is not None:
        feed = load_npz(data)
        check_data({k: v for k, v in feed.items() if k != "labels"}, str(data))
    start = time.perf_counter()
    result = convert_source(
        source,
        framework=framework,
        weights=weights,
        input_shapes=shapes,
        input_dtypes=dtypes,
        opset=opset,
        exporter=exporter,
        dynamic_batch=not static_batch,
        input_names=_names(input_names),
        output_names=_names(output_names),
        atol=atol,
        rtol=rtol,
        simplify=not no_simplify,
        data=feed,
        seed=seed,
        dynamic_axes=dynamic_axes,
        task=task,
        pooling=pooling,
        normalize=normalize,
        with_tokenizer=with_tokenizer,
        texts=sentences,
    )
    with staged(plan) as outputs:
        outputs.model(output, result.model)
    elapsed = time.perf_counter() - start
    report: dict[str, Any] = dict(result.report, seconds=round(elapsed, 2), source=source, output=str(output))
    if as_json:
        echo_json(report)
        return
    _print_table(report, output)


def _read_texts(path: Path) -> list[str]:
    """One sentence per line (empty lines are empty sentences); a usage error when unreadable or empty."""
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as e:
        raise click.BadParameter(f"{path}: not readable UTF-8 text ({e})", param_hint="--texts") from e
    if lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise click.BadParameter(f"{path}: no sentences", param_hint="--texts")
    return lines


def _print_table(report: dict[str, Any], output: Path) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    p = report["parity"]
    t = Table(title=f"converted {escape(report['source'])}", show_header=False)
    t.add_row("output", escape(str(output)))
    t.add_row("framework", f"{report['framework']} {report['framework_version']}")
    t.add_row("exporter", f"{report['exporter']} ({escape(report['exporter_reason'])})")
    t.add_row("opset", str(report["opset"]))
    t.add_row("parity", f"max abs {p['max_abs']:.3g}, max rel {p['max_rel']:.3g} on {p['samples']} samples "
                        f"(atol {p['atol']:g}, rtol {p['rtol']:g}): {'passed' if p['passed'] else 'FAILED'}")
    hf = report.get("source_model")
    if hf:
        pooled = f", {'+'.join(hf['pooling'])} pooling" + (" + L2 norm" if hf["normalize"] else "") if hf["pooling"] else ""
        t.add_row("model", escape(f"{hf['kind']} {hf['architecture'] or hf['model_type']} ({hf['task']}{pooled})"))
    if report.get("dynamic_axes"):
        t.add_row("dynamic axes", escape(", ".join(f"{n}[{a}]={lbl}" for n, axes in report["dynamic_axes"].items()
                                                   for a, lbl in axes.items())))
        checks = [f"{'x'.join(map(str, next(iter(e['inputs'].values()), [])))}: {e['max_abs']:.2g}"
                  for e in report.get("parity_by_input", []) if "max_abs" in e]
        if checks:
            t.add_row("parity by input", "max abs at " + ", ".join(checks))
    tok = report.get("tokenizer")
    if tok:
        cos = f", pipeline cosine min {tok['min_cosine']:.4f}" if tok.get("min_cosine") is not None else ""
        t.add_row("tokenizer", f"{tok['ids_equal']}/{tok['sentences']} sentences tokenized alike{cos}, "
                               f"model max abs {tok['model_max_abs']:.3g}")
        if tok.get("note"):
            t.add_row("warning", escape(tok["note"]))
    t.add_row("nodes", str(report["nodes"]))
    t.add_row("size", human_bytes(report["model_bytes"]))
    t.add_row("time", f"{report['seconds']:.1f} s")
    console.print(t)
    io = Table(title="inputs and outputs")
    for col in ("kind", "name", "dtype", "shape"):
        io.add_column(col)
    for kind in ("inputs", "outputs"):
        for s in report[kind]:
            shape = "[" + ", ".join("?" if d is None else str(d) for d in s["shape"]) + "]"
            io.add_row(kind[:-1], escape(s["name"]), s["dtype"], escape(shape))
    console.print(io)
    if len(report["attempts"]) > 1 or not report["attempts"][0].get("ok"):
        at = Table(title="exporters tried")
        for col in ("exporter", "result", "max abs", "export s"):
            at.add_column(col)
        for a in report["attempts"]:
            par = a.get("parity") or a.get("parity_export") or {}
            res = "ok" if a.get("ok") else escape(str(a.get("error", "failed")))
            at.add_row(a["exporter"], res, f"{par['max_abs']:.3g}" if par else "-", str(a.get("export_s", "-")))
        console.print(at)
