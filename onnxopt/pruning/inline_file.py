"""A model whose weights are in external data, written as one inline file without loading it.

`load_external(path).SerializeToString()` holds the weights twice (the proto and its bytes).
Protobuf writes a message's fields in field-number order, each as tag, length (varint) and
payload, so the same bytes can be produced piece by piece: the model's fields before `graph`
(field 7), the graph's length, the graph's fields before `initializer` (5), each initializer
(its fields before `raw_data` (9), the raw bytes copied from the data file in chunks, the rest),
then the graph's and the model's remaining fields. Every length is known beforehand from the
graph alone (`serialized_size`), so nothing is held but the graph and one chunk.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from onnx import ModelProto, TensorProto

from onnxopt.core.external import external_info, is_external


def _varint_len(n: int) -> int:
    return max(1, (n.bit_length() + 6) // 7)


def _field_len(n: int) -> int:
    """Bytes of a length-delimited field with a one-byte tag and n bytes of payload."""
    return 1 + _varint_len(n) + n


def data_length(t: TensorProto, base_dir: Path) -> int:
    """Bytes of an external tensor's data: its `length` entry, else up to the end of its file."""
    info = external_info(t)
    if "length" in info:
        return int(info["length"])
    return (base_dir / info["location"]).stat().st_size - int(info.get("offset", 0))


def _inline_tensor_size(t: TensorProto, base_dir: Path) -> int:
    """t.ByteSize() once its external data is read in: the data_location field (2 bytes) and the
    external_data entries go, raw_data comes (every tag involved is one byte)."""
    if not is_external(t):
        return t.ByteSize()
    entries = sum(_field_len(e.ByteSize()) for e in t.external_data)
    return t.ByteSize() - 2 - entries + _field_len(data_length(t, base_dir))


def serialized_size(model: ModelProto, base_dir: Path) -> int:
    """len(SerializeToString()) of the model with every external initializer of its main graph read
    in (from files under base_dir), computed from the graph alone (no weight is read)."""
    g_now = model.graph.ByteSize()
    g_inline = g_now + sum(_field_len(_inline_tensor_size(t, base_dir)) - _field_len(t.ByteSize())
                           for t in model.graph.initializer if is_external(t))
    return model.ByteSize() - _field_len(g_now) + _field_len(g_inline)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _split(msg: Any, number: int) -> tuple[bytes, bytes]:
    """msg serialized without field `number`, as (the fields numbered below it, those above):
    protobuf writes fields in number order, so pre + <field number> + post is msg's serialization."""
    pre, post = type(msg)(), type(msg)()
    pre.CopyFrom(msg)
    post.CopyFrom(msg)
    for fd, _ in msg.ListFields():
        if fd.number >= number:
            pre.ClearField(fd.name)
        if fd.number <= number:
            post.ClearField(fd.name)
    return pre.SerializeToString(), post.SerializeToString()


_CHUNK = 64 * 2**20


def write_inline(model: ModelProto, base_dir: Path, path: Path) -> None:
    """Write model (main-graph initializers in external data under base_dir) to path as one file
    with every weight inline, byte for byte what `load_external(...).SerializeToString()` gives,
    streaming each tensor's bytes from its file: memory is a few copies of the graph (its
    weights stay in their files) and a 64 MiB buffer."""
    model_pre, model_post = _split(model, 7)  # ModelProto.graph = 7 (the weights are not in the copies)
    graph_pre, graph_post = _split(model.graph, 5)  # GraphProto.initializer = 5
    parts: list[tuple[bytes, bytes, TensorProto]] = []  # per tensor: fields before raw_data (9), after, the tensor
    for t in model.graph.initializer:
        if not is_external(t):
            parts.append((t.SerializeToString(), b"", t))
            continue
        bare = TensorProto()
        bare.CopyFrom(t)
        bare.ClearField("external_data")
        bare.ClearField("data_location")
        parts.append((*_split(bare, 9), t))
    sizes = [len(a) + len(b) + (_field_len(data_length(t, base_dir)) if is_external(t) else 0) for a, b, t in parts]
    graph_len = len(graph_pre) + len(graph_post) + sum(_field_len(n) for n in sizes)
    with open(path, "wb") as f:
        f.write(model_pre + b"\x3a" + _varint(graph_len) + graph_pre)
        for (pre, post, t), n in zip(parts, sizes):
            f.write(b"\x2a" + _varint(n) + pre)
            if is_external(t):
                info = external_info(t)
                length = data_length(t, base_dir)
                f.write(b"\x4a" + _varint(length))
                with open(base_dir / info["location"], "rb") as src:
                    src.seek(int(info.get("offset", 0)))
                    for done in range(0, length, _CHUNK):
                        f.write(src.read(min(_CHUNK, length - done)))
            f.write(post)
        f.write(graph_post + model_post)
        f.flush()
        os.fsync(f.fileno())
