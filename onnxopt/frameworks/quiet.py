"""Keep exporters quiet (warnings, log records and native prints go to debug logging), and short.

quiet_exporter silences an exporter; exporting also turns its failure into a onnxopt error;
shorten_error cuts an exporter's long message down to the line a user can act on.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from collections.abc import Callable, Iterator, Sequence

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
def exporting(loggers: Sequence[str], error: Callable[[BaseException], Exception]) -> Iterator[None]:
    """quiet_exporter(loggers), re-raising any failure inside as error(e) (from e)."""
    try:
        with quiet_exporter(loggers):
            yield
    except Exception as e:
        raise error(e) from e


def shorten_error(
    e: BaseException,
    patterns: Sequence[tuple[re.Pattern[str], str]],
    *,
    limit: int = 240,
    skip: tuple[str, ...] = ("traceback",),
    trim: str = "",
) -> str:
    """An exporter's message cut down to what a user can act on.

    The first of patterns found in the message (or its cause) gives the text, its template
    filled with the match's groups; else the first line not starting with one of skip (lower
    case), with trim's characters stripped from its ends, after the exception's type name.
    """
    text = f"{e}\n{e.__cause__ or ''}"
    for pattern, template in patterns:
        m = pattern.search(text)
        if m:
            return template.format(*m.groups())[:limit]
    for line in text.splitlines():
        line = line.strip().strip(trim).strip()
        if line and not line.lower().startswith(skip):
            return f"{type(e).__name__}: {line}"[:limit]
    return type(e).__name__


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
