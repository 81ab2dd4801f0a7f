"""Model input feeds: synthesized from input specs, or loaded and checked from .npz files."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
from onnx import ModelProto

from onnxopt.core.checks import check_data
from onnxopt.core.errors import InvalidInputError
from onnxopt.core.model import TensorSpec, graph_inputs

Feed = dict[str, np.ndarray]

DEFAULT_SYMBOLIC = {"batch": 1, "sequence": 128, "seq": 128, "length": 128}


def parse_shape_overrides(items: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """Parse ["name=1,3,224,224", ...] into {name: shape}."""
    out: dict[str, tuple[int, ...]] = {}
    for item in items:
        if "=" not in item:
            raise InvalidInputError(f"--shape {item!r}: expected name=d0,d1,... e.g. input=1,3,224,224")
        name, _, dims = item.partition("=")
        try:
            shape = tuple(int(d) for d in dims.replace("x", ",").split(",") if d.strip())
        except ValueError as e:
            raise InvalidInputError(f"--shape {item!r}: dimensions must be integers") from e
        if not shape or any(d <= 0 for d in shape):
            raise InvalidInputError(f"--shape {item!r}: dimensions must be positive integers")
        out[name.strip()] = shape
    return out


def resolve_shape(
    spec: TensorSpec, batch: int = 1, overrides: Mapping[str, tuple[int, ...]] | None = None
) -> tuple[int, ...]:
    """A concrete shape for an input: override, else static dims, else sensible defaults."""
    if overrides and spec.name in overrides:
        shape = overrides[spec.name]
        if len(spec.shape) and len(shape) != len(spec.shape):
            raise InvalidInputError(
                f"--shape {spec.name}: model input has rank {len(spec.shape)}, got rank {len(shape)}"
            )
        for want, got in zip(spec.shape, shape):
            if isinstance(want, int) and want != got:
                raise InvalidInputError(
                    f"--shape {spec.name}: dimension fixed at {want} in the model, got {got}"
                )
        return shape
    dims: list[int] = []
    for i, d in enumerate(spec.shape):
        if isinstance(d, int) and d > 0:
            dims.append(d)
        elif i == 0:
            dims.append(batch)
        else:
            key = str(d).lower() if d is not None else ""
            guess = next((v for k, v in DEFAULT_SYMBOLIC.items() if k in key), None)
            dims.append(guess if guess is not None else 1)
    return tuple(dims)


def synthesize_feed(
    model: ModelProto,
    *,
    batch: int = 1,
    overrides: Mapping[str, tuple[int, ...]] | None = None,
    seed: int = 0,
) -> Feed:
    """Seeded random inputs of the right dtype and shape for every model input."""
    rng = np.random.default_rng(seed)
    feed: Feed = {}
    for spec in graph_inputs(model):
        shape = resolve_shape(spec, batch, overrides)
        dt = spec.numpy_dtype
        if np.issubdtype(dt, np.floating):
            arr = rng.standard_normal(shape).astype(dt)
        elif dt == np.bool_:
            arr = rng.integers(0, 2, shape).astype(np.bool_)
        elif np.issubdtype(dt, np.integer):
            # Token ids and indices: small non-negative values are valid for most models.
            arr = rng.integers(0, 100, shape).astype(dt)
        else:
            raise InvalidInputError(
                f"input {spec.name}: cannot synthesize dtype {spec.dtype}; pass real inputs with --data"
            )
        feed[spec.name] = arr
    return feed


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
    # Cast float64 data to the model's float type: a common, harmless mismatch.
    for s in specs:
        if s.name in feed and feed[s.name].dtype == np.float64 and s.numpy_dtype == np.float32:
            feed[s.name] = feed[s.name].astype(np.float32)
    return feed


def model_feed_from_npz(
    model: ModelProto, data: Mapping[str, np.ndarray], source: str = "data"
) -> Feed:
    """select_inputs, then check_feed."""
    feed = select_inputs(model, data)
    check_feed(model, feed, source)
    return feed


def batches(feed: Feed, batch_size: int) -> Iterator[Feed]:
    """Split a feed along axis 0 into batches of at most batch_size samples."""
    n = min(int(v.shape[0]) for v in feed.values()) if feed else 0
    for start in range(0, n, batch_size):
        yield {k: v[start : start + batch_size] for k, v in feed.items()}


def first_batch(feed: Feed, batch_size: int) -> Feed:
    """The first batch_size samples of a feed."""
    return {k: v[:batch_size] for k, v in feed.items()}


def add_batch_axis(model: ModelProto, data: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The arrays, with a leading batch axis added to those one rank short of their input (a single sample).

    A key that is not an input name matches the input of a single-input model.
    """
    specs = graph_inputs(model)
    out = dict(data)
    for key, arr in data.items():
        spec = next((s for s in specs if s.name == key), specs[0] if len(specs) == 1 else None)
        if spec is not None and len(spec.shape) == arr.ndim + 1:
            out[key] = arr[None]
    return out


def with_free_batch(model: ModelProto) -> ModelProto:
    """An inputs-only view of a model whose fixed leading (batch) dims are made symbolic.

    Lets a dataset of many samples be checked against a model exported with a fixed batch
    (which is then run in chunks of that batch).
    """
    view = ModelProto()
    inits = {t.name for t in model.graph.initializer}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        new = view.graph.input.add()
        new.CopyFrom(vi)
        dims = new.type.tensor_type.shape.dim
        if new.type.tensor_type.HasField("shape") and len(dims) and dims[0].HasField("dim_value"):
            dims[0].dim_param = "batch"
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
