"""Model mutations: byte-level damage and protobuf-level edits of a valid model.

`mutate_model(ch, blob)` returns (kind, bytes). Byte kinds (`bytes:*`) damage the serialized
file; proto kinds (`proto:*`) parse the model, make one targeted edit (op type, dims, data
types, deleted nodes, renamed inputs, bad attribute values, removed initializers, ...) and
serialize it again without checking, so most of them still parse and reach later stages.
"""

from __future__ import annotations

from collections.abc import Callable

import onnx
from onnx import AttributeProto, TensorProto

from scripts.fuzz.chooser import Chooser

OP_TYPES = ("Relu", "Conv", "Gemm", "MatMul", "Add", "Softmax", "Identity", "Reshape", "Concat",
            "QuantizeLinear", "LSTM", "If", "Loop", "NotAnOp", "", "conv", "Conv2D")  # fmt: skip
DOMAINS = ("com.bad", "ai.onnx.ml", "com.microsoft", "ai.onnx.preview.training")
DIM_VALUES = (0, 1, 3, 7, -1, -5, 2**31, 2**62)
# Every TensorProto data type, 0 (UNDEFINED) and values no onnx version defines.
DATA_TYPES = (*range(0, 24), 99, 12345)


def _flip(ch: Chooser, blob: bytes) -> bytes:
    """XOR a few bytes, mostly in the structural head and tail rather than in weight data."""
    buf = bytearray(blob)
    rng = ch.rng()
    for _ in range(ch.integer(1, 8)):
        region = ch.pick(("head", "tail", "any"))
        if region == "head":
            pos = int(rng.integers(min(len(buf), 2048)))
        elif region == "tail":
            pos = len(buf) - 1 - int(rng.integers(min(len(buf), 1024)))
        else:
            pos = int(rng.integers(len(buf)))
        buf[pos] ^= int(rng.integers(1, 256))
    return bytes(buf)


def _bytes_kind(ch: Chooser, blob: bytes) -> tuple[str, bytes]:
    kind = ch.pick(("flip", "truncate", "append", "empty", "garbage", "text", "zip"))
    rng = ch.rng()
    if kind == "flip":
        return kind, _flip(ch, blob)
    if kind == "truncate":
        return kind, blob[: int(rng.integers(len(blob)))]
    if kind == "append":
        return kind, blob + rng.bytes(int(rng.integers(1, 64)))
    if kind == "empty":
        return kind, b""
    if kind == "garbage":
        return kind, rng.bytes(int(rng.integers(1, 4096)))
    if kind == "text":
        return kind, b"ir_version: 8\ngraph { node { op_type: \"Relu\" } }\n"
    return kind, b"PK\x03\x04" + rng.bytes(64)  # looks like an archive (e.g. an .npz or .pt)


def _node(ch: Chooser, m: onnx.ModelProto) -> onnx.NodeProto | None:
    return ch.pick(m.graph.node) if len(m.graph.node) else None


def _op_type(ch: Chooser, m: onnx.ModelProto) -> None:
    if (n := _node(ch, m)) is not None:
        n.op_type = ch.pick(OP_TYPES)


def _domain(ch: Chooser, m: onnx.ModelProto) -> None:
    if (n := _node(ch, m)) is not None:
        n.domain = ch.pick(DOMAINS)


def _dims(ch: Chooser, m: onnx.ModelProto) -> None:
    g = m.graph
    if ch.chance(0.5) and len(g.initializer):
        t = ch.pick(g.initializer)  # data no longer matches the declared size
        if len(t.dims):
            t.dims[ch.integer(0, len(t.dims) - 1)] = ch.pick(DIM_VALUES)
        return
    vi = ch.pick([*g.input, *g.output])
    dims = vi.type.tensor_type.shape.dim
    if not len(dims):
        return
    d = dims[ch.integer(0, len(dims) - 1)]
    if ch.chance(0.25):
        d.dim_param = ch.pick(("", "N", "batch", "??"))
    else:
        d.dim_value = ch.pick(DIM_VALUES)


def _init_shape(ch: Chooser, m: onnx.ModelProto) -> None:
    """Reverse an initializer's dims: same byte size, wrong shape (loads, fails later)."""
    candidates = [t for t in m.graph.initializer if len(t.dims) >= 2]
    if candidates:
        t = ch.pick(candidates)
        dims = list(t.dims)[::-1]
        del t.dims[:]
        t.dims.extend(dims)


def _dtype(ch: Chooser, m: onnx.ModelProto) -> None:
    g = m.graph
    if ch.chance(0.5) and len(g.initializer):
        ch.pick(g.initializer).data_type = ch.pick(DATA_TYPES)
    else:
        ch.pick([*g.input, *g.output]).type.tensor_type.elem_type = ch.pick(DATA_TYPES)


def _delete_node(ch: Chooser, m: onnx.ModelProto) -> None:
    if len(m.graph.node):
        del m.graph.node[ch.integer(0, len(m.graph.node) - 1)]


def _rename_input(ch: Chooser, m: onnx.ModelProto) -> None:
    g = m.graph
    if ch.chance(0.5) and len(g.input):
        ch.pick(g.input).name = ch.pick(("renamed", "", "input "))
    elif (n := _node(ch, m)) is not None and len(n.input):
        n.input[ch.integer(0, len(n.input) - 1)] = ch.pick(("missing", "", "logits"))


def _bad_attr_value(ch: Chooser, a: AttributeProto) -> None:
    kind = ch.pick(("value", "type", "empty"))
    if kind == "type":
        a.type = ch.pick((AttributeProto.UNDEFINED, AttributeProto.FLOAT, AttributeProto.STRING, AttributeProto.GRAPH))
    elif kind == "empty":
        a.ClearField("ints")
        a.ClearField("i")
        a.ClearField("f")
    elif a.type == AttributeProto.INTS and len(a.ints):
        a.ints[ch.integer(0, len(a.ints) - 1)] = ch.pick((0, -1, -3, 2**40, 2**63 - 1))
    elif a.type == AttributeProto.FLOAT:
        a.f = ch.pick((float("nan"), float("inf"), -1.0, 0.0, 1e38))
    else:
        a.i = ch.pick((0, -1, -7, 2**40, 2**63 - 1))


def _attribute(ch: Chooser, m: onnx.ModelProto) -> None:
    nodes = [n for n in m.graph.node if len(n.attribute)]
    if not nodes:
        if (n := _node(ch, m)) is not None:
            n.attribute.append(onnx.helper.make_attribute(ch.pick(("axis", "bogus")), -9))
        return
    n = ch.pick(nodes)
    if ch.chance(0.2):
        del n.attribute[ch.integer(0, len(n.attribute) - 1)]
    else:
        _bad_attr_value(ch, ch.pick(n.attribute))


def _remove_initializer(ch: Chooser, m: onnx.ModelProto) -> None:
    if len(m.graph.initializer):
        del m.graph.initializer[ch.integer(0, len(m.graph.initializer) - 1)]


def _raw_data(ch: Chooser, m: onnx.ModelProto) -> None:
    if len(m.graph.initializer):
        t = ch.pick(m.graph.initializer)
        t.raw_data = t.raw_data[: ch.pick((0, 1, 3, len(t.raw_data) // 2))]


def _external_data(ch: Chooser, m: onnx.ModelProto) -> None:
    """Point an initializer at external data: missing, outside the model's folder, or absolute."""
    if len(m.graph.initializer):
        t = ch.pick(m.graph.initializer)
        t.ClearField("raw_data")
        t.data_location = TensorProto.EXTERNAL
        del t.external_data[:]
        entry = t.external_data.add()
        entry.key, entry.value = "location", ch.pick(("missing.bin", "../../etc/hostname", "/etc/hostname", ""))


def _opset(ch: Chooser, m: onnx.ModelProto) -> None:
    if ch.chance(0.5) and len(m.opset_import):
        m.opset_import[0].version = ch.pick((0, 1, 6, 99, 10000))
    elif ch.chance(0.5):
        del m.opset_import[:]
    else:
        m.ir_version = ch.pick((0, 1, 3, 99))


def _graph_wiring(ch: Chooser, m: onnx.ModelProto) -> None:
    """Duplicate an output name, make a cycle, or drop/rename the graph output."""
    g = m.graph
    kind = ch.pick(("dup_output", "cycle", "drop_output", "rename_output"))
    if kind in ("dup_output", "cycle") and len(g.node) >= 2:
        i = ch.integer(0, len(g.node) - 2)
        j = ch.integer(i + 1, len(g.node) - 1)
        if kind == "dup_output":
            g.node[i].output[0] = g.node[j].output[0]
        elif len(g.node[i].input):
            g.node[i].input[0] = g.node[j].output[0]
    elif kind == "drop_output" and len(g.output):
        del g.output[:]
    elif len(g.output):
        g.output[0].name = "nope"


PROTO_MUTATIONS: dict[str, Callable[[Chooser, onnx.ModelProto], None]] = {
    "op_type": _op_type,
    "domain": _domain,
    "dims": _dims,
    "init_shape": _init_shape,
    "dtype": _dtype,
    "delete_node": _delete_node,
    "rename_input": _rename_input,
    "attribute": _attribute,
    "remove_initializer": _remove_initializer,
    "raw_data": _raw_data,
    "external_data": _external_data,
    "opset": _opset,
    "wiring": _graph_wiring,
}


def mutate_model(ch: Chooser, blob: bytes) -> tuple[str, bytes]:
    """One mutation of a serialized model: ("bytes:<kind>" | "proto:<kind>", new bytes)."""
    if ch.chance(0.35):
        kind, out = _bytes_kind(ch, blob)
        return f"bytes:{kind}", out
    kind = ch.pick(tuple(PROTO_MUTATIONS))
    model = onnx.ModelProto()
    model.ParseFromString(blob)
    PROTO_MUTATIONS[kind](ch, model)
    return f"proto:{kind}", model.SerializeToString()

