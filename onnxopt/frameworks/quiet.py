"""Keep exporters quiet: their warnings, log records and (native) prints go to debug logging."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator, Sequence

log = logging.getLogger(__name__)


@contextlib.contextmanager
def quiet_exporter(loggers: Sequence[str]) -> Iterator[None]:
    """Silence an exporter's warnings, log records and prints (the library never prints)."""
    saved = {}
    for name in loggers:
        lg = logging.getLogger(name)
        saved[name] = lg.level
        lg.setLevel(logging.ERROR)
    sink = io.StringIO()
    native: dict[str, str] = {}
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(warnings.catch_warnings())
            warnings.simplefilter("ignore")
            stack.enter_context(contextlib.redirect_stdout(sink))
            stack.enter_context(contextlib.redirect_stderr(sink))
            native = stack.enter_context(_quiet_fds())
            yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)
        text = (sink.getvalue() + native.get("text", "")).strip()
        if text:
            log.debug("exporter output: %s", text[:2000])


@contextlib.contextmanager
def _quiet_fds() -> Iterator[dict[str, str]]:
    """Send native (C++) writes to fds 1 and 2 into a temp file while exporting."""
    import os
    import sys
    import tempfile

    out: dict[str, str] = {}
    try:
        for stream in (sys.__stdout__, sys.__stderr__):
            if stream is not None:
                stream.flush()
        saved = (os.dup(1), os.dup(2))
    except (OSError, ValueError):  # no real fds (embedded interpreters): stay loud
        yield out
        return
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 1)
        os.dup2(tmp.fileno(), 2)
        try:
            yield out
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            tmp.seek(0)
            out["text"] = tmp.read(20000).decode("utf-8", "replace")
