"""What channel pruning knows about a graph, and the records it fills in.

GraphIndex indexes a model's main graph once: producers and consumers of every tensor, constant
values (initializers, Identity of one, Constant nodes), inferred shapes and the names subgraphs
read. Group is one dependency group (built in onnxopt.pruning.channels.groups): its sources, the
tensors it reaches with the `positions` of its channels on each, and the ParamCut records of the
constants that lose entries; Unsafe is raised where the channels cannot be followed.
is_source, source_output and source_cuts say which nodes (Conv with group=1, Gemm/MatMul with a
constant 2-D weight) start a group and which of their parameters lose output channels.

A model pruned from its file (onnxopt.pruning.channels.streamed) is indexed as its graph with
the weights left in their external-data files (`base_dir`): `const` then gives such a tensor as a
read-only memory map (shape and dtype without reading it; values read only if a rule looks at
them), and `values` reads it in full, uncached, for the two steps that need every weight
(channel scores and slicing), one tensor at a time.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import ModelProto, NodeProto, TensorProto, helper, numpy_helper

from onnxopt.core.external import external_info, is_external
from onnxopt.core.model import subgraph_inputs
from onnxopt.pruning.streamed import read_flat


class Unsafe(Exception):
    """A group's channels cannot be traced safely; the message says where and why."""


@dataclass(frozen=True)
class ParamCut:
    """Remove entries of a constant node input along one axis (positions index that axis)."""

    node: int
    input: int
    axis: int
    positions: np.ndarray  # (channels, m)


@dataclass
class Group:
    """Sources whose output channels must be removed together, and everything that follows."""

    gid: int
    channels: int
    sources: list[int] = field(default_factory=list)  # node indices
    importance_terms: list[tuple[str, int]] = field(default_factory=list)  # (weight tensor, out axis)
    cuts: list[ParamCut] = field(default_factory=list)
    depthwise: set[int] = field(default_factory=set)
    reshapes: list[tuple[int, int, np.ndarray]] = field(default_factory=list)  # node, dim, positions
    tensors: dict[str, tuple[int, np.ndarray]] = field(default_factory=dict)
    visited_edges: set[tuple[int, int]] = field(default_factory=set)
    unsafe: list[str] = field(default_factory=list)


class GraphIndex:
    """Producers, consumers, constants and inferred shapes of a model's main graph.

    base_dir: the model is a graph whose external initializers are in files there (module doc).
    """

    def __init__(self, model: ModelProto, base_dir: Path | None = None) -> None:
        self.model = model
        self.base_dir = base_dir
        g = model.graph
        self.nodes = list(g.node)
        self.inits = {t.name: t for t in g.initializer}
        self.producer: dict[str, int] = {}
        self.consumers: dict[str, list[tuple[int, int]]] = {}
        for i, n in enumerate(self.nodes):
            for o in n.output:
                if o:
                    self.producer[o] = i
            for j, name in enumerate(n.input):
                if name:
                    self.consumers.setdefault(name, []).append((i, j))
        self.outputs = {o.name for o in g.output}
        self.graph_inputs = {i.name for i in g.input}
        self.subgraph_refs = subgraph_inputs(g.node)
        self.shapes = _infer_shapes(model)
        self._const_cache: dict[str, np.ndarray | None] = {}

    def const_source(self, name: str) -> str | None:
        """Initializer name behind a tensor (following Identity), or None."""
        for _ in range(32):
            if name in self.inits:
                return name
            i = self.producer.get(name)
            if i is None or self.nodes[i].op_type != "Identity":
                return None
            name = self.nodes[i].input[0]
        return None

    def const(self, name: str) -> np.ndarray | None:
        """The value of a constant tensor (initializer, Identity of one, or Constant node)."""
        if name in self._const_cache:
            return self._const_cache[name]
        val: np.ndarray | None = None
        src = self.const_source(name)
        if src is not None:
            t = self.inits[src]
            val = _mapped(t, self.base_dir) if self.base_dir is not None and is_external(t) else numpy_helper.to_array(t)
        else:
            i = self.producer.get(name)
            if i is not None and self.nodes[i].op_type == "Constant":
                for a in self.nodes[i].attribute:
                    if a.name == "value":
                        val = numpy_helper.to_array(a.t)
        self._const_cache[name] = val
        return val

    def values(self, name: str) -> np.ndarray | None:
        """const(name) read in full: from its file, uncached, for an external initializer (module doc)."""
        src = self.const_source(name)
        if src is not None and self.base_dir is not None and is_external(t := self.inits[src]):
            return read_flat(t, self.base_dir).reshape([int(d) for d in t.dims])
        return self.const(name)

    def shape(self, name: str) -> tuple[int | None, ...] | None:
        """Inferred shape (None for unknown dims), or None when even the rank is unknown."""
        src = self.const_source(name)
        if src is not None:  # the initializer's dims: its values are not needed
            return tuple(int(d) for d in self.inits[src].dims)
        c = self.const(name)
        if c is not None:
            return tuple(int(d) for d in c.shape)
        return self.shapes.get(name)

    def attr(self, node: NodeProto, name: str, default: Any = None) -> Any:
        """A node attribute's value or a default."""
        for a in node.attribute:
            if a.name == name:
                return helper.get_attribute_value(a)
        return default

    def label(self, i: int) -> str:
        """A node's name for messages."""
        n = self.nodes[i]
        return n.name or f"{n.op_type}#{i}"


def _mapped(t: TensorProto, base_dir: Path) -> np.ndarray:
    """An external initializer as a read-only memory map of its bytes (nothing read until used);
    read in full when its type is not stored as plain little-endian numbers."""
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).newbyteorder("<")
    dims = tuple(int(d) for d in t.dims)
    info = external_info(t)
    size = int(np.prod(dims, dtype=np.int64))
    plain = dtype.kind in "fiub" and t.data_type not in _UNPLAIN and size > 0
    if not plain or int(info.get("length", size * dtype.itemsize)) != size * dtype.itemsize:
        return numpy_helper.to_array(t, str(base_dir))
    return np.memmap(base_dir / info["location"], dtype=dtype, mode="r", offset=int(info.get("offset", 0)), shape=dims)


# stored differently from their numpy type (packed 4-bit, bfloat16/float8 as bits): read through onnx
_UNPLAIN = {getattr(TensorProto, n) for n in ("BFLOAT16", "FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2",
                                              "FLOAT8E5M2FNUZ", "UINT4", "INT4", "FLOAT4E2M1") if hasattr(TensorProto, n)}


def _infer_shapes(model: ModelProto) -> dict[str, tuple[int | None, ...]]:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.value_info[:]
    with contextlib.suppress(Exception):  # partial information is still useful
        m = onnx.shape_inference.infer_shapes(m, strict_mode=False, data_prop=True)
    out: dict[str, tuple[int | None, ...]] = {}
    for vi in list(m.graph.value_info) + list(m.graph.input) + list(m.graph.output):
        tt = vi.type.tensor_type
        if tt.HasField("shape"):
            out[vi.name] = tuple(
                int(d.dim_value) if d.HasField("dim_value") else None for d in tt.shape.dim
            )
    return out


def is_source(ix: GraphIndex, i: int) -> bool:
    """Whether a node's output channels can be removed (Conv group=1, Gemm/MatMul constant weight)."""
    n = ix.nodes[i]
    if n.op_type == "Conv":
        w = ix.const(n.input[1])
        return w is not None and w.ndim >= 3 and ix.attr(n, "group", 1) == 1
    if n.op_type == "Gemm":
        w = ix.const(n.input[1])
        return w is not None and w.ndim == 2 and not ix.attr(n, "transA", 0)
    if n.op_type == "MatMul":
        w = ix.const(n.input[1])
        return w is not None and w.ndim == 2 and ix.const(n.input[0]) is None
    return False


def source_output(ix: GraphIndex, i: int) -> tuple[str, int, int]:
    """(output tensor, channel axis of the output, channel count) of a source node."""
    n = ix.nodes[i]
    w = ix.const(n.input[1])
    assert w is not None
    if n.op_type == "Conv":
        return n.output[0], 1, int(w.shape[0])
    if n.op_type == "Gemm":
        return n.output[0], 1, int(w.shape[0] if ix.attr(n, "transB", 0) else w.shape[1])
    shp = ix.shape(n.output[0])
    rank = len(shp) if shp is not None else 2
    return n.output[0], rank - 1, int(w.shape[1])


def source_cuts(ix: GraphIndex, grp: Group, i: int, pos: np.ndarray) -> None:
    n = ix.nodes[i]
    w = ix.const(n.input[1])
    assert w is not None
    if n.op_type == "Conv":
        axis = 0
    elif n.op_type == "Gemm":
        axis = 0 if ix.attr(n, "transB", 0) else 1
    else:
        axis = 1
    grp.sources.append(i)
    grp.importance_terms.append((n.input[1], axis))
    grp.cuts.append(ParamCut(i, 1, axis, pos))
    if n.op_type in ("Conv", "Gemm") and len(n.input) > 2 and n.input[2]:
        b = ix.const(n.input[2])
        if b is None:
            raise Unsafe(f"{ix.label(i)}: bias is not a constant")
        if n.op_type == "Conv":
            grp.cuts.append(ParamCut(i, 2, 0, pos))
        elif b.ndim >= 1 and b.shape[-1] == grp.channels:
            grp.cuts.append(ParamCut(i, 2, b.ndim - 1, pos))
        elif b.ndim >= 1 and b.shape[-1] != 1:
            raise Unsafe(f"{ix.label(i)}: bias shape {b.shape} does not broadcast per channel")


def is_depthwise(ix: GraphIndex, i: int) -> bool:
    """A Conv with group == output channels == input channels (channel multiplier 1)."""
    n = ix.nodes[i]
    w = ix.const(n.input[1])
    g = int(ix.attr(n, "group", 1))
    return n.op_type == "Conv" and w is not None and g > 1 and w.shape[0] == g and w.shape[1] == 1
