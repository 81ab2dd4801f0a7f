"""Shared click options and output helpers for the onnxopt commands."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from onnxopt.core.jsonable import json_default

F = TypeVar("F", bound=Callable[..., Any])

model_argument = click.argument(
    "model", type=click.Path(path_type=Path, dir_okay=True, exists=False)
)


def json_option(f: F) -> F:
    """--json: print machine-readable JSON instead of tables."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(f)


def output_option(required: bool = True) -> Callable[[F], F]:
    """-o/--output: where to write the resulting model."""

    def deco(f: F) -> F:
        return click.option(
            "-o",
            "--output",
            type=click.Path(path_type=Path, dir_okay=False),
            required=required,
            help="Output .onnx path (written atomically; never the input).",
        )(f)

    return deco


def session_options(f: F) -> F:
    """--provider, --threads, --inter-threads, --opt-level."""
    f = click.option(
        "--opt-level",
        type=click.Choice(["disable", "basic", "extended", "all"]),
        default="all",
        show_default=True,
        help="onnxruntime graph optimization level for the sessions.",
    )(f)
    f = click.option("--inter-threads", type=int, default=0, help="Inter-op threads (0: onnxruntime default).")(f)
    f = click.option(
        "--provider",
        default="CPUExecutionProvider",
        show_default=True,
        help="onnxruntime execution provider (see `onnxopt bench --list-providers`).",
    )(f)
    return f


def echo_json(obj: Any) -> None:
    """Print obj as indented JSON."""
    click.echo(json.dumps(obj, indent=2, default=json_default))


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"
