"""Shared click options and output helpers for the onnxopt commands.

Each option that several commands take is declared once here; a command passes its own help
text where the meaning differs (what the seed seeds, what the threads run).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from onnxopt.core.jsonable import json_default

if TYPE_CHECKING:
    from onnxopt.measure.benchmark import BenchConfig

F = TypeVar("F", bound=Callable[..., Any])

model_argument = click.argument(
    "model", type=click.Path(path_type=Path, dir_okay=True, exists=False)
)


def json_option(f: F) -> F:
    """--json: print machine-readable JSON instead of tables."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(f)


def output_option(
    required: bool = True, help: str = "Output .onnx path (written atomically; never the input)."
) -> Callable[[F], F]:
    """-o/--output: where to write the resulting model."""

    def deco(f: F) -> F:
        return click.option(
            "-o",
            "--output",
            type=click.Path(path_type=Path, dir_okay=False),
            required=required,
            default=None,
            help=help,
        )(f)

    return deco


def seed_option(help: str) -> Callable[[F], F]:
    """--seed (default 0): what it seeds is the command's help text."""
    return click.option("--seed", type=int, default=0, show_default=True, help=help)


def threads_option(help: str) -> Callable[[F], F]:
    """--threads N (default 0): intra-op threads of the sessions a command measures."""
    return click.option("--threads", type=int, default=0, show_default=True, help=help)


def session_options(f: F) -> F:
    """--provider, --inter-threads, --opt-level, and --threads N[,N..] (a list sweeps thread counts)."""
    f = click.option(
        "--threads", default=None, metavar="N[,N..]", help="Intra-op threads; a list sweeps (default: physical cores)."
    )(f)
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


@dataclass(frozen=True)
class BenchOptions:
    """The values of bench_options, handed to a command as its one `bench` argument."""

    threads: list[int] | None  # None: physical cores; several: a sweep
    provider: str
    inter_threads: int
    opt_level: str
    batch: int
    shapes: tuple[str, ...]
    runs: int
    duration: float | None
    warmup: int
    isolation: str
    memory: bool
    seed: int
    ratio_quantile: float
    spin: bool

    def config(self) -> BenchConfig:
        """The BenchConfig these options describe (the session runs the first thread count)."""
        from onnxopt.core.feeds import parse_shape_overrides
        from onnxopt.core.runtime import SessionConfig, physical_cores
        from onnxopt.measure.benchmark import BenchConfig

        session = SessionConfig(
            provider=self.provider,
            intra_op_threads=self.threads[0] if self.threads else physical_cores(),
            inter_op_threads=self.inter_threads,
            opt_level=self.opt_level,
            allow_spinning=self.spin,
        )
        return BenchConfig(
            session=session,
            warmup=self.warmup,
            runs=self.runs,
            duration_s=self.duration,
            batch=self.batch,
            seed=self.seed,
            isolation=self.isolation,
            measure_memory=self.memory,
            shape_overrides=parse_shape_overrides(self.shapes) or None,
        )


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


_BENCH_NAMES = tuple(f.name for f in fields(BenchOptions))


def bench_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Options shared by bench and compare (session_options, measurement, inputs), passed to the
    command as one BenchOptions argument named `bench`."""

    @functools.wraps(f)
    def command(*args: Any, **kwargs: Any) -> Any:
        values = {name: kwargs.pop(name) for name in _BENCH_NAMES}
        values["threads"] = parse_threads(values["threads"])
        return f(*args, bench=BenchOptions(**values), **kwargs)

    g: Callable[..., Any] = seed_option("Seed of synthesized inputs.")(command)
    g = click.option(
        "--ratio-quantile",
        type=click.FloatRange(0.0, 1.0),
        default=0.5,
        show_default=True,
        help="Latency quantile ratios compare (0.5: medians; 0.25 is steadier on a busy machine).",
    )(g)
    g = click.option(
        "--spin/--no-spin",
        default=False,
        show_default=True,
        help="Let idle intra-op threads spin (onnxruntime's default). Honoured for a single session "
        "or --isolation subprocess; interleaved runs of several sessions always turn it off.",
    )(g)
    g = click.option(
        "--memory", is_flag=True, help="Also measure peak RSS of each session (fresh subprocess; slower)."
    )(g)
    g = click.option(
        "--isolation",
        type=click.Choice(["interleaved", "subprocess"]),
        default="interleaved",
        show_default=True,
        help="Interleaved rounds in one process, or each model in its own process.",
    )(g)
    g = click.option("--warmup", type=int, default=5, show_default=True, help="Untimed runs per model first.")(g)
    g = click.option(
        "--duration", type=float, default=None, help="Keep measuring for this many seconds (at least --runs)."
    )(g)
    g = click.option("--runs", type=int, default=50, show_default=True, help="Timed runs per model.")(g)
    g = click.option(
        "--shape", "shapes", multiple=True, metavar="NAME=D0,D1,..", help="Concrete shape of an input."
    )(g)
    g = click.option("--batch", type=int, default=1, show_default=True, help="Batch size of each run.")(g)
    return session_options(g)


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
