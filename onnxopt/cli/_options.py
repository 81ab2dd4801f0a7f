"""Shared click options, option value types and output helpers for the onnxopt commands.

Each option that several commands take is declared once here; a command passes its own help
text where the meaning differs (what the seed seeds, what the threads run). Every numeric option
is a `Number` (a finite value in the documented range, checked by core.checks) and every config
built from options goes through `option_config`, so a bad option value is always a usage error:
one line, exit code 2.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from onnxopt.core.checks import check_number
from onnxopt.core.errors import InvalidInputError, InvalidOptionError
from onnxopt.core.jsonable import json_default

if TYPE_CHECKING:
    from onnxopt.measure.benchmark import BenchConfig

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

SEED_MAX = 2**32 - 1  # numpy's seeds: 0 .. 2**32 - 1
THREADS_MAX = 1024


def _flag(param: click.Parameter | None) -> str:
    """The option's longest spelling (--min-cosine), or the argument's name."""
    if param is None:
        return "value"
    if isinstance(param, click.Option):
        return max(param.opts, key=len)
    return (param.name or "value").upper()


class Number(click.ParamType):
    """An int or float option value that must be finite and in [low, high] (open ends optional).

    Anything else is a usage error (exit code 2) with one line naming the option and the range:
    NaN compares false with everything, so click's own ranges let it through every gate.
    """

    def __init__(
        self,
        kind: type[int] | type[float],
        low: float | None = None,
        high: float | None = None,
        *,
        low_open: bool = False,
        high_open: bool = False,
        hint: str = "",
    ) -> None:
        self.kind = kind
        self.name = "integer" if kind is int else "number"
        self.low, self.high, self.low_open, self.high_open, self.hint = low, high, low_open, high_open, hint

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        flag = _flag(param)
        if isinstance(value, int | float) and not isinstance(value, bool):
            number: int | float = value
        else:
            text = str(value).strip()
            try:
                number = int(text) if self.kind is int else float(text)
            except ValueError:
                what = "an integer" if self.kind is int else "a number"
                raise click.UsageError(f"{flag} {text!r}: not {what}", ctx) from None
        if self.kind is float:
            number = float(number)
        elif isinstance(number, float):
            if not number.is_integer():
                raise click.UsageError(f"{flag} {number}: not an integer", ctx)
            number = int(number)
        try:
            check_number(flag, number, low=self.low, high=self.high, low_open=self.low_open,
                         high_open=self.high_open, hint=self.hint)  # fmt: skip
        except InvalidOptionError as e:
            raise click.UsageError(str(e), ctx) from None
        return number


def number_option(
    *decls: str,
    kind: type[int] | type[float] = float,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    hint: str = "",
    **kw: Any,
) -> Callable[[F], F]:
    """click.option(*decls, type=Number(...), **kw): a numeric option checked for range."""
    return click.option(*decls, type=Number(kind, low, high, low_open=low_open, high_open=high_open, hint=hint), **kw)


def option_config(factory: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """factory(*args, **kwargs) for a config built from options: its checks' errors (a range, a
    combination of options, an unavailable provider) become usage errors (exit code 2)."""
    try:
        return factory(*args, **kwargs)
    except InvalidInputError as e:
        raise click.UsageError(str(e)) from e


def _check_shapes(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> tuple[str, ...]:
    """--shape NAME=D0,D1,..: parsed now so a malformed one is a usage error."""
    from onnxopt.core.feeds import parse_shape_overrides

    for item in value:
        name = item.partition("=")[0].strip()
        if "=" in item and not name:
            raise click.UsageError(f"{_flag(param)} {item!r}: give the input name, e.g. input=1,3,224,224", ctx)
    option_config(parse_shape_overrides, value)
    return value


# Gates shared by optimize, quantize and compare: one definition each.
def max_accuracy_drop_option(help: str) -> Callable[[F], F]:
    """--max-accuracy-drop PP: percentage points, 0..100."""
    return number_option("--max-accuracy-drop", low=0, high=100, default=None, metavar="PP", help=help,
                         hint="percentage points")  # fmt: skip


def min_cosine_option(help: str) -> Callable[[F], F]:
    """--min-cosine C: a cosine similarity in [0, 1] (0: no floor)."""
    return number_option("--min-cosine", low=0, high=1, default=None, metavar="C", help=help,
                         hint="e.g. 0.99; 0 turns the floor off")  # fmt: skip


def min_speedup_option(help: str) -> Callable[[F], F]:
    """--min-speedup X: a speedup > 0."""
    return number_option("--min-speedup", low=0, low_open=True, default=None, metavar="X", help=help,
                         hint="e.g. 1.2")  # fmt: skip

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
    """--seed (default 0, 0..2**32-1): what it seeds is the command's help text."""
    return number_option("--seed", kind=int, low=0, high=SEED_MAX, default=0, show_default=True, help=help)


def threads_option(help: str) -> Callable[[F], F]:
    """--threads N (default 0): intra-op threads of the sessions a command measures."""
    return number_option("--threads", kind=int, low=0, high=THREADS_MAX, default=0, show_default=True, help=help)


def runs_option(default: int, help: str, low: int = 2) -> Callable[[F], F]:
    """--runs N: timed runs (a confidence interval needs at least 2)."""
    return number_option("--runs", kind=int, low=low, default=default, show_default=True, help=help)


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
    f = number_option("--inter-threads", kind=int, low=0, high=THREADS_MAX, default=0,
                      help="Inter-op threads (0: onnxruntime default).")(f)
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

        # Not option_config: a provider this machine lacks is an error of the environment (exit 1).
        session = SessionConfig(
            provider=self.provider,
            intra_op_threads=self.threads[0] if self.threads else physical_cores(),
            inter_op_threads=self.inter_threads,
            opt_level=self.opt_level,
            allow_spinning=self.spin,
        )
        return option_config(
            BenchConfig,
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
    """'1,2' -> [1, 2]; None -> None (the default: physical cores). Bad lists are usage errors."""
    if text is None:
        return None
    parts = text.replace(" ", "").split(",")
    try:
        values = [int(t) for t in parts]
    except ValueError:
        raise click.UsageError(f"--threads {text!r}: expected integers like 1,2") from None
    if any(not 0 <= v <= THREADS_MAX for v in values):
        raise click.UsageError(f"--threads {text!r}: expected integers in [0, {THREADS_MAX}] like 1,2")
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
    g = number_option(
        "--ratio-quantile",
        low=0.0,
        high=1.0,
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
    g = number_option("--warmup", kind=int, low=0, default=5, show_default=True,
                      help="Untimed runs per model first.")(g)  # fmt: skip
    g = number_option(
        "--duration", low=0, low_open=True, default=None, help="Keep measuring for this many seconds (at least --runs)."
    )(g)
    g = runs_option(50, "Timed runs per model.")(g)
    g = click.option(
        "--shape", "shapes", multiple=True, metavar="NAME=D0,D1,..", callback=_check_shapes,
        help="Concrete shape of an input.",
    )(g)
    g = number_option("--batch", kind=int, low=1, default=1, show_default=True, help="Batch size of each run.")(g)
    return session_options(g)


def source_path(spec: str | None) -> Path | None:
    """The file behind a model source given as a path or `file.py:factory` (None: a module spec)."""
    if spec is None:
        return None
    if Path(spec).exists():
        return Path(spec)
    file, sep, _ = spec.rpartition(":")
    return Path(file) if sep and file and Path(file).is_file() else None


def progress_printer(as_json: bool = False) -> Callable[[str], None] | None:
    """The listener of long work's progress (core.progress): '... step' lines on stderr, or
    None under --quiet and --json (a pipeline reading stdout gets the JSON alone)."""
    ctx = click.get_current_context(silent=True)
    if as_json or (ctx is not None and (ctx.find_root().obj or {}).get("quiet")):
        return None
    return lambda msg: click.echo(f"... {msg}", err=True)


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
