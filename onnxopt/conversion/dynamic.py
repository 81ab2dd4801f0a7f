"""Symbolic axes besides the batch: `--dynamic name=axis:label,...`, the parity inputs that
exercise them, and their names in the exported graph.

An axis made dynamic must be checked at sizes other than the example's: the exported model is
compared with the source at the example size n and at 2n and max(1, n // 2) (every input that
shares a label gets the same size, as a model that adds or masks them along that axis needs).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np
from onnx import ModelProto

from onnxopt.core.errors import InvalidInputError

Axes = dict[str, dict[int, str]]  # {tensor name: {axis: label}}

_ITEM = re.compile(r"^(?P<name>[^=\s]+)=(?P<axis>-?\d+):(?P<label>[A-Za-z_][A-Za-z0-9_]*)$")
RESIZE_FACTORS = (2.0, 0.5)  # the other sizes a dynamic axis is checked at, relative to the example


def parse_dynamic(items: Sequence[str]) -> tuple[tuple[str, int, str], ...]:
    """`name=axis:label` items (each may hold several, comma-separated) as (name, axis, label) triples."""
    out: list[tuple[str, int, str]] = []
    for item in items:
        for part in (p.strip() for p in item.split(",")):
            if not part:
                continue
            m = _ITEM.match(part)
            if m is None:
                raise InvalidInputError(
                    f"--dynamic {part!r}: expected NAME=AXIS:LABEL, e.g. --dynamic input_ids=1:sequence"
                )
            axis = int(m["axis"])
            if axis < 0:
                raise InvalidInputError(f"--dynamic {part!r}: the axis must be >= 0 (0 is the batch axis)")
            out.append((m["name"], axis, m["label"]))
    seen: dict[tuple[str, int], str] = {}
    for name, axis, label in out:
        if seen.setdefault((name, axis), label) != label:
            raise InvalidInputError(f"--dynamic {name}={axis}: given two labels ({seen[(name, axis)]}, {label})")
    return tuple(out)


def axes_of(triples: Sequence[tuple[str, int, str]]) -> Axes:
    """(name, axis, label) triples as {name: {axis: label}}."""
    axes: Axes = {}
    for name, axis, label in triples:
        axes.setdefault(name, {})[axis] = label
    return axes


def check_axes(axes: Mapping[str, Mapping[int, str]], names: Sequence[str], examples: Sequence[np.ndarray]) -> None:
    """Every --dynamic name is an input and every axis exists in its example; else one line."""
    for name, dims in axes.items():
        if name not in names:
            raise InvalidInputError(f"--dynamic {name}: no input of that name (inputs: {', '.join(names)})")
        ex = examples[list(names).index(name)]
        for axis in dims:
            if axis >= ex.ndim:
                raise InvalidInputError(
                    f"--dynamic {name}={axis}: the input has {ex.ndim} axes (shape {tuple(ex.shape)})"
                )


def resized(
    arrays: Sequence[np.ndarray], names: Sequence[str], axes: Mapping[str, Mapping[int, str]],
    factor: float, seed: int,
) -> list[np.ndarray] | None:
    """arrays with every dynamic non-batch axis scaled by factor (same size per label), refilled
    with seeded values like the originals; None when no size changes."""
    sizes: dict[str, int] = {}
    for name, a in zip(names, arrays):
        for axis, label in axes.get(name, {}).items():
            if axis > 0:
                sizes.setdefault(label, max(1, int(round(a.shape[axis] * factor))))
    if not sizes or all(
        a.shape[axis] == sizes[label]
        for name, a in zip(names, arrays) for axis, label in axes.get(name, {}).items() if axis > 0
    ):
        return None
    rng = np.random.default_rng(seed)
    out = []
    for name, a in zip(names, arrays):
        shape = list(a.shape)
        for axis, label in axes.get(name, {}).items():
            if axis > 0:
                shape[axis] = sizes[label]
        out.append(_like(a, tuple(shape), rng))
    return out


def _like(a: np.ndarray, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Seeded values of a's dtype and range, in shape."""
    if a.shape == shape:
        return a
    if np.issubdtype(a.dtype, np.floating):
        return rng.standard_normal(shape).astype(a.dtype)
    if a.dtype == np.bool_:
        return rng.integers(0, 2, shape).astype(np.bool_)
    lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 1)
    return rng.integers(lo, hi + 1, shape).astype(a.dtype)


def name_dims(model: ModelProto, axes: Mapping[str, Mapping[int, str]]) -> ModelProto:
    """Give the dynamic axes their labels in the graph's inputs and outputs.

    The symbol an exporter put on an input axis (s0, unk__3, ...) is renamed to the label
    everywhere in the inputs, outputs and value_info, so the outputs that follow that axis
    carry the label too; an output axis named in axes is labelled directly.
    """
    g = model.graph
    rename: dict[str, str] = {}
    for vi in list(g.input) + list(g.output):
        dims = vi.type.tensor_type.shape.dim
        for axis, label in axes.get(vi.name, {}).items():
            if axis < len(dims):
                old = dims[axis].dim_param
                if old and old != label:
                    rename[old] = label
                dims[axis].dim_param = label  # also clears a traced dim_value
    if rename:
        for vi in list(g.input) + list(g.output) + list(g.value_info):
            for d in vi.type.tensor_type.shape.dim:
                if d.dim_param in rename:
                    d.dim_param = rename[d.dim_param]
    return model


def dim_labels(model: ModelProto) -> dict[str, list[str | int]]:
    """{input/output name: its dims (label or size)}: for reports and tests."""
    out: dict[str, list[str | int]] = {}
    for vi in list(model.graph.input) + list(model.graph.output):
        if vi.type.HasField("tensor_type"):
            out[vi.name] = [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]
    return out

