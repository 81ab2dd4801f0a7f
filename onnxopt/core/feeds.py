"""Model input feeds: synthesized from input specs, or loaded and checked from .npz files."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
from onnx import ModelProto

from onnxopt.core.checks import check_data
from onnxopt.core.errors import InvalidInputError
from onnxopt.core.model import TensorSpec, batch_axes, graph_inputs

Feed = dict[str, np.ndarray]
# Synthesized inputs larger than this are a mistake (a corrupt or absurd declared shape), not a deployment.
MAX_SYNTHETIC_BYTES = 8 * 2**30

Axes = Mapping[str, int | None]  # input name -> batch axis (core.model.batch_axes); None: fed as it is

SEQUENCE_DEFAULT = 128  # tokens, frames, samples: long enough to time a sequence model fairly
IMAGE_DEFAULT = 640  # detectors' and OCR models' usual input side; never a tiny side
_SEQUENCE_WORDS = ("seq", "sequence", "length", "len", "time", "token", "tokens", "frames", "steps", "samples")
_SPATIAL_WORDS = ("h", "w", "height", "width")
_CHANNELS = (1, 3, 4)


def parse_shape_overrides(items: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """Parse ["name=1,3,224,224", ...] into {name: shape}; "name=" (nothing) is a scalar."""
    out: dict[str, tuple[int, ...]] = {}
    for item in items:
        if "=" not in item:
            raise InvalidInputError(f"--shape {item!r}: expected name=d0,d1,... e.g. input=1,3,224,224")
        name, _, dims = item.partition("=")
        try:
            shape = tuple(int(d) for d in dims.replace("x", ",").split(",") if d.strip())
        except ValueError as e:
            raise InvalidInputError(f"--shape {item!r}: dimensions must be integers") from e
        if any(d <= 0 for d in shape) or (not shape and dims.strip()):
            raise InvalidInputError(f"--shape {item!r}: dimensions must be positive integers")
        out[name.strip()] = shape
    return out


def _words(name: str) -> set[str]:
    """'p2o.DynamicDimension.2' -> {'p', 'o', 'dynamic', 'dimension'}; 'seqLen' -> {'seq', 'len'}."""
    spaced = re.sub(r"([a-z])([A-Z])", r"\1 \2", name)
    return set(re.findall(r"[a-z]+", spaced.lower()))


def _image_spatial_axes(spec: TensorSpec) -> tuple[int, ...]:
    """The height/width axes of a 4-D float image input (NCHW, else NHWC, by a fixed 1/3/4 channel dim)."""
    if len(spec.shape) != 4 or not np.issubdtype(spec.numpy_dtype, np.floating):
        return ()
    if spec.shape[1] in _CHANNELS:
        return (2, 3)
    if spec.shape[3] in _CHANNELS:
        return (1, 2)
    return ()


def _default_dim(spec: TensorSpec, axis: int, batch: int) -> int | None:
    """A size for a symbolic dimension that is not the batch axis, or None when nothing fits."""
    d = spec.shape[axis]
    words = _words(str(d)) if d is not None else set()
    if "batch" in words:
        return batch
    if words & set(_SEQUENCE_WORDS):
        return SEQUENCE_DEFAULT
    if words & set(_SPATIAL_WORDS) or axis in _image_spatial_axes(spec):
        return IMAGE_DEFAULT
    if len(spec.shape) in (2, 3) and axis == 1:  # [batch, sequence] ids or [batch, sequence, features]
        return SEQUENCE_DEFAULT
    return None


def resolve_shape(
    spec: TensorSpec,
    batch: int = 1,
    overrides: Mapping[str, tuple[int, ...]] | None = None,
    *,
    batch_axis: int | None = 0,
) -> tuple[int, ...]:
    """A concrete shape for an input: its override, else its static dims with `batch` on the
    symbolic batch axis and defaults for the other symbolic dims (images' height/width 640,
    sequence axes 128). Raises InvalidInputError asking for --shape when no default fits."""
    if overrides and spec.name in overrides:
        shape = overrides[spec.name]
        if len(spec.shape) and len(shape) != len(spec.shape):  # () may also be an unknown rank
            raise InvalidInputError(
                f"--shape {spec.name}: model input has rank {len(spec.shape)}, got rank {len(shape)}"
            )
        for want, got in zip(spec.shape, shape):
            if isinstance(want, int) and want > 0 and want != got:
                raise InvalidInputError(
                    f"--shape {spec.name}: dimension fixed at {want} in the model, got {got}"
                )
        return shape
    dims: list[int] = []
    for i, d in enumerate(spec.shape):
        if isinstance(d, int) and d > 0:
            dims.append(d)
            continue
        size = batch if i == batch_axis else _default_dim(spec, i, batch)
        if size is None:
            example = ",".join(str(x) if isinstance(x, int) and x > 0 else "N" for x in spec.shape)
            raise InvalidInputError(
                f"input {spec.name!r} has a symbolic dimension {d or '?'!s} (axis {i}) with no default size: "
                f"give its shape with --shape {spec.name}={example} (N: the size you deploy with)"
            )
        dims.append(size)
    return tuple(dims)


def synthesize_feed(
    model: ModelProto,
    *,
    batch: int = 1,
    overrides: Mapping[str, tuple[int, ...]] | None = None,
    seed: int = 0,
) -> Feed:
    """Seeded random inputs of the right dtype and shape for every model input.

    `batch` goes on each input's symbolic batch axis (core.model.batch_axes); scalars and
    non-batched inputs keep their own shape.
    """
    rng = np.random.default_rng(seed)
    axes = batch_axes(model)
    feed: Feed = {}
    for spec in graph_inputs(model):
        shape = resolve_shape(spec, batch, overrides, batch_axis=axes.get(spec.name, 0))
        dt = spec.numpy_dtype
        nbytes = math.prod(shape) * np.dtype(dt).itemsize  # Python ints: no overflow on absurd dims
        if nbytes > MAX_SYNTHETIC_BYTES:
            raise InvalidInputError(
                f"input {spec.name}: shape {'x'.join(map(str, shape))} would take {nbytes:,} bytes; "
                "pass --shape with the deployment size or real inputs with --data"
            )
        if np.issubdtype(dt, np.floating):
            arr = np.asarray(rng.standard_normal(shape)).astype(dt)
        elif dt == np.bool_:
            arr = np.asarray(rng.integers(0, 2, shape)).astype(np.bool_)
        elif np.issubdtype(dt, np.integer):
            # Token ids, bytes and indices: small non-negative values are valid for most models.
            arr = np.asarray(rng.integers(0, 100, shape)).astype(dt)
        else:
            raise InvalidInputError(
                f"input {spec.name}: cannot synthesize dtype {spec.dtype}; pass real inputs with --data"
            )
        feed[spec.name] = arr
    return feed


# ---------------------------------------------------------------- samples of a feed


def feed_axes(feed: Mapping[str, np.ndarray], axes: Axes | None = None) -> dict[str, int | None]:
    """The batch axis of each array of a feed: from `axes` (names it lacks: 0), None for arrays
    too small to have that axis (scalars)."""
    out: dict[str, int | None] = {}
    for k, v in feed.items():
        ax = axes.get(k, 0) if axes is not None else 0
        out[k] = ax if ax is not None and np.ndim(v) > ax else None
    return out


def feed_samples(feed: Mapping[str, np.ndarray], axes: Axes | None = None) -> int:
    """The number of samples in a feed: the smallest batch dim of its batched arrays; 1 when
    none is batched (the feed is one sample); 0 for an empty feed."""
    ax = feed_axes(feed, axes)
    sizes = [int(np.shape(v)[a]) for k, v in feed.items() if (a := ax[k]) is not None]
    if sizes:
        return min(sizes)
    return 1 if feed else 0


def slice_feed(feed: Mapping[str, np.ndarray], start: int, stop: int, axes: Axes | None = None) -> Feed:
    """Samples start..stop of a feed; non-batched arrays are passed as they are."""
    ax = feed_axes(feed, axes)
    out: Feed = {}
    for k, v in feed.items():
        a = ax[k]
        out[k] = v if a is None else v[(slice(None),) * a + (slice(start, stop),)]
    return out


def concat_feeds(parts: Sequence[Mapping[str, np.ndarray]], axes: Axes | None = None) -> Feed:
    """Feeds joined sample-wise (batched arrays concatenated, non-batched ones from the first)."""
    if not parts:
        return {}
    ax = feed_axes(parts[0], axes)
    return {k: v if ax[k] is None else np.concatenate([p[k] for p in parts], axis=ax[k])
            for k, v in parts[0].items()}


def batches(feed: Feed, batch_size: int, axes: Axes | None = None) -> Iterator[Feed]:
    """Split a feed along its batch axes into batches of at most batch_size samples (a feed with
    no batched array is one sample: yielded whole)."""
    n = feed_samples(feed, axes)
    if not any(a is not None for a in feed_axes(feed, axes).values()):
        if feed:
            yield dict(feed)
        return
    for start in range(0, n, batch_size):
        yield slice_feed(feed, start, start + batch_size, axes)


def first_batch(feed: Feed, batch_size: int, axes: Axes | None = None) -> Feed:
    """The first batch_size samples of a feed."""
    return slice_feed(feed, 0, batch_size, axes)


def load_npz(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """All arrays of an .npz (or a single .npy as {'': array}); clear errors on bad files."""
    p = Path(path)
    if not p.exists():
        raise InvalidInputError(f"{p}: no such file")
    if p.is_dir():
        raise InvalidInputError(f"{p}: is a directory; expected an .npz file")
    with open(p, "rb") as f:
        magic = f.read(6)
    # np.load falls back to unpickling anything else, whose error would confuse users.
    if not (magic.startswith(b"PK") or magic == b"\x93NUMPY"):
        raise InvalidInputError(
            f"{p}: not an .npz or .npy file; save arrays with numpy.savez(path, input=x, labels=y)"
        )
    try:
        if magic == b"\x93NUMPY":
            return {"": np.load(p, allow_pickle=False)}
        with np.load(p, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as e:
        raise InvalidInputError(f"{p}: not a readable .npz/.npy file: {e}") from e


def check_feed(model: ModelProto, feed: Mapping[str, np.ndarray], source: str = "data") -> None:
    """Raise InvalidInputError listing every input whose name, dtype or shape does not match."""
    problems: list[str] = []
    specs = graph_inputs(model)
    names = {s.name for s in specs}
    for spec in specs:
        if spec.name not in feed:
            problems.append(f"input {spec.name!r} missing from {source} (has: {', '.join(sorted(feed)) or 'nothing'})")
            continue
        arr = feed[spec.name]
        if arr.dtype != spec.numpy_dtype:
            problems.append(f"input {spec.name!r}: expected dtype {spec.numpy_dtype}, got {arr.dtype}")
        if len(spec.shape) != arr.ndim:
            problems.append(
                f"input {spec.name!r}: expected shape {_fmt(spec.shape)}, got {tuple(arr.shape)}"
            )
        else:
            for want, got in zip(spec.shape, arr.shape):
                if isinstance(want, int) and want > 0 and want != got:
                    problems.append(
                        f"input {spec.name!r}: expected shape {_fmt(spec.shape)}, got {tuple(arr.shape)}"
                    )
                    break
    if problems:
        raise InvalidInputError("\n".join(problems))
    del names


def _fmt(shape: tuple[int | str | None, ...]) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


def select_inputs(model: ModelProto, data: Mapping[str, np.ndarray]) -> Feed:
    """The model's inputs taken from an npz mapping (single-input models may use any one key), unchecked."""
    specs = graph_inputs(model)
    feed = {s.name: data[s.name] for s in specs if s.name in data}
    if len(specs) == 1 and specs[0].name not in data:
        candidates = [k for k in data if k not in ("labels", "y", "label", "targets")]
        if len(candidates) == 1:
            feed = {specs[0].name: data[candidates[0]]}
        elif "x" in data or "inputs" in data:
            feed = {specs[0].name: data["x" if "x" in data else "inputs"]}
    # Cast float64 data to the model's float type, and integers to the model's integer type
    # when every value fits (np.savez stores Python ints as int64): common, harmless mismatches.
    for s in specs:
        if s.name not in feed:
            continue
        arr, want = np.asarray(feed[s.name]), s.numpy_dtype
        if arr.dtype == np.float64 and want == np.float32:
            feed[s.name] = arr.astype(np.float32)
        elif _int_fits(arr, want):
            feed[s.name] = arr.astype(want)
    return feed


def _int_fits(arr: np.ndarray, want: np.dtype) -> bool:
    if arr.dtype == want or not (np.issubdtype(arr.dtype, np.integer) and np.issubdtype(want, np.integer)):
        return False
    if arr.size == 0:
        return True
    info = np.iinfo(want)
    return bool(info.min <= arr.min() and arr.max() <= info.max)


def model_feed_from_npz(
    model: ModelProto, data: Mapping[str, np.ndarray], source: str = "data"
) -> Feed:
    """select_inputs, then check_feed."""
    feed = select_inputs(model, data)
    check_feed(model, feed, source)
    return feed


def add_batch_axis(model: ModelProto, data: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The arrays, with a batch axis added to those one rank short of their batched input (a
    single sample); inputs without a batch axis (scalars, states) are left as they are.

    A key that is not an input name matches the input of a single-input model.
    """
    specs = graph_inputs(model)
    axes = batch_axes(model)
    out = dict(data)
    for key, arr in data.items():
        spec = next((s for s in specs if s.name == key), specs[0] if len(specs) == 1 else None)
        axis = axes.get(spec.name) if spec is not None else None
        if spec is not None and axis is not None and len(spec.shape) == np.ndim(arr) + 1:
            out[key] = np.expand_dims(arr, axis)
    return out


def with_free_batch(model: ModelProto) -> ModelProto:
    """An inputs-only view of a model whose fixed batch dims (core.model.batch_axes) are symbolic.

    Lets a dataset of many samples be checked against a model exported with a fixed batch
    (which is then run in chunks of that batch). Inputs without a batch axis keep their shape.
    """
    view = ModelProto()
    axes = batch_axes(model)
    inits = {t.name for t in model.graph.initializer}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        new = view.graph.input.add()
        new.CopyFrom(vi)
        dims = new.type.tensor_type.shape.dim
        axis = axes.get(vi.name)
        if axis is not None and new.type.tensor_type.HasField("shape") and dims[axis].HasField("dim_value"):
            dims[axis].dim_param = "batch"
    return view


# ---------------------------------------------------------------- labelled data

LABEL_KEYS = ("labels", "label", "y", "targets")  # names under which an .npz may hold class labels


def load_labelled_npz(
    path: str | os.PathLike[str], *, input_key: str | None = None, labels_key: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, labels) from an .npz saved as np.savez(path, input=x, labels=y).

    labels: under labels_key, else the first of LABEL_KEYS present; one-hot rows become class
    indices and integer-valued floats int64. inputs: under input_key, else 'input', else the
    only array that is not labels; float64 becomes float32. Labels are not range-checked here.
    """
    arrays = load_npz(path)
    lk = labels_key or next((k for k in LABEL_KEYS if k in arrays), None)
    if lk is None or lk not in arrays:
        raise InvalidInputError(
            f"{path}: no labels (looked for {labels_key or ', '.join(LABEL_KEYS)}; "
            f"has: {', '.join(arrays) or 'nothing'}); save class labels with np.savez(..., input=x, labels=y)"
        )
    if input_key is None:
        others = [k for k in arrays if k != lk and k not in LABEL_KEYS]
        ik = "input" if "input" in arrays else (others[0] if len(others) == 1 else None)
        if ik is None:
            raise InvalidInputError(
                f"{path}: cannot tell which array holds the inputs ({', '.join(others)}); name it 'input'"
            )
    else:
        ik = input_key
        if ik not in arrays:
            raise InvalidInputError(f"{path}: no array {ik!r} (has: {', '.join(arrays)})")
    x = np.asarray(arrays[ik])
    if x.dtype == np.float64:
        x = x.astype(np.float32)
    y = np.asarray(arrays[lk])
    if y.ndim == 2 and y.shape[1] > 1:  # one-hot
        y = y.argmax(axis=1)
    if y.ndim == 1 and np.issubdtype(y.dtype, np.floating) and np.all(y == np.round(y)):
        y = y.astype(np.int64)
    check_data({ik: x}, str(path))  # numbers, finite; the labels are checked where classes are known
    return x, y
