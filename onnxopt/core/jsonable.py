"""JSON encoding of the values onnxopt's reports hold (numpy scalars and arrays, paths)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def json_default(o: Any) -> Any:
    """`default=` hook for json.dumps: numpy scalars/arrays and paths; TypeError for the rest."""
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")
