"""`onnxopt inspect`: describe a model (inputs, outputs, opsets, ops, parameters, size)."""

from __future__ import annotations

from pathlib import Path

import click

from onnxopt.cli._options import echo_json, human_bytes, json_option, model_argument


@click.command("inspect")
@model_argument
@json_option
@click.option("--no-validate", is_flag=True, help="Skip the checker and onnxruntime load test.")
def command(model: Path, as_json: bool, no_validate: bool) -> None:
    """Describe MODEL: inputs/outputs (with symbolic dims), opsets, op histogram, parameters.

    \b
    Examples:
      onnxopt inspect models/digits_cnn.onnx
      onnxopt inspect models/digits_cnn.onnx --json | jq .parameter_count
    """
    from onnxopt.core.errors import InvalidModelError, short_message
    from onnxopt.core.model import describe, load_model, validate_model

    proto = load_model(model, load_external_data=False)  # the graph is all it describes: weights stay on disk
    if not no_validate:
        validate_model(model)  # from the file: onnxruntime reads the weights itself
    try:
        desc = describe(model, proto)
    except InvalidModelError as e:  # e.g. an unknown element type, named by its tensor
        raise InvalidModelError(f"{model}: {e}") from e
    except (ValueError, KeyError, TypeError, IndexError, UnicodeError) as e:
        # Only an unvalidated model gets here: unknown data types, undecodable names, ...
        reason = f"unknown value {e.args[0]!r}" if isinstance(e, KeyError) and e.args else short_message(e)
        raise InvalidModelError(
            f"{model}: cannot describe the model ({reason}); "
            "run `onnxopt inspect` without --no-validate to see what is wrong with it"
        ) from e
    if as_json:
        echo_json(desc.to_dict())
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    summary = Table(title=escape(desc.path), show_header=False)
    summary.add_row("file size", human_bytes(desc.file_size))
    summary.add_row("producer", desc.producer or "-")
    summary.add_row("IR version", str(desc.ir_version))
    summary.add_row("opsets", ", ".join(f"{k} {v}" for k, v in desc.opsets.items()))
    summary.add_row("nodes", str(desc.node_count))
    summary.add_row("parameters", f"{desc.parameter_count:,}")
    summary.add_row("initializer bytes", human_bytes(desc.initializer_bytes))
    summary.add_row("external data", "yes" if desc.external_data else "no")
    console.print(summary)
    io = Table(title="inputs and outputs")
    for col in ("kind", "name", "dtype", "shape"):
        io.add_column(col)
    for kind, specs in (("input", desc.inputs), ("output", desc.outputs)):
        for s in specs:
            shape = "[" + ", ".join("?" if d is None else str(d) for d in s.shape) + "]"
            io.add_row(kind, escape(s.name), s.dtype, escape(shape))
    console.print(io)
    ops = Table(title="op types")
    ops.add_column("op")
    ops.add_column("count", justify="right")
    for op, n in desc.op_histogram.items():
        ops.add_row(escape(op), str(n))
    console.print(ops)
