"""Big models: write a ModelProto with its weights in an external-data file without copying it,
and hand onnxruntime a file path instead of serialized bytes.

`InferenceSession(model.SerializeToString())` holds the proto, its serialized bytes and
onnxruntime's own copy of the weights at once (4x the weights at peak, measured), and protobuf
refuses to serialize a model above 2 GB at all; loading from a file costs onnxruntime's copy
only. `onnx.save_model(..., save_as_external_data=True)` rewrites the proto it is given, so
saving a model that must stay intact meant copying it first (2x).

`write_external(model, path)` writes `path` (the graph) and `path.name + ".data"` (every
initializer of `threshold` bytes or more, each at a 4096-byte aligned offset so onnxruntime can
map it) one tensor at a time: peak extra memory is the largest tensor, and `model` is untouched.
Initializers that already live in external data (a model loaded with load_external_data=False)
are copied from their file under `base_dir`, so a graph-only proto can be written too.

For work on a model held as its graph only: `loaded_size` is the size the proto would have with
its weights read in (computed from the tensor lengths, nothing read), and `same_computation`
tells whether two model files compute the same thing (nodes and weights compared tensor by
tensor from their files).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import ModelProto, TensorProto, numpy_helper

ALIGN = 4096
# Above this serialized size a proto goes to onnxruntime through a file (see the module docstring).
LARGE = 256 * 2**20


def is_external(t: TensorProto) -> bool:
    """True when the tensor's data lives in an external file."""
    return t.data_location == TensorProto.EXTERNAL


def external_info(t: TensorProto) -> dict[str, str]:
    """The external_data entries of a tensor (location, offset, length, ...)."""
    return {e.key: e.value for e in t.external_data}


def data_files(model_path: str | os.PathLike[str]) -> list[Path]:
    """The external-data files a model file refers to (resolved beside it), without loading them;
    [] when the file is not a readable model (the command's own loading says what is wrong)."""
    p = Path(model_path)
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception:
        return []
    names = {external_info(t).get("location", "") for t in model.graph.initializer if is_external(t)}
    return sorted(p.parent / n for n in names if n)


def data_file(output: str | os.PathLike[str]) -> Path:
    """The external-data file onnxopt writes beside an output model too big to hold inline."""
    out = Path(output)
    return out.with_name(out.name + ".data")


def remove_model_file(path: Path) -> None:
    """Delete a model file and its external data (`<name>.data`, data_file). A new file gets a new
    inode: a session that still maps the old one keeps it."""
    path.unlink(missing_ok=True)
    data_file(path).unlink(missing_ok=True)


def uses_external(model: ModelProto) -> bool:
    """True when some initializer of the main graph refers to an external file (not loaded)."""
    return any(is_external(t) for t in model.graph.initializer)


def _tensor_bytes(t: TensorProto, base_dir: Path | None) -> bytes:
    if is_external(t):
        if base_dir is None:
            raise ValueError(f"initializer {t.name!r} is in external data but no base directory was given")
        info = external_info(t)
        with open(base_dir / info["location"], "rb") as f:
            f.seek(int(info.get("offset", 0)))
            length = int(info["length"]) if "length" in info else -1
            return f.read(length)
    if t.HasField("raw_data"):
        return t.raw_data
    return numpy_helper.to_array(t).tobytes()


def copy_fields(src: onnx.message.Message, dst: onnx.message.Message, skip: str) -> None:  # type: ignore[name-defined]
    """Copy every set field of src to dst but `skip` (field by field: `skip`'s content is never copied)."""
    for fd, value in src.ListFields():
        if fd.name != skip:
            _copy_field(dst, fd, value)


def _copy_field(dst: onnx.message.Message, fd: Any, value: Any) -> None:  # type: ignore[name-defined]
    if fd.is_repeated:
        getattr(dst, fd.name).extend(value)
    elif fd.type == fd.TYPE_MESSAGE:
        getattr(dst, fd.name).CopyFrom(value)
    else:
        setattr(dst, fd.name, value)


def _sizeof(t: TensorProto) -> int:
    if is_external(t):
        return int(external_info(t).get("length", 0)) or 1 << 62  # external: always written out
    return t.ByteSize()


def write_external(model: ModelProto, path: str | os.PathLike[str], *, threshold: int = 1024,
                   base_dir: str | os.PathLike[str] | None = None,
                   tensors: Iterable[TensorProto | tuple[TensorProto, np.ndarray]] | None = None) -> Path:
    """Write model to path, initializers of threshold bytes or more into `<path name>.data`; returns
    the data file. model is not modified; base_dir resolves initializers already in external data;
    tensors, when given, are written as the initializers instead of model's (e.g. a generator
    that makes them one at a time); a (header, array) pair is written as header (name, data_type,
    dims) with the array's bytes as its data, external whatever its size (no protobuf copy)."""
    out = Path(path)
    data = out.with_name(out.name + ".data")
    base = Path(base_dir) if base_dir is not None else None
    graph = onnx.GraphProto()
    copy_fields(model.graph, graph, skip="initializer")
    with open(data, "wb") as f:
        for item in model.graph.initializer if tensors is None else tensors:
            t, values = item if isinstance(item, tuple) else (item, None)
            if values is None and (_sizeof(t) < threshold or t.data_type == TensorProto.STRING):  # strings: inline
                graph.initializer.add().CopyFrom(t)
                continue
            new = graph.initializer.add()
            for fd, value in t.ListFields():  # everything but the data (proto2: unset fields stay unset)
                if fd.name in ("name", "data_type", "doc_string", "dims", "metadata_props"):
                    _copy_field(new, fd, value)
            offset = -f.tell() % ALIGN
            f.write(b"\0" * offset)
            start = f.tell()
            blob = _tensor_bytes(t, base) if values is None else np.ascontiguousarray(values).reshape(-1).view(np.uint8).data
            f.write(blob)
            new.data_location = TensorProto.EXTERNAL
            for key, value in (("location", data.name), ("offset", str(start)), ("length", str(len(blob)))):
                entry = new.external_data.add()
                entry.key, entry.value = key, value
            del blob
    shallow = ModelProto()
    copy_fields(model, shallow, skip="graph")
    shallow.graph.CopyFrom(graph)
    with open(out, "wb") as f:
        f.write(shallow.SerializeToString())
    return data


def load_external(path: str | os.PathLike[str]) -> ModelProto:
    """The model written by write_external, its weights read back in, equal to the model written
    (onnx's loader leaves data_location set to DEFAULT on those tensors: cleared again)."""
    model = onnx.load(str(path), load_external_data=True)
    for t in model.graph.initializer:
        if t.HasField("data_location") and t.data_location == TensorProto.DEFAULT:
            t.ClearField("data_location")
    return model


def graph_byte_size(graph: onnx.GraphProto) -> int:
    """graph.ByteSize(), the initializers sized one at a time: protobuf's upb backend serializes a
    message to size it, so ByteSize() of a whole model holds a transient copy of up to twice its
    size (measured: +960 MB on a 512 MB model)."""
    if not graph.initializer:
        return graph.ByteSize()
    shell = onnx.GraphProto()
    copy_fields(graph, shell, skip="initializer")
    return shell.ByteSize() + sum(field_len(t.ByteSize()) for t in graph.initializer)


def byte_size(model: ModelProto) -> int:
    """model.ByteSize() without a whole-model serialization (see graph_byte_size); the tag of
    ModelProto.graph (field 7) takes one byte."""
    if not model.HasField("graph") or not model.graph.initializer:
        return model.ByteSize()
    shell = ModelProto()
    copy_fields(model, shell, skip="graph")
    return shell.ByteSize() + field_len(graph_byte_size(model.graph))


def needs_file(model: ModelProto) -> bool:
    """True when onnxruntime should get this proto through a file: big, or with external references."""
    return uses_external(model) or byte_size(model) > LARGE


@contextlib.contextmanager
def as_file(model: ModelProto, base_dir: str | os.PathLike[str] | None = None) -> Iterator[Path]:
    """The model written (write_external) into a fresh temporary folder; the folder is removed after."""
    tmp = Path(tempfile.mkdtemp(prefix="onnxopt-model-"))
    try:
        path = tmp / "model.onnx"
        write_external(model, path, base_dir=base_dir)
        yield path
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def same_graph(a: onnx.GraphProto, b: onnx.GraphProto, *, b_dir: str | os.PathLike[str] | None = None) -> bool:
    """a == b compared initializer by initializer (no whole-graph serialization: peak extra memory
    is two tensors, not two models). b_dir: b is a graph-only proto whose weights are in external
    data there; they are compared as onnx's loader loads them (load_external_data_for_tensor)."""
    if len(a.initializer) != len(b.initializer):
        return False
    ga, gb = onnx.GraphProto(), onnx.GraphProto()
    copy_fields(a, ga, skip="initializer")
    copy_fields(b, gb, skip="initializer")
    if ga.SerializeToString() != gb.SerializeToString():
        return False
    if b_dir is not None:
        base = Path(b_dir)
        return all(x.SerializeToString() == (_loaded_tensor(y, base, default_location=True, data=_tensor_bytes(y, base))
                                             if is_external(y) else y).SerializeToString()
                   for x, y in zip(a.initializer, b.initializer))
    return all(x.SerializeToString() == y.SerializeToString() for x, y in zip(a.initializer, b.initializer))


def write_model_file(model: ModelProto, path: str | os.PathLike[str]) -> Path:
    """Write model to path: inline when small, weights in `<name>.data` beside it when big (needs_file)."""
    out = Path(path)
    if needs_file(model):
        write_external(model, out)
    else:
        out.write_bytes(model.SerializeToString())
    return out


def _varint_len(n: int) -> int:
    return max(1, (n.bit_length() + 6) // 7)


def field_len(n: int) -> int:
    """Bytes a length-delimited field of n bytes takes (one-byte tag, varint length, payload)."""
    return 1 + _varint_len(n) + n


def external_length(t: TensorProto, base_dir: Path) -> int:
    """Bytes of an external tensor's data: its `length` entry, else up to the end of its file."""
    info = external_info(t)
    if "length" in info:
        return int(info["length"])
    return (base_dir / info["location"]).stat().st_size - int(info.get("offset", 0))


def _loaded_tensor(t: TensorProto, base_dir: Path, *, default_location: bool, data: bytes | None) -> TensorProto:
    """t as onnx's loader leaves an external tensor (load_external_data_for_tensor): external_data
    cleared, data_location DEFAULT (cleared instead with default_location=False), raw_data `data`
    (left unset when None: for its size only)."""
    proxy = TensorProto()
    copy_fields(t, proxy, skip="external_data")
    proxy.ClearField("raw_data")
    proxy.ClearField("data_location")
    if default_location:
        proxy.data_location = TensorProto.DEFAULT
    if data is not None:
        proxy.raw_data = data
    return proxy


def _attribute_tensors(graph: onnx.GraphProto) -> Iterator[TensorProto]:
    """Tensors held in node attributes and subgraph initializers (not the main graph's initializers)."""
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from sub.initializer
                yield from _attribute_tensors(sub)


def initializers_only(model: ModelProto) -> bool:
    """True when every tensor in external data is an initializer of the main graph (loaded_size and
    loaded_sha256 handle those only)."""
    return not any(is_external(t) for t in _attribute_tensors(model.graph))


def _loaded_sizes(model: ModelProto, base: Path, default_location: bool) -> tuple[list[int], int]:
    """(each initializer's serialized size once loaded, the loaded graph's size)."""
    sizes = []
    for t in model.graph.initializer:
        if is_external(t):
            proxy = _loaded_tensor(t, base, default_location=default_location, data=None)
            sizes.append(proxy.ByteSize() + field_len(external_length(t, base)))
        else:
            sizes.append(t.ByteSize())
    graph = model.graph.ByteSize()
    graph += sum(field_len(n) for n in sizes) - sum(field_len(t.ByteSize()) for t in model.graph.initializer)
    return sizes, graph


def loaded_size(model: ModelProto, base_dir: str | os.PathLike[str], *, default_location: bool = True) -> int:
    """The serialized size model (a graph-only proto, initializers_only) would have with its
    external weights read in: core.model.load_model's result (onnx's loader sets data_location
    DEFAULT explicitly), or with default_location=False load_external's (the field cleared).
    Nothing is read but the lengths of data files without a recorded length. Exact: the tags of
    ModelProto.graph (7), GraphProto.initializer (5) and TensorProto.raw_data (9) take one byte."""
    _, graph = _loaded_sizes(model, Path(base_dir), default_location)
    return model.ByteSize() - field_len(model.graph.ByteSize()) + field_len(graph)


def varint(n: int) -> bytes:
    """n as a protobuf varint."""
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def split_fields(message: onnx.message.Message, skip: str, number: int, empty: Any) -> tuple[bytes, bytes]:  # type: ignore[name-defined]
    """The deterministic serializations of message's fields numbered below / above `number` (skip left out)."""
    head, tail = empty(), empty()
    for fd, value in message.ListFields():
        if fd.name != skip:
            _copy_field(head if fd.number < number else tail, fd, value)
    return head.SerializeToString(deterministic=True), tail.SerializeToString(deterministic=True)


def _serialized(model: ModelProto, graph_size: int, tensors: Iterator[bytes]) -> Iterator[bytes]:
    """model's serialization in pieces, its graph's initializers given one by one (`tensors`, each
    serialized; graph_size: the graph's serialized size with them). Protobuf writes known fields
    in field-number order: ModelProto.graph is field 7, GraphProto.initializer 5 (one-byte tags)."""
    head, tail = split_fields(model, "graph", 7, ModelProto)
    ghead, gtail = split_fields(model.graph, "initializer", 5, onnx.GraphProto)
    yield head
    yield b"\x3a" + varint(graph_size) + ghead
    for t in tensors:
        yield b"\x2a" + varint(len(t)) + t
    yield gtail + tail


def loaded_sha256(model: ModelProto, base_dir: str | os.PathLike[str]) -> str:
    """sha256 of the deterministic serialization model (a graph-only proto, initializers_only) would
    have loaded as core.model.load_model loads it (weights read in, data_location DEFAULT), one
    initializer at a time: equal to sha256(loaded.SerializeToString(deterministic=True)) without
    the loaded model in memory (protobuf cannot serialize one above 2 GB at all)."""
    base = Path(base_dir)
    _, graph_size = _loaded_sizes(model, base, True)

    def tensors() -> Iterator[bytes]:
        for t in model.graph.initializer:
            if is_external(t):
                t = _loaded_tensor(t, base, default_location=True, data=_tensor_bytes(t, base))
            yield t.SerializeToString(deterministic=True)

    h = hashlib.sha256()
    for piece in _serialized(model, graph_size, tensors()):
        h.update(piece)
    return h.hexdigest()


def write_serialized(model: ModelProto, path: str | os.PathLike[str]) -> None:
    """Write model.SerializeToString() to path, the graph's initializers serialized one at a time
    (the same bytes; whole, protobuf's upb backend holds up to twice the model in its encoder)."""
    with open(path, "wb") as f:
        if not model.HasField("graph") or not model.graph.initializer:
            f.write(model.SerializeToString())
            return
        tensors = (t.SerializeToString() for t in model.graph.initializer)
        for piece in _serialized(model, graph_byte_size(model.graph), tensors):
            f.write(piece)


def _node_key(node: onnx.NodeProto) -> bytes:
    n = onnx.NodeProto()
    n.CopyFrom(node)
    n.ClearField("name")
    n.ClearField("doc_string")
    return n.SerializeToString()


def _opsets_used(model: ModelProto) -> dict[str, int]:
    def norm(d: str) -> str:
        return "" if d == "ai.onnx" else d

    used = {norm(n.domain) for n in model.graph.node} | {""}
    return {norm(o.domain): o.version for o in model.opset_import if norm(o.domain) in used}


def same_computation(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """True when the model files a and b compute the same thing: the same nodes in the same order
    (names and docs aside), graph inputs and outputs, opset versions of the domains the nodes
    use, model-local functions, and initializers (name, type, dims and bytes; the bytes compared tensor by tensor, read
    from each model's files). Shape annotations (value_info), names, docs and metadata do not count.
    Subgraphs are compared as parts of their nodes."""
    pa, pb = Path(a), Path(b)
    ma, mb = onnx.load(str(pa), load_external_data=False), onnx.load(str(pb), load_external_data=False)
    ga, gb = ma.graph, mb.graph
    if (len(ga.node) != len(gb.node) or len(ga.initializer) != len(gb.initializer)
            or len(ga.sparse_initializer) or len(gb.sparse_initializer)
            or [i.SerializeToString() for i in ga.input] != [i.SerializeToString() for i in gb.input]
            or [o.SerializeToString() for o in ga.output] != [o.SerializeToString() for o in gb.output]
            or _opsets_used(ma) != _opsets_used(mb)
            or [f.SerializeToString() for f in ma.functions] != [f.SerializeToString() for f in mb.functions]
            or any(_node_key(x) != _node_key(y) for x, y in zip(ga.node, gb.node))):
        return False
    by_name = {t.name: t for t in gb.initializer}
    for t in ga.initializer:
        u = by_name.get(t.name)
        if u is None or u.data_type != t.data_type or list(u.dims) != list(t.dims):
            return False
        if t.data_type == TensorProto.STRING or u.data_type == TensorProto.STRING:
            if t.SerializeToString() != u.SerializeToString():
                return False
            continue
        if _tensor_bytes(t, pa.parent) != _tensor_bytes(u, pb.parent):
            return False
    return True
