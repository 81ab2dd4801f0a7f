"""The accuracy fallback's node ranking for big models: each weight MatMul's own error on float activations.

The fallback (quantization.fallback) ranks quantized nodes by the error of a model in which only
that node is quantized: one whole model built, loaded and scored per node. On a model of S bytes
with n such nodes that is n x S of reading and writing (35 builds of ~10 s on a 2.2 GB MLP), so
in file mode (a big model) the ranking is computed instead, the way the transformer engine ranks
(quantization.sensitivity), for every node the candidate quantized when each is a MatMul with a
constant 2-D float weight W [K, N]:

    e_n = sum ||x_q W_q - x W||^2 / sum ||x W||^2

over rows x of the node's input from ONE run of the float model per sample (its MatMul inputs
exposed as outputs, at most SENSITIVITY_ROWS evenly spaced rows per sample, ROW_BUDGET rows per
node in all), where W_q is W as the candidate stores it, dequantized:

- int8 modes (dynamic, static): symmetric int8 (`weight_type` int8) or asymmetric uint8, per
  column (`per_channel`) or per tensor, 7-bit with reduce_range; x_q is x through dynamic uint8
  (DynamicQuantizeLinear: scale and zero point from the whole sample's x). For static candidates
  that stands in for the calibrated range;
- weight-only (MatMulNBits): blocks of `block_size` values along K per column, asymmetric, at
  `bits` (s_b = (max(w_b, 0) - min(w_b, 0)) / (2^bits - 1), z_b = round(-min(w_b, 0) / s_b));
  x stays float (the int8 rows of accuracy level 4 and HQQ's searched scales are not emulated).

The weights are read one tensor at a time from the file. The ranking only orders the search:
whether a set of float nodes holds the floor is still measured end to end, a whole model per step.
Nodes of other kinds (Conv, Gemm, Gather, ...) are not covered: their candidates keep one build per node.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from onnx import ModelProto, helper, numpy_helper

from onnxopt.core.external import remove_model_file
from onnxopt.core.feeds import Feed, batches, feed_samples
from onnxopt.core.model import batch_axes, copy_model
from onnxopt.quantization.engine import Candidate
from onnxopt.quantization.sensitivity import (
    SENSITIVITY_ROWS,
    WeightMatMul,
    dynamic_quantize,
    rank,
    weight_matmuls,
)

log = logging.getLogger(__name__)

ROW_BUDGET = 512  # rows of each node's input kept for the ranking, over all samples


@dataclass(frozen=True)
class WeightScheme:
    """How a candidate stores a MatMul weight and treats its input (module docstring)."""

    bits: int = 8
    block: int = 0  # weight-only: values per block along K; 0: int8 per column or per tensor
    per_channel: bool = True
    symmetric: bool = True
    reduce_range: bool = False
    activation: bool = True  # x through dynamic uint8


def scheme_of(cand: Candidate) -> WeightScheme:
    """The WeightScheme a candidate quantizes MatMul weights with."""
    if cand.mode == "weight-only":
        return WeightScheme(bits=cand.bits, block=cand.block_size, symmetric=False, activation=False)
    return WeightScheme(per_channel=cand.per_channel, symmetric=cand.weight_type == "int8",
                        reduce_range=cand.reduce_range)


def dequantize(w: np.ndarray, scheme: WeightScheme) -> np.ndarray:
    """W [K, N] as the quantized model computes with it, in float32 (module docstring)."""
    if scheme.block:
        return _dequantize_blocks(w, scheme.bits, scheme.block)
    axis = 0 if scheme.per_channel else None
    levels = (127.0 if scheme.reduce_range else 255.0) if not scheme.symmetric else (64.0 if scheme.reduce_range else 127.0)
    if scheme.symmetric:
        absmax = np.max(np.abs(w), axis=axis).astype(np.float64)
        scale = np.where(absmax > 0, absmax / levels, 1.0)
        return (np.clip(np.rint(w / scale), -levels, levels) * scale).astype(np.float32)
    lo = np.minimum(np.min(w, axis=axis), 0.0).astype(np.float64)
    hi = np.maximum(np.max(w, axis=axis), 0.0).astype(np.float64)
    scale = np.where(hi > lo, (hi - lo) / levels, 1.0)
    zp = np.clip(np.rint(-lo / scale), 0, levels)
    return ((np.clip(np.rint(w / scale) + zp, 0, levels) - zp) * scale).astype(np.float32)


def _dequantize_blocks(w: np.ndarray, bits: int, block: int) -> np.ndarray:
    k, n = w.shape
    pad = -k % block
    b = np.pad(w, ((0, pad), (0, 0))).reshape(-1, block, n).astype(np.float64)
    levels = float(2**bits - 1)
    lo, hi = np.minimum(b.min(axis=1, keepdims=True), 0.0), np.maximum(b.max(axis=1, keepdims=True), 0.0)
    scale = np.where(hi > lo, (hi - lo) / levels, 1.0)
    zp = np.clip(np.rint(-lo / scale), 0, levels)
    dq = (np.clip(np.rint(b / scale) + zp, 0, levels) - zp) * scale
    return dq.reshape(-1, n)[:k].astype(np.float32)


@dataclass
class _Rows:
    """A node's sampled input rows, with each row's DynamicQuantizeLinear scale and zero point."""

    x: list[np.ndarray]
    scale: list[np.ndarray]
    zero: list[np.ndarray]


def _activation_rows(path: Path, graph: ModelProto, feed: Feed, nodes: list[WeightMatMul]) -> dict[str, _Rows]:
    """Every node's input rows from one run of the float model (file `path`, graph `graph`) per sample:
    a probe graph beside `path` (so that its external data resolves) with the inputs as outputs."""
    from onnxopt.core.runtime import SessionConfig, create_session, lean_session, run

    exposed = list(dict.fromkeys(n.activation for n in nodes))
    probe = copy_model(graph)
    have = {o.name for o in probe.graph.output}
    probe.graph.output.extend(helper.make_empty_tensor_value_info(x) for x in exposed if x not in have)
    names = [o.name for o in probe.graph.output]
    axes = batch_axes(graph)
    per_sample = max(1, min(SENSITIVITY_ROWS, ROW_BUDGET // max(1, feed_samples(feed, axes))))
    rows = {x: _Rows([], [], []) for x in exposed}
    probe_path = path.with_name(path.stem + "-probe.onnx")
    probe_path.write_bytes(probe.SerializeToString())  # the graph only: the weights stay in path's data file
    try:
        sess = create_session(probe_path, lean_session(probe, SessionConfig(opt_level="basic")))
        for b in batches(feed, 1, axes):
            outs = dict(zip(names, run(sess, b)))
            for x in exposed:
                a = outs[x].astype(np.float32)
                _, s, z = dynamic_quantize(a)
                flat = a.reshape(-1, a.shape[-1])
                pick = np.linspace(0, len(flat) - 1, min(len(flat), per_sample)).astype(int)
                r = rows[x]
                r.x.append(flat[pick])
                r.scale.append(np.full(len(pick), s, np.float32))
                r.zero.append(np.full(len(pick), z, np.float32))
        del sess
    finally:
        remove_model_file(probe_path)
    return rows


def local_errors_from_file(path: Path, graph: ModelProto, feed: Feed, nodes: list[WeightMatMul],
                           scheme: WeightScheme) -> dict[str, float]:
    """e_n (module docstring) of every node; weights read one at a time from path's external data."""
    rows = _activation_rows(path, graph, feed, nodes)
    inits = {t.name: t for t in graph.graph.initializer}
    errors: dict[str, float] = {}
    for n in nodes:
        r = rows[n.activation]
        x = np.concatenate(r.x)
        w = numpy_helper.to_array(inits[n.weight], str(path.parent)).astype(np.float32, copy=False)
        if scheme.activation:
            s, z = np.concatenate(r.scale)[:, None], np.concatenate(r.zero)[:, None]
            xq = ((np.clip(np.rint(x / s) + z, 0, 255) - z) * s).astype(np.float32)
        else:
            xq = x
        y = x @ w
        yq = xq @ dequantize(w, scheme)
        ref = float(np.sum(np.square(y), dtype=np.float64))
        errors[n.node] = float(np.sum(np.square(yq - y), dtype=np.float64)) / ref if ref > 0 else 0.0
        del w, y, yq
    log.debug("local errors of %d node(s) from %d input rows each", len(nodes),
              sum(len(a) for a in next(iter(rows.values())).x))
    return errors


def rank_locally(cand: Candidate, quantized: list[str], path: Path, graph: ModelProto, feed: Feed
                 ) -> list[tuple[str, float]] | None:
    """(node, e_n) for the quantized nodes, most sensitive first; None when one of them is not a
    weight MatMul of graph (the float model the candidate was built from, file `path`)."""
    by_name = {n.node: n for n in weight_matmuls(graph)}
    if not quantized or any(q not in by_name for q in quantized):
        return None
    nodes = [by_name[q] for q in quantized]
    return rank(local_errors_from_file(path, graph, feed, nodes, scheme_of(cand)))
