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
"""

from __future__ import annotations

import contextlib
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


def _copy_fields(src: onnx.message.Message, dst: onnx.message.Message, skip: str) -> None:  # type: ignore[name-defined]
    """Copy every set field of src to dst but `skip` (a shallow, field by field copy)."""
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
    _copy_fields(model.graph, graph, skip="initializer")
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
    _copy_fields(model, shallow, skip="graph")
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


def needs_file(model: ModelProto) -> bool:
    """True when onnxruntime should get this proto through a file: big, or with external references."""
    return uses_external(model) or model.ByteSize() > LARGE


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


def same_graph(a: onnx.GraphProto, b: onnx.GraphProto) -> bool:
    """a == b compared initializer by initializer (no whole-graph serialization: peak extra memory
    is two tensors, not two models)."""
    if len(a.initializer) != len(b.initializer):
        return False
    ga, gb = onnx.GraphProto(), onnx.GraphProto()
    _copy_fields(a, ga, skip="initializer")
    _copy_fields(b, gb, skip="initializer")
    if ga.SerializeToString() != gb.SerializeToString():
        return False
    return all(x.SerializeToString() == y.SerializeToString() for x, y in zip(a.initializer, b.initializer))


def write_model_file(model: ModelProto, path: str | os.PathLike[str]) -> Path:
    """Write model to path: inline when small, weights in `<name>.data` beside it when big (needs_file)."""
    out = Path(path)
    if needs_file(model):
        write_external(model, out)
    else:
        out.write_bytes(model.SerializeToString())
    return out
