"""Reading the TOML files users write (recipes, search spaces) with one-line errors."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from onnxopt.core.errors import InvalidInputError


def parse_toml(text: str, source: str) -> dict[str, Any]:
    """Parsed TOML text; a syntax error names the source, line and column."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise InvalidInputError(f"{source}: not valid TOML: {e}") from e


def read_toml_text(path: str | os.PathLike[str], what: str) -> str:
    """The text of a TOML file `what` (e.g. 'recipe'): missing files, folders and unreadable or
    non-UTF-8 files each get one line."""
    p = Path(path)
    if not p.exists():
        raise InvalidInputError(f"{p}: no such {what} file")
    if p.is_dir():
        raise InvalidInputError(f"{p}: is a directory; expected a .toml {what}")
    try:
        return p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidInputError(f"{p}: cannot read {what}: {e}") from e
