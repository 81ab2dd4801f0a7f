"""Dependency groups for channel pruning: which tensors and parameters share the same channels.

A group starts at a *source* (a Conv with group=1, or a Gemm/MatMul with a constant 2-D weight)
whose output channels could be removed, and is flooded forward and backward through the graph:
element-wise ops, activations, pools, BatchNormalization and depthwise Conv carry the channels
on; residual Add/Mul pull the other operand's producer into the same group; Concat shifts the
channels by an offset; Flatten/Reshape turn each channel into a block of H*W features; Conv,
Gemm and MatMul consumers end the group (they lose input channels). Each tensor a group
reaches records `positions`: an int array (channels, m) giving, for every group channel, the
m positions it occupies on the tensor's channel axis. Anything the rules do not cover marks
the group unsafe with a reason; unsafe groups are left alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import ModelProto, NodeProto, helper, numpy_helper

UNARY = {
    "Relu", "LeakyRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu",
    "Celu", "Softplus", "Softsign", "Gelu", "Mish", "Identity", "Dropout", "Neg", "Abs", "Sqrt",
    "Exp", "Erf", "Floor", "Ceil", "Round", "Sign", "Reciprocal", "ThresholdedRelu", "Swish",
}
POOLS = {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "GlobalLpPool"}
BINARY = {"Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean", "PRelu", "Pow"}
NORMS = {"BatchNormalization": (1, 2, 3, 4), "InstanceNormalization": (1, 2)}


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
    importance_terms: list[tuple[np.ndarray, int]] = field(default_factory=list)  # (weight, out axis)
    cuts: list[ParamCut] = field(default_factory=list)
    depthwise: set[int] = field(default_factory=set)
    reshapes: list[tuple[int, int, np.ndarray]] = field(default_factory=list)  # node, dim, positions
    tensors: dict[str, tuple[int, np.ndarray]] = field(default_factory=dict)
    visited_edges: set[tuple[int, int]] = field(default_factory=set)
    unsafe: list[str] = field(default_factory=list)


class GraphIndex:
    """Producers, consumers, constants and inferred shapes of a model's main graph."""

    def __init__(self, model: ModelProto) -> None:
        self.model = model
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
        self.subgraph_refs = subgraph_names(g)
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
            val = numpy_helper.to_array(self.inits[src])
        else:
            i = self.producer.get(name)
            if i is not None and self.nodes[i].op_type == "Constant":
                for a in self.nodes[i].attribute:
                    if a.name == "value":
                        val = numpy_helper.to_array(a.t)
        self._const_cache[name] = val
        return val

    def shape(self, name: str) -> tuple[int | None, ...] | None:
        """Inferred shape (None for unknown dims), or None when even the rank is unknown."""
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


def subgraph_names(g: onnx.GraphProto) -> set[str]:
    names: set[str] = set()
    for n in g.node:
        for a in n.attribute:
            subs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
            for sg in subs:
                for sn in sg.node:
                    names.update(sn.input)
                names |= subgraph_names(sg)
    return names


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


def _source_cuts(ix: GraphIndex, grp: Group, i: int, pos: np.ndarray) -> None:
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
    grp.importance_terms.append((w, axis))
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


class Tracer:
    """Floods one group from a source through the graph (see the module docstring)."""

    def __init__(self, ix: GraphIndex, owner: dict[int, int]) -> None:
        self.ix = ix
        self.owner = owner  # source node index -> group id

    def trace(self, gid: int, src: int) -> Group:
        """The group of a source node (unsafe reasons collected, flood completed where possible)."""
        out, axis, c = source_output(self.ix, src)
        grp = Group(gid, c)
        ident = np.arange(c, dtype=np.int64)[:, None]
        self.owner[src] = gid
        grp.visited_edges.add((src, -1))
        try:
            _source_cuts(self.ix, grp, src, ident)
        except Unsafe as e:
            grp.unsafe.append(str(e))
        work: list[tuple[str, int, np.ndarray]] = [(out, axis, ident)]
        self._work = work
        while work:
            name, ax, pos = work.pop()
            try:
                self._visit(grp, name, ax, pos)
            except Unsafe as e:
                grp.unsafe.append(str(e))
        return grp

    def _push(self, name: str, axis: int, pos: np.ndarray) -> None:
        self._work.append((name, axis, pos))

    def _visit(self, grp: Group, name: str, axis: int, pos: np.ndarray) -> None:
        seen = grp.tensors.get(name)
        if seen is not None:
            if seen[0] != axis or not np.array_equal(seen[1], pos):
                raise Unsafe(f"tensor {name} reached twice with different channel layouts")
            return
        grp.tensors[name] = (axis, pos)
        ix = self.ix
        if name in ix.outputs:
            raise Unsafe(f"channels reach graph output {name}")
        if name in ix.subgraph_refs:
            raise Unsafe(f"tensor {name} is used inside a subgraph (If/Loop/Scan)")
        self._backward(grp, name, axis, pos)
        for i, j in ix.consumers.get(name, []):
            if (i, j) in grp.visited_edges:
                continue
            grp.visited_edges.add((i, j))
            node = ix.nodes[i]
            if node.op_type not in ("Conv", "Gemm", "MatMul") or (node.op_type == "Conv" and _is_depthwise(self, i)):
                grp.visited_edges.add((i, -1))  # channels pass through: the forward rule handles its operands
            rule = FORWARD.get(node.op_type)
            if rule is None:
                raise Unsafe(f"{ix.label(i)}: op {node.op_type} is not in the channel registry")
            rule(self, grp, i, j, axis, pos)

    def _backward(self, grp: Group, name: str, axis: int, pos: np.ndarray) -> None:
        ix = self.ix
        p = ix.producer.get(name)
        if p is None:
            if name in ix.graph_inputs:
                raise Unsafe(f"channels come from graph input {name}")
            raise Unsafe(f"tensor {name} has no producer")
        node = ix.nodes[p]
        if (p, -1) in grp.visited_edges:
            return
        grp.visited_edges.add((p, -1))
        if is_source(ix, p):
            out, ax, c = source_output(ix, p)
            full = np.arange(c, dtype=np.int64)[:, None]
            if ax != axis or not np.array_equal(pos, full) or c != grp.channels:
                raise Unsafe(f"{ix.label(p)}: its channels map onto part of another group (e.g. through Concat)")
            if self.owner.get(p, grp.gid) != grp.gid:
                raise Unsafe(f"{ix.label(p)}: already belongs to another group")
            self.owner[p] = grp.gid
            _source_cuts(ix, grp, p, pos)
            return
        rule = BACKWARD.get(node.op_type)
        if rule is None:
            raise Unsafe(f"{ix.label(p)}: op {node.op_type} is not in the channel registry (backward)")
        rule(self, grp, p, axis, pos)


# ---- forward rules: (tracer, group, node index, input index, channel axis, positions) ----

Forward = Callable[[Tracer, Group, int, int, int, np.ndarray], None]
Backward = Callable[[Tracer, Group, int, int, np.ndarray], None]


def _rank(t: Tracer, name: str) -> int:
    s = t.ix.shape(name)
    if s is None:
        raise Unsafe(f"tensor {name}: rank unknown (shape inference failed)")
    return len(s)


def _fw_unary(t: Tracer, grp: Group, i: int, j: int, axis: int, pos: np.ndarray) -> None:
    n = t.ix.nodes[i]
    if j != 0:
        raise Unsafe(f"{t.ix.label(i)}: channels enter {n.op_type} through input {j}")
    if n.op_type in POOLS and axis != 1:
        raise Unsafe(f"{t.ix.label(i)}: pooling over the channel axis")
    t._push(n.output[0], axis, pos)


def _fw_norm(t: Tracer, grp: Group, i: int, j: int, axis: int, pos: np.ndarray) -> None:
    n = t.ix.nodes[i]
    if j != 0 or axis != 1:
        raise Unsafe(f"{t.ix.label(i)}: {n.op_type} not on the channel axis")
    for k in NORMS[n.op_type]:
        if t.ix.const(n.input[k]) is None:
            raise Unsafe(f"{t.ix.label(i)}: parameter {n.input[k]} is not constant")
        grp.cuts.append(ParamCut(i, k, 0, pos))
    t._push(n.output[0], axis, pos)


def _channel_dim(t: Tracer, name: str, axis: int, out_rank: int) -> tuple[int | None, int]:
    """(size of `name` on the dim aligned with output axis `axis`, that dim's index or -1)."""
    s = t.ix.shape(name)
    if s is None:
        raise Unsafe(f"tensor {name}: shape unknown")
    k = axis - (out_rank - len(s))
    if k < 0:
        return 1, -1
    return s[k], k


def _fw_binary(t: Tracer, grp: Group, i: int, j: int, axis: int, pos: np.ndarray) -> None:
    ix = t.ix
    n = ix.nodes[i]
    out = n.output[0]
    out_rank = _rank(t, out)
    me = n.input[j]
    out_axis = axis + out_rank - _rank(t, me)
    width = _channel_dim(t, me, out_axis, out_rank)[0]
    if n.op_type == "PRelu" and j != 0:
        raise Unsafe(f"{ix.label(i)}: channels enter PRelu through its slope")
    for k, other in enumerate(n.input):
        if k == j or not other:
            continue
        size, dim = _channel_dim(t, other, out_axis, out_rank)
        if size == 1 or dim < 0:
            continue
        if size is None or size != width:
            raise Unsafe(f"{ix.label(i)}: operand {other} has channel size {size}, expected {width}")
        if ix.const(other) is not None:
            grp.cuts.append(ParamCut(i, k, dim, pos))
        else:
            t._push(other, dim, pos)
    t._push(out, out_axis, pos)


def _bw_binary(t: Tracer, grp: Group, p: int, axis: int, pos: np.ndarray) -> None:
    ix = t.ix
    n = ix.nodes[p]
    out_rank = _rank(t, n.output[0])
    width = _channel_dim(t, n.output[0], axis, out_rank)[0]
    for k, other in enumerate(n.input):
        if not other:
            continue
        size, dim = _channel_dim(t, other, axis, out_rank)
        if size == 1 or dim < 0:
            continue
        if size != width:
            raise Unsafe(f"{ix.label(p)}: operand {other} has channel size {size}, expected {width}")
        if ix.const(other) is not None:
            grp.cuts.append(ParamCut(p, k, dim, pos))
            grp.visited_edges.add((p, k))
        else:
            t._push(other, dim, pos)


def _bw_unary(t: Tracer, grp: Group, p: int, axis: int, pos: np.ndarray) -> None:
    n = t.ix.nodes[p]
    if n.op_type in POOLS and axis != 1:
        raise Unsafe(f"{t.ix.label(p)}: pooling over the channel axis")
    if n.op_type in NORMS:
        if axis != 1:
            raise Unsafe(f"{t.ix.label(p)}: {n.op_type} not on the channel axis")
        for k in NORMS[n.op_type]:
            grp.cuts.append(ParamCut(p, k, 0, pos))
            grp.visited_edges.add((p, k))
    t._push(n.input[0], axis, pos)


def _is_depthwise(t: Tracer, i: int) -> bool:
    n = t.ix.nodes[i]
    w = t.ix.const(n.input[1])
    g = int(t.ix.attr(n, "group", 1))
    return w is not None and g > 1 and w.shape[0] == g and w.shape[1] == 1


def _fw_conv(t: Tracer, grp: Group, i: int, j: int, axis: int, pos: np.ndarray) -> None:
    ix = t.ix
    n = ix.nodes[i]
    if j != 0 or axis != 1:
        raise Unsafe(f"{ix.label(i)}: channels enter Conv through input {j} / axis {axis}")
    if ix.const(n.input[1]) is None:
        raise Unsafe(f"{ix.label(i)}: Conv weight is not constant")
    if ix.attr(n, "group", 1) == 1:
        grp.cuts.append(ParamCut(i, 1, 1, pos))
        return
    if not _is_depthwise(t, i):
        raise Unsafe(f"{ix.label(i)}: grouped Conv (group={ix.attr(n, 'group')}) that is not depthwise")
    _depthwise_cuts(t, grp, i, pos)
    t._push(n.output[0], 1, pos)


def _depthwise_cuts(t: Tracer, grp: Group, i: int, pos: np.ndarray) -> None:
    n = t.ix.nodes[i]
    grp.cuts.append(ParamCut(i, 1, 0, pos))
    if len(n.input) > 2 and n.input[2]:
        grp.cuts.append(ParamCut(i, 2, 0, pos))
    grp.depthwise.add(i)


def _bw_conv(t: Tracer, grp: Group, p: int, axis: int, pos: np.ndarray) -> None:
    if axis != 1 or not _is_depthwise(t, p):
        raise Unsafe(f"{t.ix.label(p)}: Conv whose channels cannot be followed back")
    _depthwise_cuts(t, grp, p, pos)
    t._push(t.ix.nodes[p].input[0], 1, pos)


def _fw_matmul(t: Tracer, grp: Group, i: int, j: int, axis: int, pos: np.ndarray) -> None:
    ix = t.ix
    n = ix.nodes[i]
    w = ix.const(n.input[1])
    if n.op_type == "Gemm":
        if j != 0 or ix.attr(n, "transA", 0) or axis != 1 or w is None or w.ndim != 2:
            raise Unsafe(f"{ix.label(i)}: channels enter Gemm other than as A's features")
        grp.cuts.append(ParamCut(i, 1, 1 if ix.attr(n, "transB", 0) else 0, pos))
        return
    if j != 0 or w is None or w.ndim != 2 or axis != _rank(t, n.input[0]) - 1:
        raise Unsafe(f"{ix.label(i)}: channels enter MatMul other than as A's last axis")
    grp.cuts.append(ParamCut(i, 1, 0, pos))


def _fw_concat(t: Tracer, grp: Group, i: int, j: int, axis: int, pos: np.ndarray) -> None:
    ix = t.ix
    n = ix.nodes[i]
    rank = _rank(t, n.output[0])
    cat = int(ix.attr(n, "axis", 0))
    cat = cat + rank if cat < 0 else cat
    if cat != axis:
        raise Unsafe(f"{ix.label(i)}: Concat along axis {cat}, not the channel axis {axis}")
    offset = 0
    for k in range(j):
        offset += _known_dim(t, n.input[k], axis)
    t._push(n.output[0], axis, pos + offset)


def _bw_concat(t: Tracer, grp: Group, p: int, axis: int, pos: np.ndarray) -> None:
    ix = t.ix
    n = ix.nodes[p]
    rank = _rank(t, n.output[0])
    cat = int(ix.attr(n, "axis", 0))
    cat = cat + rank if cat < 0 else cat
    if cat != axis:
        raise Unsafe(f"{ix.label(p)}: Concat along axis {cat}, not the channel axis {axis}")
    offset = 0
    lo, hi = int(pos.min()), int(pos.max())
    for name in n.input:
        size = _known_dim(t, name, axis)
        if offset <= lo and hi < offset + size:
            t._push(name, axis, pos - offset)
            return
        offset += size
    raise Unsafe(f"{ix.label(p)}: channels span several Concat inputs")


def _known_dim(t: Tracer, name: str, axis: int) -> int:
    s = t.ix.shape(name)
    d = s[axis] if s is not None and axis < len(s) else None
    if d is None:
        raise Unsafe(f"tensor {name}: size of axis {axis} unknown (shape inference failed)")
    return int(d)


def _flatten_block(t: Tracer, i: int, name: str, axis: int) -> int:
    s = t.ix.shape(name)
    if s is None:
        raise Unsafe(f"{t.ix.label(i)}: shape of {name} unknown (shape inference failed)")
    return int(np.prod([_known_dim(t, name, k) for k in range(axis + 1, len(s))], dtype=np.int64))


def _expand(pos: np.ndarray, block: int) -> np.ndarray:
    return (pos[:, :, None] * block + np.arange(block)).reshape(pos.shape[0], -1)


def _fw_flatten(t: Tracer, grp: Group, i: int, j: int, axis: int, pos: np.ndarray) -> None:
    n = t.ix.nodes[i]
    fax = int(t.ix.attr(n, "axis", 1))
    fax = fax + _rank(t, n.input[0]) if fax < 0 else fax
    if fax != axis:
        raise Unsafe(f"{t.ix.label(i)}: Flatten(axis={fax}) does not start at the channel axis {axis}")
    t._push(n.output[0], 1, _expand(pos, _flatten_block(t, i, n.input[0], axis)))


def _fw_reshape(t: Tracer, grp: Group, i: int, j: int, axis: int, pos: np.ndarray) -> None:
    ix = t.ix
    n = ix.nodes[i]
    if j != 0:
        raise Unsafe(f"{ix.label(i)}: channels enter Reshape through its shape")
    sin, sout, target = ix.shape(n.input[0]), ix.shape(n.output[0]), ix.const(n.input[1])
    if sin is None or sout is None or target is None:
        raise Unsafe(f"{ix.label(i)}: Reshape with unknown shapes")
    # Only the "flatten" form: [d0..d(axis-1), C, rest...] -> [d0..d(axis-1), C*prod(rest)]
    block = _flatten_block(t, i, n.input[0], axis)
    ok = len(sout) == axis + 1 and tuple(sin[:axis]) == tuple(sout[:axis]) and len(target) == axis + 1
    if ok and sin[axis] is not None and sout[axis] is not None:
        ok = sout[axis] == int(sin[axis] or 0) * block
    if ok:
        tv = int(target[axis])
        ok = tv == -1 or tv > 0 or (tv == 0 and block == 1)
    if not ok:
        raise Unsafe(f"{ix.label(i)}: Reshape {list(sin)} -> {list(sout)} with unknown semantics")
    newpos = _expand(pos, block)
    if int(target[axis]) > 0:
        grp.reshapes.append((i, axis, newpos))
    t._push(n.output[0], axis, newpos)


def _axes(t: Tracer, i: int) -> list[int] | None:
    n = t.ix.nodes[i]
    a = t.ix.attr(n, "axes")
    if a is not None:
        return [int(x) for x in a]
    if len(n.input) > 1 and n.input[1]:
        c = t.ix.const(n.input[1])
        if c is None:
            raise Unsafe(f"{t.ix.label(i)}: axes are not constant")
        return [int(x) for x in c.reshape(-1)]
    return None


def _fw_squeeze(t: Tracer, grp: Group, i: int, j: int, axis: int, pos: np.ndarray) -> None:
    n = t.ix.nodes[i]
    if j != 0:
        raise Unsafe(f"{t.ix.label(i)}: channels enter {n.op_type} through its axes")
    rin, rout = _rank(t, n.input[0]), _rank(t, n.output[0])
    axes = _axes(t, i)
    if n.op_type == "Squeeze":
        if axes is None:
            raise Unsafe(f"{t.ix.label(i)}: Squeeze without axes")
        axes = [a + rin if a < 0 else a for a in axes]
        if axis in axes:
            raise Unsafe(f"{t.ix.label(i)}: Squeeze of the channel axis")
        new = axis - sum(a < axis for a in axes)
    else:
        if axes is None:
            raise Unsafe(f"{t.ix.label(i)}: Unsqueeze without axes")
        ins = sorted(a + rout if a < 0 else a for a in axes)
        keep = [k for k in range(rout) if k not in ins]
        new = keep[axis]
    t._push(n.output[0], new, pos)


def _fw_transpose(t: Tracer, grp: Group, i: int, j: int, axis: int, pos: np.ndarray) -> None:
    n = t.ix.nodes[i]
    perm = t.ix.attr(n, "perm")
    if perm is None:
        perm = list(range(_rank(t, n.input[0])))[::-1]
    t._push(n.output[0], list(perm).index(axis), pos)


def _bw_transpose(t: Tracer, grp: Group, p: int, axis: int, pos: np.ndarray) -> None:
    n = t.ix.nodes[p]
    perm = t.ix.attr(n, "perm")
    if perm is None:
        perm = list(range(_rank(t, n.input[0])))[::-1]
    t._push(n.input[0], list(perm)[axis], pos)


FORWARD: dict[str, Forward] = {
    **{op: _fw_unary for op in UNARY | POOLS},
    **{op: _fw_norm for op in NORMS},
    **{op: _fw_binary for op in BINARY},
    "Conv": _fw_conv,
    "Gemm": _fw_matmul,
    "MatMul": _fw_matmul,
    "Concat": _fw_concat,
    "Flatten": _fw_flatten,
    "Reshape": _fw_reshape,
    "Squeeze": _fw_squeeze,
    "Unsqueeze": _fw_squeeze,
    "Transpose": _fw_transpose,
}

BACKWARD: dict[str, Backward] = {
    **{op: _bw_unary for op in UNARY | POOLS | set(NORMS)},
    **{op: _bw_binary for op in BINARY},
    "Conv": _bw_conv,
    "Concat": _bw_concat,
    "Transpose": _bw_transpose,
}


def build_groups(model: ModelProto) -> tuple[GraphIndex, list[Group]]:
    """Trace a dependency group from every source node; groups overlapping each other become unsafe."""
    ix = GraphIndex(model)
    owner: dict[int, int] = {}
    tracer = Tracer(ix, owner)
    groups: list[Group] = []
    for i in range(len(ix.nodes)):
        if i in owner or not is_source(ix, i):
            continue
        groups.append(tracer.trace(len(groups), i))
    # A tensor may be shared by groups only at disjoint positions (Concat outputs).
    claimed: dict[str, list[tuple[Group, np.ndarray]]] = {}
    for grp in groups:
        for name, (_, pos) in grp.tensors.items():
            claimed.setdefault(name, []).append((grp, pos))
    for name, entries in claimed.items():
        if len(entries) < 2:
            continue
        allpos = np.concatenate([p.reshape(-1) for _, p in entries])
        if len(np.unique(allpos)) != allpos.size:
            for grp, _ in entries:
                grp.unsafe.append(f"tensor {name} is shared with another group")
    return ix, groups
