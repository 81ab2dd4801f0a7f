"""Lossless compressed storage of mostly-zero initializers that onnxruntime loads unchanged.

Format ("bitmask"): a tensor W with n elements of which nnz are non-zero is stored as
  mask    uint8[ceil(n / 8)]  the non-zero pattern, np.packbits(W != 0, bitorder="little")
  values  T[nnz + 1]          0 followed by the non-zero values in row-major order
and rebuilt in the graph by a chain of standard ops (opset >= 11) named `<W>/sparse/*`:
  bits  = (Cast<int32>(mask)[:, None] // [1, 2, 4, ..., 128]) % 2, flattened, first n
  index = CumSum(bits) * bits                     (k for the k-th non-zero, else 0)
  W     = Reshape(Gather(values, index), shape)
Every input of the chain is an initializer, so onnxruntime's constant folding (on at the
default optimization level "basic" and above) turns it back into a dense initializer when the
session is created: no run-time cost, and the consumers keep their dense fast kernels.
Size: 4 (1 - s) + 1/8 bytes per float32 element at sparsity s (0.53x at s = 0.5).

ONNX `sparse_initializer` (COO) is also loaded by onnxruntime 1.32 on CPU (int64, int32 and
int16 linear indices; measured), but with int32 indices it is *not* smaller than dense at
50% sparsity (8 bytes per non-zero), so the bitmask form is used.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass

import numpy as np
from onnx import ModelProto, TensorProto, helper, numpy_helper

from onnxopt.core.errors import UnsupportedModelError
from onnxopt.core.model import copy_model, default_opset

log = logging.getLogger(__name__)

SUFFIX = "/sparse"
MIN_OPSET = 11


@dataclass(frozen=True)
class StorageSizes:
    """Serialized and gzip sizes of a model in bytes."""

    size: int
    gzip: int | None


def model_sizes(model: ModelProto, gzip: bool = True) -> StorageSizes:
    """Serialized size and (optionally, it takes seconds for 50 MB) gzip level-6 size of a model."""
    data = model.SerializeToString()
    return StorageSizes(len(data), len(zlib.compress(data, 6)) if gzip else None)


def _ratio(a: int | None, b: int | None) -> float | None:
    return a / b if a is not None and b else None


def encoded_size(n: int, nnz: int, itemsize: int) -> int:
    """Bytes of the bitmask form of a tensor with n elements and nnz non-zeros."""
    return (n + 7) // 8 + (nnz + 1) * itemsize


SHARED = "onnxopt.sparse/"


def shared_constants() -> list[TensorProto]:
    """Constants every decode chain uses; stored once per model."""
    return [
        numpy_helper.from_array((1 << np.arange(8, dtype=np.int32)).astype(np.int32), SHARED + "pow2"),
        numpy_helper.from_array(np.array(2, np.int32), SHARED + "two"),
        numpy_helper.from_array(np.array([-1, 1], np.int64), SHARED + "col"),
        numpy_helper.from_array(np.array([-1], np.int64), SHARED + "flat"),
        numpy_helper.from_array(np.array([0], np.int64), SHARED + "start"),
        numpy_helper.from_array(np.array(0, np.int64), SHARED + "axis"),
    ]


def encoded_inits(name: str, arr: np.ndarray) -> list[TensorProto]:
    """The initializers of the bitmask form of arr, stored under name: mask, values, n, shape."""
    flat = arr.reshape(-1)
    mask = flat != 0
    p = name + SUFFIX
    return [
        numpy_helper.from_array(np.packbits(mask, bitorder="little"), f"{p}/mask"),
        numpy_helper.from_array(np.concatenate([np.zeros(1, flat.dtype), flat[mask]]), f"{p}/values"),
        numpy_helper.from_array(np.array([flat.size], np.int64), f"{p}/n"),
        numpy_helper.from_array(np.array(arr.shape, np.int64), f"{p}/shape"),
    ]


def decode_chain(name: str) -> list:
    """The nodes that rebuild tensor `name` from its encoded_inits (and the shared constants)."""
    p = name + SUFFIX
    c = SHARED
    mk = helper.make_node
    return [
        mk("Cast", [f"{p}/mask"], [f"{p}/m32"], name=f"{p}/cast", to=TensorProto.INT32),
        mk("Reshape", [f"{p}/m32", c + "col"], [f"{p}/m2"], name=f"{p}/col"),
        mk("Div", [f"{p}/m2", c + "pow2"], [f"{p}/shifted"], name=f"{p}/div"),
        mk("Mod", [f"{p}/shifted", c + "two"], [f"{p}/bits8"], name=f"{p}/mod"),
        mk("Reshape", [f"{p}/bits8", c + "flat"], [f"{p}/bitsall"], name=f"{p}/flat"),
        mk("Slice", [f"{p}/bitsall", c + "start", f"{p}/n"], [f"{p}/bits"], name=f"{p}/slice"),
        mk("CumSum", [f"{p}/bits", c + "axis"], [f"{p}/cumsum"], name=f"{p}/cumsum"),
        mk("Mul", [f"{p}/cumsum", f"{p}/bits"], [f"{p}/index"], name=f"{p}/index"),
        mk("Gather", [f"{p}/values", f"{p}/index"], [f"{p}/dense"], name=f"{p}/gather"),
        mk("Reshape", [f"{p}/dense", f"{p}/shape"], [name], name=f"{p}/reshape"),
    ]


def encoding(name: str, arr: np.ndarray, min_saving: float) -> dict | None:
    """The report entry of arr's bitmask form when it is worth storing (saves at least
    `min_saving` of the dense bytes, chain included), else None."""
    if arr.size < 64 or arr.dtype == np.bool_ or arr.dtype.kind not in "fiu":
        return None
    dense = arr.size * arr.dtype.itemsize
    enc = encoded_size(arr.size, int(np.count_nonzero(arr)), arr.dtype.itemsize)
    if enc + CHAIN_OVERHEAD > (1.0 - min_saving) * dense:
        return None
    return {"name": name, "dtype": str(arr.dtype), "dense_bytes": dense, "stored_bytes": enc}


# Bytes the decode chain of one tensor adds to the file (nodes, names, small constants), measured.
CHAIN_OVERHEAD = 1024


def compress_initializers(
    model: ModelProto, names: list[str] | None = None, *, min_saving: float = 0.1, gzip: bool = False
) -> tuple[ModelProto, dict]:
    """Store mostly-zero initializers (all, or those named) in the bitmask form; returns (model, report).

    A tensor is encoded only when that saves at least `min_saving` of its bytes. The input model
    is not modified. The report lists each tensor's bytes before/after and the model's
    serialized sizes (and gzip sizes when asked) before/after.
    """
    opset = default_opset(model)
    if opset < MIN_OPSET:
        raise UnsupportedModelError(
            f"sparse storage needs ai.onnx opset >= {MIN_OPSET}; the model has opset {opset}: "
            "re-export with a newer opset or drop --sparse-storage"
        )
    before = model_sizes(model, gzip)
    out = copy_model(model)
    g = out.graph
    wanted = set(names) if names is not None else None
    graph_input_names = {i.name for i in g.input}
    keep: list[TensorProto] = []
    new_nodes: list = []
    new_inits: list[TensorProto] = []
    tensors: list[dict] = []
    for t in g.initializer:
        if (wanted is not None and t.name not in wanted) or t.name in graph_input_names:
            keep.append(t)
            continue
        arr = numpy_helper.to_array(t)
        entry = encoding(t.name, arr, min_saving)
        if entry is None:
            keep.append(t)
            continue
        new_nodes.extend(decode_chain(t.name))
        new_inits.extend(encoded_inits(t.name, arr))
        tensors.append(entry)
    if not tensors:
        return out, {"format": "bitmask", "encoded": [], "size_before": before.size,
                     "size_after": before.size, "size_ratio": 1.0, "gzip_before": before.gzip,
                     "gzip_after": before.gzip, "gzip_ratio": _ratio(before.gzip, before.gzip)}
    present = {t.name for t in keep}
    shared = [t for t in shared_constants() if t.name not in present]
    del g.initializer[:]
    g.initializer.extend(keep + shared + new_inits)
    old_nodes = list(g.node)
    del g.node[:]
    g.node.extend(new_nodes + old_nodes)
    after = model_sizes(out, gzip)
    log.info("sparse storage: %d tensors, %d -> %d bytes", len(tensors), before.size, after.size)
    report = {
        "format": "bitmask",
        "encoded": tensors,
        "size_before": before.size,
        "size_after": after.size,
        "size_ratio": after.size / before.size,
        "gzip_before": before.gzip,
        "gzip_after": after.gzip,
        "gzip_ratio": _ratio(after.gzip, before.gzip),
    }
    return out, report


def expand_sparse_storage(model: ModelProto) -> ModelProto:
    """Turn bitmask-encoded tensors back into dense initializers (e.g. before quantizing)."""
    out = copy_model(model)
    g = out.graph
    inits = {t.name: t for t in g.initializer}
    dense: list[TensorProto] = []
    drop_nodes: set[str] = set()
    drop_inits: set[str] = set()
    for node in g.node:
        if node.op_type != "Reshape" or not node.name.endswith(SUFFIX + "/reshape"):
            continue
        name = node.output[0]
        p = name + SUFFIX
        if f"{p}/mask" not in inits or f"{p}/values" not in inits:
            continue
        shape = tuple(int(d) for d in numpy_helper.to_array(inits[f"{p}/shape"]))
        mask = np.unpackbits(numpy_helper.to_array(inits[f"{p}/mask"]), bitorder="little")
        n = int(np.prod(shape)) if shape else 1
        mask = mask[:n].astype(bool)
        values = numpy_helper.to_array(inits[f"{p}/values"])
        arr = np.zeros(n, values.dtype)
        arr[mask] = values[1:]
        dense.append(numpy_helper.from_array(arr.reshape(shape), name))
        drop_nodes.update(nd.name for nd in g.node if nd.name.startswith(p + "/"))
        drop_inits.update(k for k in inits if k.startswith(p + "/"))
    if not dense:
        return out
    kept_nodes = [n for n in g.node if n.name not in drop_nodes]
    del g.node[:]
    g.node.extend(kept_nodes)
    still_encoded = any(nd.name.endswith(SUFFIX + "/reshape") for nd in kept_nodes)
    kept_inits = [
        t for t in g.initializer
        if t.name not in drop_inits and (still_encoded or not t.name.startswith(SHARED))
    ]
    del g.initializer[:]
    g.initializer.extend(kept_inits + dense)
    return out
