"""`fuse_transformer`: onnxruntime's transformer optimizer on a text encoder, checked and measured.

onnxruntime.transformers.optimizer rewrites the subgraphs of a BERT-style encoder into its fused
com.microsoft ops: the Q/K/V projections + softmax(Q K^T / sqrt(d) + mask) V into Attention, the
residual Add + LayerNormalization into SkipLayerNormalization, MatMul + bias + Gelu into BiasGelu
(the embedding lookups stay Gathers, not EmbedLayerNormalization, so their tables can be int8). Every
rewrite computes the same function up to float rounding. The optimizer needs the number of
attention heads and the hidden size; they are read from the graph (the Reshape that splits
the hidden axis into [heads, hidden / heads]; the embedding width), else 0/0 lets it infer them.

The fused model is kept only when (1) its outputs match the input's on text-like samples
(per-sample cosine >= PARITY_COSINE, relative max difference <= PARITY_RELATIVE) and (2), inside
optimize, a brief interleaved benchmark shows it clearly faster than the input (CI upper end of
the latency ratio <= FUSION_MARGIN). A neutral fusion is not kept: the int8 stage after it does not
need it, and quantizes more of the unfused graph (the Q/K/V projections are plain MatMuls there,
folded into the float Attention op after fusion); measured on a MiniLM-class encoder (1 thread,
CPU time, noisy shared machine): fusion 0.98x, int8 on the fused MatMuls 1.22x, int8 on every
unfused MatMul 1.31x the speed of the input.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import onnx
from onnx import ModelProto, numpy_helper

from onnxopt.core.errors import InvalidInputError, short_message
from onnxopt.core.model import op_histogram
from onnxopt.passes.base import PassContext, PassResult, register_pass

log = logging.getLogger(__name__)

PARITY_COSINE = 0.9999
PARITY_RELATIVE = 1e-3  # max |fused - input| / max |input|
PARITY_SAMPLES = 2
QUICK_RUNS = 8
FUSION_MARGIN = 0.98  # kept when the CI upper end of fused / input latency is at most this (as int8: INT8_MARGIN)
FUSED_OPS = ("Attention", "MultiHeadAttention", "EmbedLayerNormalization", "SkipLayerNormalization",
             "BiasGelu", "FastGelu", "Gelu", "LayerNormalization")
MODEL_TYPES = ("bert",)


def _constant_values(model: ModelProto) -> dict[str, np.ndarray]:
    """Integer tensors known at export time: initializers and Constant node outputs."""
    out = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT64}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            arr = numpy_helper.to_array(n.attribute[0].t)
            if arr.dtype == np.int64:
                out[n.output[0]] = arr
    return out


def _reshape_targets(model: ModelProto) -> list[list[int]]:
    """The target shapes of Reshape nodes where known: a constant, or a Concat of constants and
    runtime parts (the runtime parts as -1)."""
    consts = _constant_values(model)
    producers = {o: n for n in model.graph.node for o in n.output}
    shapes = []
    for n in model.graph.node:
        if n.op_type != "Reshape" or len(n.input) < 2:
            continue
        src = n.input[1]
        if src in consts:
            shapes.append([int(v) for v in consts[src].reshape(-1)])
        elif src in producers and producers[src].op_type == "Concat":
            parts: list[int] = []
            for i in producers[src].input:
                parts.extend(int(v) for v in consts[i].reshape(-1)) if i in consts else parts.append(-1)
            shapes.append(parts)
    return shapes


def encoder_dims(model: ModelProto) -> tuple[int, int]:
    """(attention heads, hidden size) read from the graph; 0 for what cannot be read (onnxruntime
    then infers it)."""
    from onnxopt.core.tokens import embedding_dim

    hidden = embedding_dim(model) or 0
    if not hidden:
        ln = [n for n in model.graph.node if n.op_type == "LayerNormalization"]
        inits = {t.name: tuple(t.dims) for t in model.graph.initializer}
        dims = [inits[n.input[1]] for n in ln if len(n.input) > 1 and n.input[1] in inits]
        hidden = int(dims[0][0]) if dims and len(dims[0]) == 1 else 0
    heads = 0
    for shape in _reshape_targets(model):
        # [batch, sequence, heads, head_size]: the split of the hidden axis before attention
        # (transformers >= 4.48 exports heads as -1: hidden / head_size)
        if hidden and len(shape) == 4 and shape[3] > 0 and hidden % shape[3] == 0 and shape[2] in (-1, hidden // shape[3]):
            heads = hidden // shape[3]
            break
    return (heads, hidden) if heads else (0, 0)


def fused_counts(model: ModelProto) -> dict[str, int]:
    """Counts of onnxruntime's fused transformer ops in a model."""
    hist = op_histogram(model)
    return {op: hist[f"com.microsoft.{op}"] for op in FUSED_OPS if hist.get(f"com.microsoft.{op}")}


def fuse(model: ModelProto, *, model_type: str = "bert", num_heads: int = 0, hidden_size: int = 0) -> ModelProto:
    """The model as onnxruntime's transformer optimizer rewrites it (raises InvalidInputError when it fails)."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    from onnxopt.quantization.engine import quiet_quantizer

    options = FusionOptions(model_type)
    # the embedding lookups stay Gathers: EmbedLayerNormalization would take the word table as a float
    # input, which int8 embedding tables (quantization.sensitivity) cannot feed; its gain is a few small ops
    options.enable_embed_layer_norm = False
    with tempfile.TemporaryDirectory(prefix="onnxopt-fuse-") as tmp:
        path = Path(tmp) / "model.onnx"
        onnx.save(model, str(path))
        try:
            with quiet_quantizer():  # the optimizer logs on the root logger too
                opt = optimize_model(str(path), model_type=model_type, num_heads=num_heads, hidden_size=hidden_size,
                                     optimization_options=options, opt_level=0)  # python fusions only
        except Exception as e:
            raise InvalidInputError(f"onnxruntime's transformer optimizer failed: {short_message(e)}") from e
        fused: ModelProto = opt.model
    _keep_identity(model, fused)
    domains = {n.domain for n in fused.graph.node} - {"", "ai.onnx"}
    have = {o.domain for o in fused.opset_import}
    fused.opset_import.extend(onnx.helper.make_opsetid(d, 1) for d in sorted(domains - have))
    return fused


def _keep_identity(src: ModelProto, dst: ModelProto) -> None:
    dst.producer_name, dst.producer_version = src.producer_name, src.producer_version
    dst.graph.name = src.graph.name
    del dst.metadata_props[:]
    dst.metadata_props.extend(src.metadata_props)


def parity(reference: ModelProto, fused: ModelProto, feed: dict[str, np.ndarray]) -> dict[str, float]:
    """min per-sample cosine and relative max difference of fused vs reference on feed, run at batch 1."""
    from onnxopt.quantization.transformer import outputs_at, sample_cosines

    ref = outputs_at(reference, feed, 1)
    out = outputs_at(fused, feed, 1)
    scale = max(float(np.max(np.abs(r))) for r in ref) or 1.0
    rel = max(float(np.max(np.abs(r.astype(np.float64) - o))) for r, o in zip(ref, out)) / scale
    return {"min_cosine": float(np.min(sample_cosines(ref, out))), "max_relative": rel}


@register_pass
@dataclass(frozen=True)
class FuseTransformerPass:
    """onnxruntime's transformer fusions (Attention, SkipLayerNormalization, BiasGelu, ...), kept
    only when the outputs match and (inside optimize, unless measure is false) it is measured
    clearly faster than the input."""

    name: ClassVar[str] = "fuse_transformer"
    model_type: str = "bert"
    num_heads: int = 0  # 0: read from the graph (else onnxruntime infers it)
    hidden_size: int = 0  # 0: read from the graph (else onnxruntime infers it)
    measure: bool = True  # inside optimize, keep the fused model only when measured clearly faster

    def __post_init__(self) -> None:
        if self.model_type not in MODEL_TYPES:
            raise InvalidInputError(f"fuse_transformer model_type {self.model_type!r}: choose one of {', '.join(MODEL_TYPES)}")
        if self.num_heads < 0 or self.hidden_size < 0:
            raise InvalidInputError("fuse_transformer num_heads and hidden_size must be >= 0 (0: read from the graph)")

    def __call__(self, model: ModelProto, context: PassContext) -> PassResult:
        """Fuse, check parity on text-like samples, measure briefly; unchanged (with a reason) otherwise."""
        heads, hidden = encoder_dims(model)
        heads, hidden = self.num_heads or heads, self.hidden_size or hidden
        report: dict[str, Any] = {"model_type": self.model_type, "num_heads": heads, "hidden_size": hidden}
        if fused_counts(model).get("Attention"):
            return PassResult(model, False, {**report, "reason": "already fused (com.microsoft.Attention present)"})
        try:
            fused = fuse(model, model_type=self.model_type, num_heads=heads, hidden_size=hidden)
        except InvalidInputError as e:
            return PassResult(model, False, {**report, "reason": str(e)})
        counts = fused_counts(fused)
        report["fused_ops"] = counts
        if not counts.get("Attention") and not counts.get("SkipLayerNormalization"):
            return PassResult(model, False, {**report, "reason": "onnxruntime's transformer optimizer found no "
                                                                  "attention or skip-LayerNorm pattern to fuse"})
        feed = _parity_feed(model, context)
        check = parity(model, fused, feed)
        report["parity"] = check
        if check["min_cosine"] < PARITY_COSINE or check["max_relative"] > PARITY_RELATIVE:
            return PassResult(model, False, {**report, "reason": (
                f"the fused model's outputs differ (per-sample cosine {check['min_cosine']:.6f}, relative max "
                f"difference {check['max_relative']:.2g}): kept the unfused model")})
        if context.bench is not None and self.measure:
            ratio = _quick_ratio(model, fused, feed, context.bench)
            report["latency"] = ratio.to_dict() | {"describe": ratio.describe()}
            if ratio.high > FUSION_MARGIN:
                return PassResult(model, False, {**report, "reason": (
                    f"the fusions do not pay here ({ratio.describe()} vs the input): kept the unfused graph, whose "
                    "Q/K/V projections int8 can quantize too")})
        return PassResult(fused, True, report)


def _parity_feed(model: ModelProto, context: PassContext) -> dict[str, np.ndarray]:
    """A few samples: the --data inputs when given, else text-like synthetic ones."""
    from onnxopt.core.feeds import first_batch
    from onnxopt.core.model import batch_axes
    from onnxopt.core.tokens import token_feed

    if context.val is not None:
        return first_batch(context.val, PARITY_SAMPLES, batch_axes(model))
    overrides = context.bench.shape_overrides if context.bench is not None else None
    return token_feed(model, samples=PARITY_SAMPLES, overrides=overrides, seed=context.seed)


def _quick_ratio(model: ModelProto, fused: ModelProto, feed: dict[str, np.ndarray], bench: Any) -> Any:
    """Latency ratio fused / input, interleaved, on one sample of feed at the run's batch."""
    from onnxopt.measure.benchmark import benchmark, timing_feed
    from onnxopt.measure.stats import latency_ratio

    timed = timing_feed(model, feed, batch=1)
    cfg = replace(bench, warmup=min(bench.warmup, 2), runs=QUICK_RUNS, duration_s=None, batch=1)
    res = benchmark([model, fused], cfg, feed=timed, names=["input", "fused"])
    return latency_ratio(res[1], res[0])
