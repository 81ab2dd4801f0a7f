"""Data files for the fuzzer: valid .npz files for a base model, and broken ones.

`valid_npz(spec, role, rng)` builds inputs (+ labels for role "data") that fit the model.
`mutate_npz(ch, spec, arrays)` breaks one thing and says whether a command must then refuse:
`ALWAYS` (unusable inputs: NaN/Inf, strings, wrong rank, missing keys, unreadable files),
`LABELS` (bad labels: must be refused where labels are used for accuracy) or None (a change a
tool may legitimately accept, e.g. float64 inputs or an extra key).
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np

from scripts.fuzz.chooser import Chooser
from scripts.fuzz.models import CLASSES, Spec, digits_arrays

ALWAYS, LABELS = "always", "labels"
Arrays = dict[str, np.ndarray]


def to_npz(arrays: Arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]  # keyword arrays are fine
    return buf.getvalue()


def valid_arrays(spec: Spec, role: str, rng: np.random.Generator) -> Arrays:
    """Valid inputs for spec (16-32 samples); role "data" adds labels, "calib" may not."""
    if spec.name == "digits":
        src = digits_arrays()["data" if role == "data" else "calib"]
        n = 32 if role == "data" else 16
        return {k: v[:n] for k, v in src.items()}
    n = 16
    out: Arrays = {}
    for inp in spec.inputs:
        if inp.dtype == "int64":
            out[inp.name] = rng.integers(0, inp.high, (n, *inp.sample_shape)).astype(np.int64)
        else:
            out[inp.name] = rng.standard_normal((n, *inp.sample_shape)).astype(inp.dtype)
    if role == "data":
        out["labels"] = rng.integers(0, CLASSES, n).astype(np.int64)
    return out


def _first_input(spec: Spec) -> str:
    return spec.inputs[0].name


def _specials(ch: Chooser, a: Arrays, spec: Spec, value: float) -> None:
    key = ch.pick([i.name for i in spec.inputs])
    x = a[key].astype(np.float32 if a[key].dtype.kind != "f" else a[key].dtype)
    flat = x.reshape(-1)
    for _ in range(ch.integer(1, 4)):
        flat[ch.integer(0, flat.size - 1)] = value
    a[key] = x


def _nan(ch: Chooser, a: Arrays, s: Spec) -> str | None:
    _specials(ch, a, s, float("nan"))
    return ALWAYS


def _inf(ch: Chooser, a: Arrays, s: Spec) -> str | None:
    _specials(ch, a, s, ch.pick((float("inf"), float("-inf"))))
    return ALWAYS


def _dtype(ch: Chooser, a: Arrays, s: Spec) -> str | None:
    k = _first_input(s)
    a[k] = a[k].astype(ch.pick(("float64", "float16", "int32", "bool", "uint8")))
    return None


def _string(ch: Chooser, a: Arrays, s: Spec) -> str | None:
    k = _first_input(s)
    a[k] = a[k].astype(str)
    return ALWAYS


def _complex(ch: Chooser, a: Arrays, s: Spec) -> str | None:
    k = _first_input(s)
    a[k] = a[k].astype(np.complex64)
    return ALWAYS


def _rank(ch: Chooser, a: Arrays, s: Spec) -> str | None:
    k = _first_input(s)
    x = a[k]
    # One more axis, a single feature per sample (1-D), or a scalar: every choice changes rank.
    # A 1-D array as long as a sample is one sample (a batch axis is added): keep one sample fewer.
    one_d = x.reshape(x.shape[0], -1)[:, 0]
    if len(one_d) == int(np.prod(x.shape[1:])):
        one_d = one_d[:-1]
    a[k] = ch.pick((x[..., None], one_d, np.asarray(x.reshape(-1)[0])))
    return ALWAYS


def _feature(ch: Chooser, a: Arrays, s: Spec) -> str | None:
    k = _first_input(s)
    x = a[k]
    a[k] = x[..., :-1] if ch.chance(0.5) else np.concatenate([x, x[..., :1]], axis=-1)
    return ALWAYS


def _samples(ch: Chooser, a: Arrays, s: Spec) -> str | None:
    """0 samples (unusable) or a single sample (valid)."""
    n = ch.pick((0, 1))
    for k in list(a):
        a[k] = a[k][:n]
    return ALWAYS if n == 0 else None


def _huge(ch: Chooser, a: Arrays, s: Spec) -> str | None:
    k = _first_input(s)
    if a[k].dtype.kind == "f":
        with np.errstate(over="ignore"):  # 3e38 * |x| > 1 overflows to inf on purpose... rarely
            a[k] = (a[k] * ch.pick((1e30, -1e30, 3e38))).astype(a[k].dtype)
    return None


def _labels(ch: Chooser, a: Arrays, s: Spec) -> str | None:
    n = a[_first_input(s)].shape[0]
    y = a.get("labels", np.zeros(n, dtype=np.int64)).copy()
    kind = ch.pick(("2d", "neg", "oob", "nan", "frac", "string", "len"))
    if kind == "2d":
        y = np.eye(CLASSES, dtype=np.float32)[y % CLASSES]
    elif kind == "neg":
        y[ch.integer(0, n - 1)] = ch.pick((-1, -100))
    elif kind == "oob":
        y[ch.integer(0, n - 1)] = ch.pick((CLASSES, 255, 10**9))
    elif kind == "nan":
        y = y.astype(np.float32)
        y[ch.integer(0, n - 1)] = np.nan
    elif kind == "frac":
        y = y.astype(np.float64) + 0.5
    elif kind == "string":
        y = np.array([f"class{v}" for v in y])
    else:
        y = y[:-1]
    a["labels"] = y
    return LABELS


def _keys(ch: Chooser, a: Arrays, s: Spec) -> str | None:
    kind = ch.pick(("missing", "extra", "none", "labels_only"))
    if kind == "missing":
        k = _first_input(s)
        a["wrong_name"] = a.pop(k)
        a["decoy"] = a["wrong_name"].copy()  # two candidates: no single-input fallback applies
        return ALWAYS
    if kind == "extra":
        a["extra"] = np.zeros(3, dtype=np.float32)
        return None
    keep = {"labels": a["labels"]} if kind == "labels_only" and "labels" in a else {}
    a.clear()
    a.update(keep)
    return ALWAYS


def _batch_mismatch(ch: Chooser, a: Arrays, s: Spec) -> str | None:
    """Inputs (or labels) with different sample counts."""
    names = [i.name for i in s.inputs]
    if len(names) > 1:
        a[names[1]] = a[names[1]][:-1]
        return ALWAYS
    if "labels" in a:
        a["labels"] = np.concatenate([a["labels"], a["labels"][:1]])
        return LABELS
    return None


ARRAY_MUTATIONS: dict[str, Callable[[Chooser, Arrays, Spec], str | None]] = {
    "nan": _nan,
    "inf": _inf,
    "dtype": _dtype,
    "string": _string,
    "complex": _complex,
    "rank": _rank,
    "feature": _feature,
    "samples": _samples,
    "huge": _huge,
    "labels": _labels,
    "keys": _keys,
    "batch_mismatch": _batch_mismatch,
}


def _file_kind(ch: Chooser, blob: bytes) -> tuple[str, bytes]:
    """Damage the file itself: garbage, truncated archive, pickle, or a lone .npy."""
    rng = ch.rng()
    kind = ch.pick(("garbage", "truncated", "pickle", "npy"))
    if kind == "garbage":
        return kind, rng.bytes(int(rng.integers(0, 512)))
    if kind == "truncated":
        return kind, blob[: int(rng.integers(1, len(blob)))]
    if kind == "pickle":
        buf = io.BytesIO()
        np.savez(buf, input=np.array([{"a": 1}, None], dtype=object))
        return kind, buf.getvalue()
    buf = io.BytesIO()
    np.save(buf, np.zeros((4, 3), dtype=np.float32))
    return kind, buf.getvalue()


def mutate_npz(ch: Chooser, spec: Spec, arrays: Arrays) -> tuple[str, bytes, str | None]:
    """(kind, npz bytes, ALWAYS | LABELS | None): one broken data file built from valid arrays."""
    if ch.chance(0.15):
        kind, blob = _file_kind(ch, to_npz(arrays))
        return f"file:{kind}", blob, (None if kind == "npy" else ALWAYS)
    kind = ch.pick(tuple(ARRAY_MUTATIONS))
    a = dict(arrays)
    reject = ARRAY_MUTATIONS[kind](ch, a, spec)
    return kind, to_npz(a), reject
