"""Stable, unique names for unnamed nodes: passes never depend on names being present.

Node names are optional in ONNX: `onnx.helper` scripts and several converters leave them
empty, while onnxopt identifies nodes by name (which nodes were quantized, which to keep in
float, which decisions to replay). `name_nodes` gives every unnamed node, subgraphs included,
the name

    <op type>_<position>_<h>     h = first 8 hex digits of sha1(domain, op type, inputs, outputs)

(a node inside an If/Loop/Scan body is prefixed with its owner's name and attribute:
`<owner>/<attr>/<op type>_<position>_<h>`). The name depends on the model only, so the same
model always gets the same names (a recorded `--exclude-nodes` or decisions file replays), and a
name already present (a user's) is never changed; a clash with an existing name gets a `_2`,
`_3`, ... suffix.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import onnx
from onnx import ModelProto


def node_digest(node: onnx.NodeProto) -> str:
    """8 hex digits of sha1 over the node's domain, op type, inputs and outputs."""
    key = "\x1f".join((node.domain, node.op_type, "\x1e".join(node.input), "\x1e".join(node.output)))
    return hashlib.sha1(key.encode("utf-8")).hexdigest()[:8]


def _nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node of graph and of its subgraphs (core.model.all_nodes, which imports this module)."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs:
                yield from _nodes(sub)


def unnamed_count(model: ModelProto) -> int:
    """How many nodes (subgraphs included) have no name."""
    return sum(1 for n in _nodes(model.graph) if not n.name)


def _name_graph(graph: onnx.GraphProto, prefix: str, taken: set[str]) -> int:
    count = 0
    for i, node in enumerate(graph.node):
        if not node.name:
            base = f"{prefix}{node.op_type or 'node'}_{i}_{node_digest(node)}"
            name, k = base, 2
            while name in taken:
                name, k = f"{base}_{k}", k + 1
            node.name = name
            taken.add(name)
            count += 1
        for attr in node.attribute:
            subs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for j, sub in enumerate(subs):
                where = attr.name if len(subs) == 1 else f"{attr.name}{j}"
                count += _name_graph(sub, f"{node.name}/{where}/", taken)
    return count


def name_nodes(model: ModelProto) -> int:
    """Name every unnamed node of model in place (see the module docstring); returns how many."""
    if not unnamed_count(model):
        return 0
    taken = {n.name for n in _nodes(model.graph) if n.name}
    return _name_graph(model.graph, "", taken)


def with_node_names(model: ModelProto) -> ModelProto:
    """model itself when every node has a name, else a copy with the unnamed ones named."""
    if not unnamed_count(model):
        return model
    named = ModelProto()
    named.CopyFrom(model)
    name_nodes(named)
    return named
