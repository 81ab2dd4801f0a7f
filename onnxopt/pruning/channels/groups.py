"""Dependency groups for channel pruning: which tensors and parameters share the same channels.

A group starts at a *source* (a Conv with group=1, or a Gemm/MatMul with a constant 2-D weight)
whose output channels could be removed, and is flooded forward and backward through the graph
with the per-op rules of onnxopt.pruning.channels.ops: element-wise ops, activations, pools,
BatchNormalization and depthwise Conv carry the channels on; residual Add/Mul pull the other
operand's producer into the same group; Concat shifts the channels by an offset;
Flatten/Reshape turn each channel into a block of H*W features; Conv, Gemm and MatMul consumers
end the group (they lose input channels). Each tensor a group reaches records `positions`: an
int array (channels, m) giving, for every group channel, the m positions it occupies on the
tensor's channel axis. Anything the rules do not cover marks the group unsafe with a reason;
unsafe groups are left alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from onnx import ModelProto

from onnxopt.pruning.channels.graph import (
    GraphIndex,
    Group,
    Unsafe,
    is_depthwise,
    is_source,
    source_cuts,
    source_output,
)
from onnxopt.pruning.channels.ops import BACKWARD, FORWARD


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
            source_cuts(self.ix, grp, src, ident)
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

    def push(self, name: str, axis: int, pos: np.ndarray) -> None:
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
            if node.op_type not in ("Conv", "Gemm", "MatMul") or (node.op_type == "Conv" and is_depthwise(self.ix, i)):
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
            source_cuts(ix, grp, p, pos)
            return
        rule = BACKWARD.get(node.op_type)
        if rule is None:
            raise Unsafe(f"{ix.label(p)}: op {node.op_type} is not in the channel registry (backward)")
        rule(self, grp, p, axis, pos)


def build_groups(model: ModelProto, base_dir: Path | None = None) -> tuple[GraphIndex, list[Group]]:
    """Trace a dependency group from every source node; groups overlapping each other become unsafe.
    base_dir: model is a graph whose external weights are in files there (GraphIndex)."""
    ix = GraphIndex(model, base_dir)
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
