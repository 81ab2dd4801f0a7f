"""Search checkpoints: the engine state as one JSON file, written atomically, checked on resume.

A checkpoint records the search space and the settings it was made with (their fingerprints);
resuming with another space or other settings is refused with a message naming what differs,
except ``generations``, which may grow so that a finished search can be continued.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from onnxopt.core.errors import InvalidInputError

CHECKPOINT_FORMAT = "onnxopt-search-checkpoint"
CHECKPOINT_VERSION = 1


def write_checkpoint(path: Path, state: Mapping[str, Any]) -> None:
    """Write the state (plus format and version) as JSON, atomically: temporary file, then rename."""
    data = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_checkpoint(path: Path, space: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """The state written by write_checkpoint, after checking it was made with this space and config.

    space and config are the fingerprints of the running search (SearchSpace.fingerprint(),
    SearchConfig.fingerprint()).
    """
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InvalidInputError(f"{path}: not a readable search checkpoint: {e}") from e
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise InvalidInputError(f"{path}: not an onnxopt search checkpoint")
    if state.get("version") != CHECKPOINT_VERSION:
        raise InvalidInputError(f"{path}: checkpoint version {state.get('version')} is not supported")
    if state["space"] != space:
        raise InvalidInputError(
            f"{path}: the checkpoint was made with a different search space; "
            "use the same space or start over without --resume"
        )
    if state["config"] != config:
        diff = sorted(k for k in state["config"] if state["config"][k] != config.get(k))
        raise InvalidInputError(
            f"{path}: the checkpoint was made with different settings ({', '.join(diff)}); "
            "use the same settings (only --generations may change) or start over without --resume"
        )
    return state
