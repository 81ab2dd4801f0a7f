"""Per-op rules of channel pruning, a registry keyed by op type (forward and backward).

A forward rule is called when a group's channels reach input `j` of a node: it records the
parameters to cut (ParamCut) and pushes the tensors the channels flow into. A backward rule is
called when the channels are found on a node's output and must be followed to its inputs
(residual Add partners, Concat inputs, activations before a shared tensor). A rule raises
Unsafe when it cannot follow the channels; op types without a rule are unsafe too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np
from onnx import NodeProto

from onnxopt.pruning.channels.graph import GraphIndex, Group, ParamCut, Unsafe, is_depthwise

UNARY = {
    "Relu", "LeakyRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu",
    "Celu", "Softplus", "Softsign", "Gelu", "Mish", "Identity", "Dropout", "Neg", "Abs", "Sqrt",
    "Exp", "Erf", "Floor", "Ceil", "Round", "Sign", "Reciprocal", "ThresholdedRelu", "Swish",
}
POOLS = {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "GlobalLpPool"}
BINARY = {"Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean", "PRelu", "Pow"}
NORMS = {"BatchNormalization": (1, 2, 3, 4), "InstanceNormalization": (1, 2)}


class Flood(Protocol):
    """What a rule needs from the tracer: the graph index and a way to continue the flood."""

    ix: GraphIndex

    def push(self, name: str, axis: int, pos: np.ndarray) -> None:
        """Continue the flood into tensor `name` (channel axis, positions)."""


# (flood, group, node index, input index, channel axis, positions)
Forward = Callable[[Flood, Group, int, int, int, np.ndarray], None]
Backward = Callable[[Flood, Group, int, int, np.ndarray], None]


def _rank(t: Flood, name: str) -> int:
    s = t.ix.shape(name)
    if s is None:
        raise Unsafe(f"tensor {name}: rank unknown (shape inference failed)")
    return len(s)


def _extra_outputs_unused(t: Flood, i: int) -> None:
    """Second outputs (MaxPool indices, Dropout mask, BatchNorm training stats) must be unused."""
    n = t.ix.nodes[i]
    for o in n.output[1:]:
        if o and (o in t.ix.consumers or o in t.ix.outputs):
            raise Unsafe(f"{t.ix.label(i)}: its extra output {o} is used")


def _fw_unary(t: Flood, grp: Group, i: int, j: int, axis: int, pos: np.ndarray) -> None:
    n = t.ix.nodes[i]
    if j != 0:
        raise Unsafe(f"{t.ix.label(i)}: channels enter {n.op_type} through input {j}")
    _extra_outputs_unused(t, i)
    if n.op_type in POOLS and axis != 1:
        raise Unsafe(f"{t.ix.label(i)}: pooling over the channel axis")
    t.push(n.output[0], axis, pos)


def _fw_norm(t: Flood, grp: Group, i: int, j: int, axis: int, pos: np.ndarray) -> None:
    n = t.ix.nodes[i]
    if j != 0 or axis != 1:
        raise Unsafe(f"{t.ix.label(i)}: {n.op_type} not on the channel axis")
    _extra_outputs_unused(t, i)
    for k in NORMS[n.op_type]:
        if t.ix.const(n.input[k]) is None:
            raise Unsafe(f"{t.ix.label(i)}: parameter {n.input[k]} is not constant")
        grp.cuts.append(ParamCut(i, k, 0, pos))
    t.push(n.output[0], axis, pos)


def _channel_dim(t: Flood, name: str, axis: int, out_rank: int) -> tuple[int | None, int]:
    """(size of `name` on the dim aligned with output axis `axis`, that dim's index or -1)."""
    s = t.ix.shape(name)
    if s is None:
        raise Unsafe(f"tensor {name}: shape unknown")
    k = axis - (out_rank - len(s))
    if k < 0:
        return 1, -1
    return s[k], k


def _fw_binary(t: Flood, grp: Group, i: int, j: int, axis: int, pos: np.ndarray) -> None:
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
            t.push(other, dim, pos)
    t.push(out, out_axis, pos)


def _bw_binary(t: Flood, grp: Group, p: int, axis: int, pos: np.ndarray) -> None:
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
            t.push(other, dim, pos)


def _bw_unary(t: Flood, grp: Group, p: int, axis: int, pos: np.ndarray) -> None:
    n = t.ix.nodes[p]
    _extra_outputs_unused(t, p)
    if n.op_type in POOLS and axis != 1:
        raise Unsafe(f"{t.ix.label(p)}: pooling over the channel axis")
    if n.op_type in NORMS:
        if axis != 1:
            raise Unsafe(f"{t.ix.label(p)}: {n.op_type} not on the channel axis")
        for k in NORMS[n.op_type]:
            if t.ix.const(n.input[k]) is None:
                raise Unsafe(f"{t.ix.label(p)}: parameter {n.input[k]} is not constant")
            grp.cuts.append(ParamCut(p, k, 0, pos))
            grp.visited_edges.add((p, k))
    t.push(n.input[0], axis, pos)


def _fw_conv(t: Flood, grp: Group, i: int, j: int, axis: int, pos: np.ndarray) -> None:
    ix = t.ix
    n = ix.nodes[i]
    if j != 0 or axis != 1:
        raise Unsafe(f"{ix.label(i)}: channels enter Conv through input {j} / axis {axis}")
    if ix.const(n.input[1]) is None:
        raise Unsafe(f"{ix.label(i)}: Conv weight is not constant")
    if ix.attr(n, "group", 1) == 1:
        grp.cuts.append(ParamCut(i, 1, 1, pos))
        return
    if not is_depthwise(t.ix, i):
        raise Unsafe(f"{ix.label(i)}: grouped Conv (group={ix.attr(n, 'group')}) that is not depthwise")
    _depthwise_cuts(t, grp, i, pos)
    t.push(n.output[0], 1, pos)


def _depthwise_cuts(t: Flood, grp: Group, i: int, pos: np.ndarray) -> None:
    n = t.ix.nodes[i]
    grp.cuts.append(ParamCut(i, 1, 0, pos))
    if len(n.input) > 2 and n.input[2]:
        grp.cuts.append(ParamCut(i, 2, 0, pos))
    grp.depthwise.add(i)


def _bw_conv(t: Flood, grp: Group, p: int, axis: int, pos: np.ndarray) -> None:
    if axis != 1 or not is_depthwise(t.ix, p):
        raise Unsafe(f"{t.ix.label(p)}: Conv whose channels cannot be followed back")
    _depthwise_cuts(t, grp, p, pos)
    t.push(t.ix.nodes[p].input[0], 1, pos)


def _fw_matmul(t: Flood, grp: Group, i: int, j: int, axis: int, pos: np.ndarray) -> None:
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


def _channel_concat(t: Flood, i: int, axis: int) -> NodeProto:
    """Concat node i, which must join its inputs along the channel axis."""
    n = t.ix.nodes[i]
    cat = int(t.ix.attr(n, "axis", 0))
    cat = cat + _rank(t, n.output[0]) if cat < 0 else cat
    if cat != axis:
        raise Unsafe(f"{t.ix.label(i)}: Concat along axis {cat}, not the channel axis {axis}")
    return n


def _fw_concat(t: Flood, grp: Group, i: int, j: int, axis: int, pos: np.ndarray) -> None:
    n = _channel_concat(t, i, axis)
    offset = 0
    for k in range(j):
        offset += _known_dim(t, n.input[k], axis)
    t.push(n.output[0], axis, pos + offset)


def _bw_concat(t: Flood, grp: Group, p: int, axis: int, pos: np.ndarray) -> None:
    n = _channel_concat(t, p, axis)
    offset = 0
    lo, hi = int(pos.min()), int(pos.max())
    for name in n.input:
        size = _known_dim(t, name, axis)
        if offset <= lo and hi < offset + size:
            t.push(name, axis, pos - offset)
            return
        offset += size
    raise Unsafe(f"{t.ix.label(p)}: channels span several Concat inputs")


def _known_dim(t: Flood, name: str, axis: int) -> int:
    s = t.ix.shape(name)
    d = s[axis] if s is not None and axis < len(s) else None
    if d is None:
        raise Unsafe(f"tensor {name}: size of axis {axis} unknown (shape inference failed)")
    return int(d)


def _flatten_block(t: Flood, i: int, name: str, axis: int) -> int:
    s = t.ix.shape(name)
    if s is None:
        raise Unsafe(f"{t.ix.label(i)}: shape of {name} unknown (shape inference failed)")
    return int(np.prod([_known_dim(t, name, k) for k in range(axis + 1, len(s))], dtype=np.int64))


def _expand(pos: np.ndarray, block: int) -> np.ndarray:
    return (pos[:, :, None] * block + np.arange(block)).reshape(pos.shape[0], -1)


def _fw_flatten(t: Flood, grp: Group, i: int, j: int, axis: int, pos: np.ndarray) -> None:
    n = t.ix.nodes[i]
    fax = int(t.ix.attr(n, "axis", 1))
    fax = fax + _rank(t, n.input[0]) if fax < 0 else fax
    if fax != axis:
        raise Unsafe(f"{t.ix.label(i)}: Flatten(axis={fax}) does not start at the channel axis {axis}")
    t.push(n.output[0], 1, _expand(pos, _flatten_block(t, i, n.input[0], axis)))


def _fw_reshape(t: Flood, grp: Group, i: int, j: int, axis: int, pos: np.ndarray) -> None:
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
    t.push(n.output[0], axis, newpos)


def _axes(t: Flood, i: int) -> list[int] | None:
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


def _fw_squeeze(t: Flood, grp: Group, i: int, j: int, axis: int, pos: np.ndarray) -> None:
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
    t.push(n.output[0], new, pos)


def _fw_transpose(t: Flood, grp: Group, i: int, j: int, axis: int, pos: np.ndarray) -> None:
    n = t.ix.nodes[i]
    perm = t.ix.attr(n, "perm")
    if perm is None:
        perm = list(range(_rank(t, n.input[0])))[::-1]
    t.push(n.output[0], list(perm).index(axis), pos)


def _bw_transpose(t: Flood, grp: Group, p: int, axis: int, pos: np.ndarray) -> None:
    n = t.ix.nodes[p]
    perm = t.ix.attr(n, "perm")
    if perm is None:
        perm = list(range(_rank(t, n.input[0])))[::-1]
    t.push(n.input[0], list(perm)[axis], pos)


def _reduce_axes(t: Flood, i: int, axis: int) -> tuple[list[int], bool]:
    n = t.ix.nodes[i]
    rank = _rank(t, n.input[0])
    axes = _axes(t, i)
    if axes is None or not axes:
        raise Unsafe(f"{t.ix.label(i)}: {n.op_type} over all axes")
    axes = [a + rank if a < 0 else a for a in axes]
    if axis in axes:
        raise Unsafe(f"{t.ix.label(i)}: {n.op_type} over the channel axis")
    return axes, bool(t.ix.attr(n, "keepdims", 1))


def _fw_reduce(t: Flood, grp: Group, i: int, j: int, axis: int, pos: np.ndarray) -> None:
    n = t.ix.nodes[i]
    if j != 0:
        raise Unsafe(f"{t.ix.label(i)}: channels enter {n.op_type} through its axes")
    axes, keep = _reduce_axes(t, i, axis)
    t.push(n.output[0], axis if keep else axis - sum(a < axis for a in axes), pos)


def _bw_reduce(t: Flood, grp: Group, p: int, axis: int, pos: np.ndarray) -> None:
    n = t.ix.nodes[p]
    in_rank = _rank(t, n.input[0])
    axes = _axes(t, p)
    if axes is None or not t.ix.attr(n, "keepdims", 1):
        raise Unsafe(f"{t.ix.label(p)}: {n.op_type} without keepdims cannot be followed back")
    if axis in [a + in_rank if a < 0 else a for a in axes]:
        raise Unsafe(f"{t.ix.label(p)}: {n.op_type} over the channel axis")
    t.push(n.input[0], axis, pos)


REDUCE = {"ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceL1", "ReduceL2", "ReduceLogSumExp"}

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
    **{op: _fw_reduce for op in REDUCE},
}

BACKWARD: dict[str, Backward] = {
    **{op: _bw_unary for op in UNARY | POOLS | set(NORMS)},
    **{op: _bw_binary for op in BINARY},
    "Conv": _bw_conv,
    "Concat": _bw_concat,
    "Transpose": _bw_transpose,
    **{op: _bw_reduce for op in REDUCE},
}
