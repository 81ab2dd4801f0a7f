"""The onnxopt command-line interface: a click group whose commands load lazily."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
from typing import Any

import click

from onnxopt.core.errors import OnnxoptError

# command name -> module under onnxopt.cli; each module defines `command`.
COMMANDS = {
    "inspect": "inspect_cmd",
    "bench": "bench_cmd",
    "compare": "compare_cmd",
    "quantize": "quantize_cmd",
    "prune": "prune_cmd",
    "convert": "convert_cmd",
    "distill": "distill_cmd",
    "search": "search_cmd",
    "optimize": "optimize_cmd",
}

# The other exit codes come from the errors themselves (OnnxoptError.exit_code: 1, or 3 for a gate).
EXIT_OK, EXIT_USAGE = 0, 2


class LazyGroup(click.Group):
    """A group that imports a command's module only when that command is used or listed."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [
            name
            for name, mod in COMMANDS.items()
            if importlib.util.find_spec(f"onnxopt.cli.{mod}") is not None
        ]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        mod = COMMANDS.get(cmd_name)
        if mod is None or importlib.util.find_spec(f"onnxopt.cli.{mod}") is None:
            return None
        module = importlib.import_module(f"onnxopt.cli.{mod}")
        cmd: click.Command = module.command
        return cmd


def _version() -> str:
    from onnxopt import __version__

    return __version__


@click.group(
    cls=LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog="Exit codes: 0 ok, 1 error, 2 usage error, 3 a gate failed.",
)
@click.version_option(_version(), "--version", prog_name="onnxopt")
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors.")
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: bool) -> None:
    """Prepare trained models for CPU deployment with ONNX Runtime.

    \b
    Examples:
      onnxopt inspect model.onnx
      onnxopt bench model.onnx model.opt.onnx --compare
      onnxopt optimize model.onnx --data val.npz --max-accuracy-drop 0.5
    """
    level = logging.WARNING
    if quiet:
        level = logging.ERROR
    elif verbose == 1:
        level = logging.INFO
    elif verbose >= 2:
        level = logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("onnxopt").setLevel(level)
    _quiet_native_logs(verbose)
    ctx.ensure_object(dict)
    ctx.obj["quiet"] = quiet
    ctx.obj["verbose"] = verbose


def _quiet_native_logs(verbose: int) -> None:
    """onnxruntime's C++ log, Python warnings, TensorFlow and absl: quiet unless -v.

    Both write to stderr themselves, past Python's logging: their levels are set before any
    session is created or TensorFlow imported (it reads TF_CPP_MIN_LOG_LEVEL once, at import).
    """
    from onnxopt.core.runtime import FATAL, WARNING, set_log_severity

    set_log_severity(WARNING if verbose else FATAL)
    # Python warnings of third-party code (numpy inside onnxruntime's calibrator, ...) become log
    # records, shown with -v.
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").setLevel(logging.WARNING if verbose else logging.ERROR)
    if not verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        for name in ("tensorflow", "absl", "h5py", "tf2onnx"):
            logging.getLogger(name).setLevel(logging.ERROR)


def _usage_line(e: click.UsageError) -> str:
    """A click usage error as one line (click's own form spans three)."""
    help_hint = f" (see '{e.ctx.command_path} -h')" if e.ctx is not None else ""
    return f"onnxopt: error: {' '.join(e.format_message().split())}{help_hint}"


def main(argv: list[str] | None = None) -> Any:
    """Entry point: run the CLI, mapping errors to one line on stderr and an exit code."""
    try:
        cli.main(args=argv, prog_name="onnxopt", standalone_mode=False)
    except OnnxoptError as e:
        # One line per problem (e.g. each mismatching input), each prefixed so it greps well.
        for line in str(e).splitlines() or [type(e).__name__]:
            click.echo(f"onnxopt: error: {line}", err=True)
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        click.echo("onnxopt: aborted", err=True)
        sys.exit(130)
    except click.UsageError as e:
        click.echo(_usage_line(e), err=True)
        sys.exit(EXIT_USAGE)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except MemoryError:  # e.g. inputs synthesized for a model whose declared dims are enormous
        click.echo("onnxopt: error: out of memory: the model or its inputs are too large for this machine "
                   "(give smaller inputs with --shape/--batch or --data)", err=True)  # fmt: skip
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("onnxopt: interrupted", err=True)
        sys.exit(130)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    sys.exit(EXIT_OK)
