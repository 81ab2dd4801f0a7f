"""The k smallest magnitudes over many tensors read one at a time, without concatenating them.

Global magnitude pruning zeroes the k = round(s N) smallest |w| over all N candidate entries. In
memory that is one argpartition over the concatenated magnitudes (N int64 indices: 8 bytes per
weight); here it is a radix selection on the bit patterns of |w| as float32, since non-negative
floats order like their bits read as uint32 (NaN last):
  pass 1: a 2^16-bin histogram of the top 16 bits of every entry, summed over the tensors (it
          does not depend on s: computed once per model), names the bucket b holding the k-th;
  pass 2: a 2^16-bin histogram of the low 16 bits of the entries in bucket b gives the k-th
          value v exactly, and c = #{|w| < v}.
The cut zeroes every |w| < v and, of the entries equal to v, the first k - c in the order the
tensors are named, then row-major: exactly k in all. Each pass reads every tensor once; memory is
one tensor and two of its temporaries. Where several entries share v, argpartition (the in-memory
path) picks its own k - c of them: the only case where the two can zero different entries.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

HI = 16  # bits of the first pass
_LO = 32 - HI


def abs_bits(f: np.ndarray) -> np.ndarray:
    """|f| as float32 bit patterns (uint32): they order like the magnitudes."""
    return np.abs(f).astype(np.float32, copy=False).view(np.uint32)


@dataclass(frozen=True)
class Cut:
    """Zero every |w| whose bits are below `value`, and the first `ties[name]` entries equal to it."""

    value: int
    ties: dict[str, int]

    def apply(self, f: np.ndarray, name: str) -> None:
        """Zero the selected entries of tensor `name` (a flat array, in place)."""
        bits = abs_bits(f)
        below = bits < self.value
        if self.ties.get(name):
            below[np.flatnonzero(bits == self.value)[:self.ties[name]]] = True
        f[below] = 0


def high_histogram(arrays: Iterable[np.ndarray]) -> np.ndarray:
    """Pass 1: counts of the top HI bits of |w| over every array."""
    hist = np.zeros(1 << HI, np.int64)
    for f in arrays:
        hist += np.bincount(abs_bits(f) >> _LO, minlength=1 << HI)
    return hist


def smallest_cut(names: list[str], read: Callable[[str], np.ndarray], k: int, hist: np.ndarray) -> Cut:
    """The cut of the k smallest |w| (0 < k < N) over tensors `names` (read(name): a flat array), given
    their pass-1 histogram."""
    cum = np.cumsum(hist)
    bucket = int(np.searchsorted(cum, k))  # the first bucket whose running count reaches k
    below = int(cum[bucket - 1]) if bucket else 0
    low = np.zeros(1 << _LO, np.int64)
    for nm in names:
        bits = abs_bits(read(nm))
        low += np.bincount(bits[(bits >> _LO) == bucket] & ((1 << _LO) - 1), minlength=1 << _LO)
    cum_low = np.cumsum(low)
    lo = int(np.searchsorted(cum_low, k - below))
    value = (bucket << _LO) | lo
    need = k - below - (int(cum_low[lo - 1]) if lo else 0)
    ties: dict[str, int] = {}
    for nm in names:  # the entries equal to value: first come, first zeroed
        if need <= 0:
            break
        ties[nm] = min(need, int(np.count_nonzero(abs_bits(read(nm)) == value)))
        need -= ties[nm]
    return Cut(value, ties)
