"""Fast int8 sensitivity of a model's weight MatMuls, and dynamic-int8 models emulated in one rewrite.

Dynamic int8 on a MatMul y = x W (onnxruntime's quantize_dynamic, per-channel symmetric weights):

    s_x = (max(x, 0) - min(x, 0)) / 255,  z_x = round(-min(x, 0) / s_x)       per run, whole tensor
    x_q = clip(round(x / s_x) + z_x, 0, 255)
    s_j = max_i |W_ij| / q,  W_q[:, j] = round(W[:, j] / s_j)                 q = 127 (64 with reduce_range)
    y_q = s_x (x_q - z_x) W_q diag(s)

The sensitivity of node n is its relative output error on the float model's own activations,

    e_n = sum ||y_q - y||^2 / sum ||y||^2      over the samples, each run alone (batch 1)

(s_x and z_x from the whole x, as the runtime does; the products over at most SENSITIVITY_ROWS
evenly spaced rows of x per sample: the ranking needs the error's size, not every token's)

and every node's x comes from ONE run of the float model whose MatMul inputs are exposed as
outputs: a ranking in one inference pass plus numpy, instead of one quantized model built and
scored per node. The ranking only orders the search; whether a set of float nodes holds the
fidelity floor is measured end to end (quantization.transformer).

`emulated_model` builds the model with a chosen set of MatMuls in dynamic int8 directly, as
com.microsoft.DynamicQuantizeMatMul nodes with the weights quantized as above: the op that
onnxruntime itself fuses quantize_dynamic's DynamicQuantizeLinear + MatMulInteger + scale Muls
into at load time, so its outputs are those of the quantizer's model at a fraction of the cost
of running the quantizer (a rewrite of the node list, no files).

With `embeddings=True` the embedding tables (Gathers of a float [V, H] initializer of at least
EMBEDDING_MIN_BYTES by runtime ids) are stored in int8 too, one symmetric scale per row (per
token), and dequantized after the lookup:

    s_v = max_h |E_vh| / 127,   E_q = round(E / s),   e(ids) = float(Gather(E_q, ids)) * Gather(s, ids)

A lookup reads rows, so a row's scale is exact for it (error <= s_v / 2 per element, relative
<= 1/254 of the row's largest value); the file shrinks by 4x on the table, the runtime cost is
a cast and a multiply on [batch, sequence, H]. (onnxruntime's quantize_dynamic on Gather uses one
scale for the whole table: a few large rows then cost every other row its precision.)
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import ModelProto, helper, numpy_helper

from onnxopt.core.feeds import Feed, batches
from onnxopt.core.model import batch_axes, copy_model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WeightMatMul:
    """A MatMul whose second input is a constant [K, N] float weight."""

    node: str
    activation: str  # the input tensor x
    weight: str  # the initializer W


def weight_matmuls(model: ModelProto) -> list[WeightMatMul]:
    """The MatMuls of the main graph with a 2-D float32 initializer as B (what MatMulConstBOnly quantizes)."""
    inits = {t.name: t for t in model.graph.initializer}
    out = []
    for n in model.graph.node:
        if n.op_type != "MatMul" or n.domain not in ("", "ai.onnx") or len(n.input) != 2 or not n.name:
            continue
        w = inits.get(n.input[1])
        if w is not None and len(w.dims) == 2 and w.data_type == onnx.TensorProto.FLOAT:
            out.append(WeightMatMul(n.name, n.input[0], n.input[1]))
    return out


def name_nodes(model: ModelProto) -> ModelProto:
    """A copy in which every node has a unique name (nodes are excluded from quantization by name)."""
    m = copy_model(model)
    seen: set[str] = set()
    for i, n in enumerate(m.graph.node):
        if not n.name or n.name in seen:
            n.name = f"{n.op_type}_{i}" if f"{n.op_type}_{i}" not in seen else f"{n.op_type}_{i}_onnxopt"
        seen.add(n.name)
    return m


def quantize_weight(w: np.ndarray, reduce_range: bool) -> tuple[np.ndarray, np.ndarray]:
    """(int8 weights, per-column scales) as onnxruntime's per-channel symmetric int8 (module docstring)."""
    q = 64.0 if reduce_range else 127.0
    absmax = np.max(np.abs(w), axis=0).astype(np.float64)
    scale = np.where(absmax > 0, absmax / q, 1.0)
    wq = np.clip(np.rint(w / scale), -q, q).astype(np.int8)
    return wq, scale.astype(np.float32)


SENSITIVITY_ROWS = 64  # rows (tokens) of each activation multiplied per sample for the ranking


def dynamic_quantize(x: np.ndarray) -> tuple[np.ndarray, float, float]:
    """(x_q as float, scale, zero point) of DynamicQuantizeLinear (uint8, asymmetric, per tensor)."""
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    scale = (hi - lo) / 255.0 or 1.0
    zp = float(np.clip(np.rint(-lo / scale), 0, 255))
    return np.clip(np.rint(x / scale) + zp, 0, 255), scale, zp


def local_errors(
    model: ModelProto, feed: Feed, nodes: Sequence[WeightMatMul], *, reduce_range: bool, batch: int = 1
) -> dict[str, float]:
    """e_n (module docstring) of every node, from one run of the float model per batch of feed."""
    from onnxopt.core.runtime import SessionConfig, create_session, lean_session, run

    probe = copy_model(model)
    exposed = list(dict.fromkeys(n.activation for n in nodes))
    have = {o.name for o in probe.graph.output}
    for name in exposed:
        if name not in have:
            probe.graph.output.append(helper.make_empty_tensor_value_info(name))
    sess = create_session(probe, lean_session(probe, SessionConfig(opt_level="basic")))
    names = [o.name for o in probe.graph.output]
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if t.name in {n.weight for n in nodes}}
    dequantized = {}  # W_q diag(s): the weights int8 computes with, as float
    for k, w in weights.items():
        wq, ws = quantize_weight(w, reduce_range)
        dequantized[k] = wq.astype(np.float32) * ws
    err = dict.fromkeys((n.node for n in nodes), 0.0)
    ref = dict.fromkeys((n.node for n in nodes), 0.0)
    for b in batches(feed, batch, batch_axes(model)):
        outs = dict(zip(names, run(sess, b)))
        for n in nodes:
            x = outs[n.activation].astype(np.float32)
            xq, xs, xz = dynamic_quantize(x)
            rows = x.reshape(-1, x.shape[-1])
            pick = np.linspace(0, len(rows) - 1, min(len(rows), SENSITIVITY_ROWS)).astype(int)
            y = rows[pick] @ weights[n.weight]
            yq = ((xq.reshape(rows.shape)[pick] - xz) * xs).astype(np.float32) @ dequantized[n.weight]
            err[n.node] += float(np.sum(np.square(yq - y), dtype=np.float64))
            ref[n.node] += float(np.sum(np.square(y), dtype=np.float64))
    return {k: err[k] / ref[k] if ref[k] > 0 else 0.0 for k in err}


def rank(errors: dict[str, float]) -> list[tuple[str, float]]:
    """(node, error), most sensitive first (ties by name: deterministic)."""
    return sorted(errors.items(), key=lambda kv: (-kv[1], kv[0]))


EMBEDDING_MIN_BYTES = 64 * 1024  # smaller tables are not worth a cast and a multiply


@dataclass(frozen=True)
class Embedding:
    """A Gather (axis 0) of rows of a 2-D float32 initializer by runtime indices."""

    node: str
    table: str


def embedding_gathers(model: ModelProto) -> list[Embedding]:
    """The main graph's embedding lookups whose table holds at least EMBEDDING_MIN_BYTES."""
    inits = {t.name: t for t in model.graph.initializer}
    consts = {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    out = []
    for n in model.graph.node:
        if n.op_type != "Gather" or n.domain not in ("", "ai.onnx") or len(n.input) != 2 or not n.name:
            continue
        t = inits.get(n.input[0])
        axis = next((a.i for a in n.attribute if a.name == "axis"), 0)
        if (t is None or len(t.dims) != 2 or t.data_type != onnx.TensorProto.FLOAT or axis != 0
                or n.input[1] in inits or n.input[1] in consts or int(np.prod(t.dims)) * 4 < EMBEDDING_MIN_BYTES):
            continue
        out.append(Embedding(n.name, n.input[0]))
    return out


def quantize_rows(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(int8 table, [V, 1] float32 row scales): symmetric int8, one scale per row (module docstring)."""
    absmax = np.max(np.abs(table), axis=1, keepdims=True).astype(np.float64)
    scale = np.where(absmax > 0, absmax / 127.0, 1.0)
    return np.clip(np.rint(table / scale), -127, 127).astype(np.int8), scale.astype(np.float32)


def _int8_lookup(n: onnx.NodeProto, e: Embedding, inits: dict[str, onnx.TensorProto],
                 new_inits: dict[str, onnx.TensorProto]) -> list[onnx.NodeProto]:
    """Gather of the int8 table and of its row scales, cast, multiplied: n's output in float."""
    q, s = e.table + "_q8rows", e.table + "_s8rows"
    if q not in new_inits:
        tq, ts = quantize_rows(numpy_helper.to_array(inits[e.table]))
        new_inits[q], new_inits[s] = numpy_helper.from_array(tq, q), numpy_helper.from_array(ts, s)
    out, ids = n.output[0], n.input[1]
    return [helper.make_node("Gather", [q, ids], [out + "_q8"], name=n.name),
            helper.make_node("Gather", [s, ids], [out + "_s8"], name=n.name + "_scale"),
            helper.make_node("Cast", [out + "_q8"], [out + "_f8"], name=n.name + "_cast", to=onnx.TensorProto.FLOAT),
            helper.make_node("Mul", [out + "_f8", out + "_s8"], [out], name=n.name + "_dequantize")]


def emulated_model(model: ModelProto, int8_nodes: Iterable[str], *, reduce_range: bool,
                   embeddings: bool = False) -> ModelProto:
    """The model with the named weight MatMuls as com.microsoft.DynamicQuantizeMatMul, and (embeddings)
    its embedding tables in int8 with per-row scales (module docstring)."""
    wanted = set(int8_nodes)
    lookups = {e.node: e for e in embedding_gathers(model)} if embeddings else {}
    targets = {n.node: n for n in weight_matmuls(model) if n.node in wanted}
    inits = {t.name: t for t in model.graph.initializer}
    m = ModelProto()
    m.CopyFrom(model)
    del m.graph.node[:]
    new_inits: dict[str, onnx.TensorProto] = {}
    for n in model.graph.node:
        t = targets.get(n.name)
        if n.name in lookups:
            m.graph.node.extend(_int8_lookup(n, lookups[n.name], inits, new_inits))
            continue
        if t is None:
            m.graph.node.append(n)
            continue
        if t.weight + "_q8" not in new_inits:
            wq, ws = quantize_weight(numpy_helper.to_array(inits[t.weight]), reduce_range)
            new_inits[t.weight + "_q8"] = numpy_helper.from_array(wq, t.weight + "_q8")
            new_inits[t.weight + "_s8"] = numpy_helper.from_array(ws, t.weight + "_s8")
            new_inits[t.weight + "_z8"] = numpy_helper.from_array(np.zeros_like(ws, dtype=np.int8), t.weight + "_z8")
        m.graph.node.append(helper.make_node(
            "DynamicQuantizeMatMul", [t.activation, t.weight + "_q8", t.weight + "_s8", t.weight + "_z8"],
            list(n.output), name=n.name, domain="com.microsoft"))
    used = {i for n in m.graph.node for i in n.input}
    kept = [t for t in model.graph.initializer if t.name in used]
    del m.graph.initializer[:]
    m.graph.initializer.extend(kept)
    m.graph.initializer.extend(new_inits.values())
    if not any(o.domain == "com.microsoft" for o in m.opset_import):
        m.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return m
