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

from onnx import GraphProto, ModelProto, TensorProto

from onnxopt.core.external import (
    external_info,
    external_length,
    field_len,
    is_external,
    loaded_size,
    split_fields,
    varint,
)


def serialized_size(model: ModelProto, base_dir: Path) -> int:
    """len(SerializeToString()) of the model with every external initializer of its main graph read
    in (from files under base_dir), as load_external leaves it, computed from the graph alone."""
    return loaded_size(model, base_dir, default_location=False)


_CHUNK = 64 * 2**20


def write_inline(model: ModelProto, base_dir: Path, path: Path) -> None:
    """Write model (main-graph initializers in external data under base_dir) to path as one file
    with every weight inline, byte for byte what `load_external(...).SerializeToString()` gives,
    streaming each tensor's bytes from its file: memory is a few copies of the graph (its
    weights stay in their files) and a 64 MiB buffer."""
    model_pre, model_post = split_fields(model, "graph", 7, ModelProto)
    graph_pre, graph_post = split_fields(model.graph, "initializer", 5, GraphProto)
    parts: list[tuple[bytes, bytes, TensorProto]] = []  # per tensor: fields before raw_data (9), after, the tensor
    for t in model.graph.initializer:
        if not is_external(t):
            parts.append((t.SerializeToString(), b"", t))
            continue
        bare = TensorProto()
        bare.CopyFrom(t)
        bare.ClearField("external_data")
        bare.ClearField("data_location")
        parts.append((*split_fields(bare, "raw_data", 9, TensorProto), t))
    sizes = [len(a) + len(b) + (field_len(external_length(t, base_dir)) if is_external(t) else 0) for a, b, t in parts]
    graph_len = len(graph_pre) + len(graph_post) + sum(field_len(n) for n in sizes)
    with open(path, "wb") as f:
        f.write(model_pre + b"\x3a" + varint(graph_len) + graph_pre)
        for (pre, post, t), n in zip(parts, sizes):
            f.write(b"\x2a" + varint(n) + pre)
            if is_external(t):
                info = external_info(t)
                length = external_length(t, base_dir)
                f.write(b"\x4a" + varint(length))
                with open(base_dir / info["location"], "rb") as src:
                    src.seek(int(info.get("offset", 0)))
                    for done in range(0, length, _CHUNK):
                        f.write(src.read(min(_CHUNK, length - done)))
            f.write(post)
        f.write(graph_post + model_post)
        f.flush()
        os.fsync(f.fileno())
