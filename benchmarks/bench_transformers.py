"""Transformers: a MiniLM-class sentence encoder, fp32 export vs Optimum-style vs `onnxopt optimize`.

The encoder is transformers' BertModel built in code from a BertConfig (6 layers, hidden 384,
12 heads, intermediate 1536, vocabulary 30522: all-MiniLM-L6-v2's shape), seeded, exported with
torch.onnx (TorchScript exporter) with dynamic batch and sequence axes. Random weights quantize
unrealistically well, so the build gives them what trained transformers have: weights at a
trained scale (std 0.05) and outlier channels: a few hidden channels with a large LayerNorm
scale in every layer, and, in two layers, a few FFN channels with a large pre-activation bias
(the activation outliers that make plain int8 lose per-sample cosine on trained encoders).

Side by side, in one interleaved run at batch 1, sequence 128, on text-like token ids:
- fp32 export: the exported model as it is;
- Optimum-style: onnxruntime's transformer optimizer (fusions) + plain dynamic int8 on every
  MatMul with onnxruntime's defaults (what `optimum-cli onnxruntime optimize -O2` then
  `quantize --avx2` amounts to, approximately: per-channel QUInt8 weights there);
- two more forms, for the record: every MatMul in per-channel int8 with 7-bit weights (onnxopt's
  int8 form without its keep-if-faster rule), and int4 weight-only (MatMulNBits, block 32);
- onnxopt: `onnxopt optimize` with its defaults (the transformer family), its wall time shown.
Each row: latency ratio vs fp32 with its 95% CI, size, and the lowest per-sample output cosine
vs fp32 over the check samples (not the samples onnxopt searched on).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from common import Context, Row, SkipSection, result_metrics

ORDER = 25
TITLE = "transformers: MiniLM-class encoder, fp32 vs Optimum-style vs onnxopt optimize (batch 1, seq 128)"
SEED = 0
SEQ = 128
CHECK_SAMPLES = 32
SHAPE = {"layers": 6, "hidden": 384, "heads": 12, "intermediate": 1536, "vocab": 30522}


def build_minilm(path: Path, *, layers: int = 6, hidden: int = 384, heads: int = 12, intermediate: int = 1536,
                 vocab: int = 30522, outliers: bool = True, seed: int = SEED) -> Path:
    """A MiniLM-class BertModel (module docstring) exported to path: inputs input_ids, attention_mask,
    token_type_ids [batch, sequence] int64; output last_hidden_state [batch, sequence, hidden]."""
    try:
        import torch
        from transformers import BertConfig, BertModel
    except ImportError as e:
        raise SkipSection(f"needs torch and transformers ({e}); pip install 'onnxopt[torch,hf]'") from e
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=intermediate, initializer_range=0.05, attn_implementation="eager")
    model = BertModel(cfg, add_pooling_layer=False).eval()
    if outliers:
        _outlier_channels(model, torch, hidden, intermediate)

    class Encoder(torch.nn.Module):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.bert = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            out = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
            return out.last_hidden_state

    names = ["input_ids", "attention_mask", "token_type_ids"]
    ids = torch.randint(1000, vocab, (1, SEQ))
    path.parent.mkdir(parents=True, exist_ok=True)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Encoder().eval(), (ids, torch.ones_like(ids), torch.zeros_like(ids)), str(path),
                          input_names=names, output_names=["last_hidden_state"], opset_version=17, dynamo=False,
                          dynamic_axes={k: {0: "batch", 1: "sequence"} for k in [*names, "last_hidden_state"]})
    return path


def _outlier_channels(model: Any, torch: Any, hidden: int, intermediate: int) -> None:
    """Trained-transformer outliers: LayerNorm scale x6 on 2 hidden channels in every layer but the
    last LayerNorm; FFN pre-activation bias +6 on 3 channels of layers 1 and 4."""
    with torch.no_grad():
        norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
        for ln in norms[:-1]:
            ln.weight[[hidden // 20, hidden // 2 + 31]] *= 20.0
        for i in (1, 4):
            if i < len(model.encoder.layer):
                ffn = model.encoder.layer[i].intermediate.dense
                ffn.bias[[7, intermediate // 2, intermediate - 9]] += 60.0


def _optimum_style(fp32: Path, work: Path) -> Path:
    """onnxruntime's transformer optimizer, then quantize_dynamic with its defaults on every MatMul."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from onnxopt.passes.transformer import encoder_dims, fuse

    model = onnx.load(str(fp32))
    heads, hidden = encoder_dims(model)
    fused = work / "fused.onnx"
    onnx.save(fuse(model, num_heads=heads, hidden_size=hidden), str(fused))
    out = work / "optimum_style.onnx"
    quantize_dynamic(str(fused), str(out), weight_type=QuantType.QInt8, per_channel=False,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return out


def _variants(fp32: Path, work: Path) -> dict[str, Path]:
    """What else int8/int4 could be on this CPU, for the record beside onnxopt's choice: every MatMul
    in per-channel dynamic int8 with 7-bit weights (onnxopt's int8 form, no MatMul kept in float, no
    keep-if-faster rule), and int4 weight-only (MatMulNBits, block 32, int8 compute)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from onnxopt.quantization.weight_only import quantize_file

    fused = work / "fused.onnx"  # written by _optimum_style
    int8 = work / "int8_every_matmul.onnx"
    quantize_dynamic(str(fused), str(int8), weight_type=QuantType.QInt8, per_channel=True, reduce_range=True,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT, "MatMulConstBOnly": True})
    int4 = work / "int4_weight_only.onnx"
    quantize_file(fused, int4, bits=4, block_size=32, algorithm="rtn", accuracy_level=4)
    return {"int8 every MatMul (per-channel, 7-bit weights)": int8,
            "int4 weight-only (MatMulNBits, block 32)": int4}


def _onnxopt(fp32: Path, work: Path, ctx: Context) -> tuple[Path, float, float, Any]:
    """`onnxopt optimize` with its defaults (the library call the CLI makes); (path, wall s, CPU s, result).
    CPU seconds (this process, every thread) do not count waiting for a busy machine's cores."""
    from onnxopt.core.model import load_model, save_model
    from onnxopt.optimization.run import optimize
    from onnxopt.optimization.types import OptimizeConfig

    t0, c0 = time.perf_counter(), time.process_time()
    result = optimize(load_model(fp32), config=OptimizeConfig(threads=ctx.threads))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    out = work / "onnxopt.onnx"
    save_model(result.model, out)
    return out, wall, cpu, result


def _check_feed(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Held-out text-like samples (another seed than onnxopt's own check)."""
    from onnxopt.core.tokens import token_feed

    return token_feed(model, samples=CHECK_SAMPLES, seq=SEQ, seed=SEED + 101)


def _min_cosine(reference: Path, candidate: Path, feed: dict[str, np.ndarray]) -> float:
    from onnxopt.quantization.transformer import outputs_at, sample_cosines

    ref = outputs_at(onnx.load(str(reference)), feed, 1)
    out = outputs_at(onnx.load(str(candidate)), feed, 1)
    return float(sample_cosines(ref, out).min())


def run(ctx: Context) -> list[Row]:
    """fp32 export, Optimum-style and onnxopt measured side by side (module docstring)."""
    from onnxopt.core.feeds import first_batch

    with tempfile.TemporaryDirectory(prefix="bench-transformers-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        fp32 = build_minilm(work / "minilm.onnx")
        ctx.log(f"built and exported the MiniLM-class encoder in {time.perf_counter() - t0:.1f} s")
        optimum = _optimum_style(fp32, work)
        variants = _variants(fp32, work)
        mine, wall, cpu, result = _onnxopt(fp32, work, ctx)
        ctx.log(f"onnxopt optimize took {wall:.1f} s ({cpu:.1f} CPU s); final stage: {result.final}")
        feed = _check_feed(onnx.load(str(fp32), load_external_data=False))
        timed = first_batch(feed, 1)
        names = ["fp32 export", "Optimum-style (fusion + dynamic int8)", *variants, "onnxopt optimize"]
        paths = [fp32, optimum, *variants.values(), mine]
        from onnxopt.measure.benchmark import benchmark

        t1 = time.perf_counter()
        res = benchmark([str(p) for p in paths], ctx.config(), feed=timed, names=names)
        ctx.log(f"measured the three models interleaved in {time.perf_counter() - t1:.1f} s")
        rows = []
        for name, path, r in zip(names, paths, res):
            cos = 1.0 if path == fp32 else _min_cosine(fp32, path, feed)
            metrics: dict[str, float | str] = {**result_metrics(r), "min cosine": cos, "batch": 1, "seq": SEQ}
            if path == mine:
                metrics["optimize s"] = wall
                metrics["optimize CPU s"] = cpu
            from onnxopt.measure.stats import latency_ratio

            ratio = None if r is res[0] else latency_ratio(r, res[0])
            note = "" if path != mine else f"final stage: {result.final}"
            rows.append(Row(section="transformers", name=name, metrics=metrics, ratio=ratio,
                            reference=None if r is res[0] else res[0].label, is_reference=r is res[0], note=note))
        return rows
