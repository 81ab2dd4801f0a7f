"""Progress of long work, for whoever listens: the CLI prints it, the library never prints.

Long steps deep in the library (building quantization candidates, ranking node sensitivity,
bisecting a pruning ratio) call `report(message)`. The listener lives in a context variable, so
no callback has to be threaded through every signature: a command wraps its work in
`listening(callback)` and every `report` inside reaches it; without a listener `report` only
logs at DEBUG.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

log = logging.getLogger(__name__)

Listener = Callable[[str], None]
_listener: ContextVar[Listener | None] = ContextVar("onnxopt_progress", default=None)


def report(message: str) -> None:
    """Tell the current listener (if any) about a step of long work; one short line."""
    log.debug("%s", message)
    listener = _listener.get()
    if listener is not None:
        listener(message)


@contextmanager
def listening(listener: Listener | None) -> Iterator[None]:
    """Send every `report` made inside the block to `listener` (None: keep them quiet)."""
    token = _listener.set(listener)
    try:
        yield
    finally:
        _listener.reset(token)
