"""Fuzz worker: imports onnxopt once, then runs many CLI invocations in-process.

Started by the driver (`runner.Worker`) as `python worker.py`; it reads one JSON request per
line on stdin and answers one JSON line on its original stdout. Each request names the argv,
the working directory, a temporary directory and two files that receive everything written to
file descriptors 1 and 2 during the case (so onnxruntime's C++ logging and faulthandler's
crash dump are captured too, not only Python's sys.stdout/sys.stderr).

It depends on the standard library and onnxopt only, so it runs as a plain script.
"""

from __future__ import annotations

import faulthandler
import json
import os
import resource
import sys
import tempfile
import time
import traceback
from typing import Any

# Commands the fuzzer drives; importing them up front keeps their import out of case timings.
WARM_COMMANDS = ("inspect", "optimize", "quantize", "prune", "bench", "compare")


def _limit_memory() -> None:
    """Cap the address space so an absurd allocation raises MemoryError instead of OOM-killing."""
    limit_gb = float(os.environ.get("ONNXOPT_FUZZ_MEM_GB", "6"))
    if limit_gb > 0:
        limit = int(limit_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _exit_code(e: SystemExit) -> int:
    """The process exit status Python would give for this SystemExit."""
    if e.code is None:
        return 0
    if isinstance(e.code, int):
        return e.code
    print(e.code, file=sys.stderr)  # sys.exit("message") prints the message and exits 1
    return 1


def _run_one(main: Any, req: dict[str, Any]) -> dict[str, Any]:
    """Run one argv with fds 1/2 redirected to the request's capture files."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    out_fd = os.open(req["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    err_fd = os.open(req["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(out_fd, 1)
    os.dup2(err_fd, 2)
    old_cwd = os.getcwd()
    os.chdir(req["cwd"])
    tempfile.tempdir = req["tmp"]  # temp files of the case land where the driver looks for leftovers
    os.environ["TMPDIR"] = req["tmp"]
    rc: int | None = None
    exc: str | None = None
    start = time.perf_counter()
    try:
        main(list(req["argv"]))
        rc = 0
    except SystemExit as e:
        rc = _exit_code(e)
    except BaseException as e:  # anything escaping main() is what a user would see as a traceback
        traceback.print_exc()
        exc = type(e).__name__
    finally:
        secs = time.perf_counter() - start
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except Exception:  # a case may have closed or broken the streams; the fds are restored below
            pass
        os.chdir(old_cwd)
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, out_fd, err_fd):
            os.close(fd)
    return {"rc": rc, "exc": exc, "secs": secs}


def serve() -> None:
    """Answer requests until stdin closes."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    _limit_memory()
    # A segfault dumps the Python stack to fd 2, i.e. into the current case's stderr file.
    faulthandler.enable(file=sys.stderr)
    from onnxopt import cli

    for name in WARM_COMMANDS:
        cli.cli.get_command(None, name)  # type: ignore[arg-type]  # LazyGroup ignores ctx
    proto.write(json.dumps({"ready": os.getpid()}) + "\n")
    for line in sys.stdin:
        if line.strip():
            proto.write(json.dumps(_run_one(cli.main, json.loads(line))) + "\n")


if __name__ == "__main__":
    serve()
