"""Where the fuzzer's random choices come from: a numpy generator seeded per case.

Case builders only call `pick`, `integer`, `chance` and `rng`, so case i of seed s is the same
case in every process and on every machine. The test suite lets hypothesis choose the case's
command, damage family, base model and seed (tests/test_fuzz.py); the long run numbers them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np

T = TypeVar("T")


class Chooser:
    """Choices from a numpy generator seeded with (seed, index)."""

    def __init__(self, seed: int, index: int = 0) -> None:
        self._rng = np.random.default_rng([seed, index])

    def pick(self, items: Sequence[T]) -> T:
        return items[int(self._rng.integers(len(items)))]

    def integer(self, low: int, high: int) -> int:
        """An integer in [low, high] (both ends included)."""
        return int(self._rng.integers(low, high, endpoint=True))

    def chance(self, p: float) -> bool:
        return bool(self._rng.random() < p)

    def rng(self) -> np.random.Generator:
        """A fresh generator for bulk random content (bytes, arrays), seeded from this one."""
        return np.random.default_rng(int(self._rng.integers(2**32)))
