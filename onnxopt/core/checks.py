"""Validators shared by every command: numeric options and data files.

Options: a value must be a finite number inside its documented range; NaN compares false with
everything, so a plain range check lets it through every gate. Violations raise
InvalidOptionError (a usage error, exit code 2).
Data: `check_data` is the one validator of data read from files (model inputs, labels,
calibration data): arrays must be numeric (bool, integer or floating point), floating inputs
finite, and labels a 1-D array of non-negative integers, one per sample, below the number of
classes when it is known; inputs with a batch axis must hold as many samples as each other
(`check_sample_counts`). Violations raise InvalidInputError (exit code 1) naming the key and
the first offending sample. Shapes and dtypes against the model are core.feeds.check_feed's job.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from onnx import ModelProto

from onnxopt.core.errors import InvalidInputError, InvalidOptionError
from onnxopt.core.model import fixed_batch, graph_inputs


def check_number(
    name: str,
    value: float | None,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    hint: str = "",
) -> None:
    """Raise InvalidOptionError unless value is None or a finite number in the range.

    The range is [low, high]; low_open/high_open exclude that end.
    """
    if value is None:
        return
    suffix = f" ({hint})" if hint else ""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidOptionError(f"{name} {value}: must be a finite number{suffix}")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        lo = "" if low is None else ("(" if low_open else "[") + f"{low:g}"
        hi = "" if high is None else f"{high:g}" + (")" if high_open else "]")
        if low is not None and high is not None:
            rng = f"in {lo}, {hi}"
        elif low is not None:
            rng = f"{'>' if low_open else '>='} {low:g}"
        else:
            rng = f"{'<' if high_open else '<='} {high:g}"
        raise InvalidOptionError(f"{name} {value}: must be {rng}{suffix}")


def check_numeric(feed: Mapping[str, np.ndarray], source: str) -> None:
    """Raise InvalidInputError when an array is not numbers (strings, objects, complex, ...)."""
    for key, arr in feed.items():
        a = np.asarray(arr)
        if a.dtype.kind not in "biuf":
            raise InvalidInputError(
                f"{source}: {key!r} holds {a.dtype} values; inputs must be numbers (bool, integer or float arrays)"
            )


def check_data(
    feed: Mapping[str, np.ndarray],
    source: str,
    *,
    labels: np.ndarray | None = None,
    classes: int | None = None,
) -> np.ndarray | None:
    """Check data read from a file: numeric and finite arrays, and (when given) labels that are
    1-D class indices, one per sample, below `classes` when known. Returns the labels as int64."""
    check_numeric(feed, source)
    check_finite(feed, source)
    if labels is None:
        return None
    samples = min((int(np.shape(v)[0]) for v in feed.values() if np.ndim(v)), default=len(labels))
    return check_labels(labels, samples, source, classes=classes)


def check_sample_counts(model: ModelProto, feed: Mapping[str, np.ndarray], source: str) -> None:
    """Raise InvalidInputError when the model's batched inputs (a symbolic first dim, or the model's
    fixed batch) differ in sample count; inputs without a batch axis may hold anything."""
    fixed = fixed_batch(model)
    batched = [s.name for s in graph_inputs(model)
               if s.shape and (not isinstance(s.shape[0], int) or s.shape[0] <= 0 or s.shape[0] == fixed)]  # fmt: skip
    counts = {k: int(np.shape(feed[k])[0]) for k in batched if k in feed and np.ndim(feed[k])}
    if 0 in counts.values():
        empty = next(k for k, n in counts.items() if n == 0)
        raise InvalidInputError(f"{source}: {empty!r} holds no samples; give at least one")
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"{k!r} {n}" for k, n in counts.items())
        raise InvalidInputError(f"{source}: the inputs hold different numbers of samples ({listed}); give each as many")


def check_finite(feed: Mapping[str, np.ndarray], source: str) -> None:
    """Raise InvalidInputError when a floating-point array holds NaN or Inf (names key and sample)."""
    for key, arr in feed.items():
        a = np.asarray(arr)
        if not np.issubdtype(a.dtype, np.floating) or a.size == 0:
            continue
        bad = ~np.isfinite(a)
        if bad.any():
            where = np.argwhere(bad)[0]
            sample = f"sample {int(where[0])}" if a.ndim else "the scalar"
            raise InvalidInputError(
                f"{source}: {key!r} contains NaN or Inf ({int(bad.sum())} value(s), first at {sample}); clean the data"
            )


def check_labels(labels: np.ndarray, samples: int, source: str, *, classes: int | None = None) -> np.ndarray:
    """Labels as int64 after checking: 1-D, one per sample, integral, >= 0, < classes when known."""
    a = np.asarray(labels)
    if a.ndim != 1:
        raise InvalidInputError(
            f"{source}: labels must be a 1-D array of class indices, got shape {a.shape}"
            + ("; one-hot labels? store labels.argmax(axis=1)" if a.ndim == 2 else "")
        )
    if a.shape[0] != samples:
        raise InvalidInputError(f"{source}: {a.shape[0]} labels for {samples} samples; give one label per sample")
    if a.dtype.kind not in "biuf":
        raise InvalidInputError(f"{source}: labels must be integers, got dtype {a.dtype}")
    if np.issubdtype(a.dtype, np.floating):
        bad = ~np.isfinite(a) | (a != np.round(a))
        if bad.any():
            i = int(np.argmax(bad))
            raise InvalidInputError(f"{source}: label of sample {i} is {a[i].item()!r}; labels must be whole class indices")
    out = a.astype(np.int64)
    if out.size and out.min() < 0:
        i = int(np.argmax(out < 0))
        raise InvalidInputError(f"{source}: label of sample {i} is {out[i]}; class indices start at 0")
    if classes is not None and out.size and out.max() >= classes:
        i = int(np.argmax(out >= classes))
        raise InvalidInputError(
            f"{source}: label of sample {i} is {out[i]} but the model has {classes} classes (0..{classes - 1})"
        )
    return out
