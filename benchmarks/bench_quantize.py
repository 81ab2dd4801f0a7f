"""Quantization: auto vs fp32 (large conv net, 5 MB conv net, BERT-style encoder), the quantizer grid, size, digits."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from common import Context, Row, SkipSection

ORDER = 20
TITLE = "quantize: int8 with onnxruntime, measured on this CPU"
SEED = 0


# ----------------------------------------------------------------------------- models built in code


def build_small_convnet(path: Path) -> Path:
    """A ~5 MB ResNet-style conv net (widths 32-256, one basic block per stage), 1x3x224x224, seeded."""
    from onnxopt.frameworks import require_torch

    torch = require_torch()
    nn = torch.nn
    torch.manual_seed(SEED)

    class Block(nn.Module):  # type: ignore[misc,name-defined]
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.b1 = nn.BatchNorm2d(cout)
            self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.b2 = nn.BatchNorm2d(cout)
            self.skip = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                         if stride != 1 or cin != cout else nn.Identity())

        def forward(self, x: Any) -> Any:
            y = torch.relu(self.b1(self.c1(x)))
            return torch.relu(self.b2(self.c2(y)) + self.skip(x))

    net = nn.Sequential(
        nn.Conv2d(3, 32, 7, 2, 3, bias=False), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(3, 2, 1),
        Block(32, 32, 1), Block(32, 64, 2), Block(64, 128, 2), Block(128, 256, 2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(256, 1000),
    ).eval()
    _randomize_bn(net, torch)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(net, (torch.randn(1, 3, 224, 224),), str(path), input_names=["input"], output_names=["logits"],
                      opset_version=17, dynamo=False, dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return path


def _randomize_bn(net: Any, torch: Any) -> None:
    """Seeded BN statistics so the network is not an identity-ish toy."""
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.1, 0.1)


def build_bert(path: Path, layers: int = 4, hidden: int = 256, heads: int = 4, ff: int = 1024,
               vocab: int = 8000, seq: int = 128) -> Path:
    """A small BERT-style encoder (embeddings + post-LN attention blocks), seeded, input_ids [batch, seq]."""
    from onnxopt.frameworks import require_torch

    torch = require_torch()
    nn = torch.nn
    torch.manual_seed(SEED)

    class Layer(nn.Module):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.qkv = nn.Linear(hidden, 3 * hidden)
            self.out = nn.Linear(hidden, hidden)
            self.ln1 = nn.LayerNorm(hidden)
            self.ff1 = nn.Linear(hidden, ff)
            self.ff2 = nn.Linear(ff, hidden)
            self.ln2 = nn.LayerNorm(hidden)

        def forward(self, x: Any) -> Any:
            b, s, _ = x.shape
            q, k, v = self.qkv(x).reshape(b, s, 3, heads, hidden // heads).permute(2, 0, 3, 1, 4)
            att = torch.softmax(q @ k.transpose(-1, -2) / (hidden // heads) ** 0.5, dim=-1)
            y = (att @ v).transpose(1, 2).reshape(b, s, hidden)
            x = self.ln1(x + self.out(y))
            return self.ln2(x + self.ff2(torch.nn.functional.gelu(self.ff1(x))))

    class Encoder(nn.Module):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.tok = nn.Embedding(vocab, hidden)
            self.pos = nn.Embedding(seq, hidden)
            self.ln = nn.LayerNorm(hidden)
            self.layers = nn.ModuleList([Layer() for _ in range(layers)])

        def forward(self, ids: Any) -> Any:
            pos = torch.arange(ids.shape[1]).unsqueeze(0)
            x = self.ln(self.tok(ids) + self.pos(pos))
            for layer in self.layers:
                x = layer(x)
            return x

    net = Encoder().eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    ids = torch.randint(0, vocab, (1, seq))
    torch.onnx.export(net, (ids,), str(path), input_names=["input_ids"], output_names=["hidden"], opset_version=17,
                      dynamo=False, dynamic_axes={"input_ids": {0: "batch"}, "hidden": {0: "batch"}})
    return path


# ----------------------------------------------------------------------------- helpers


def _images(n: int, seed: int) -> dict[str, np.ndarray]:
    """Smooth image-like inputs (low-frequency patterns), not white noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:224, 0:224] / 224.0
    out = np.empty((n, 3, 224, 224), np.float32)
    for i in range(n):
        for c in range(3):
            fx, fy, ph = rng.uniform(1, 6), rng.uniform(1, 6), rng.uniform(0, 6.3)
            out[i, c] = np.sin(2 * np.pi * (fx * xx + fy * yy) + ph) + 0.1 * rng.standard_normal((224, 224))
    return {"input": out}


def _ids(n: int, seed: int, vocab: int = 8000, seq: int = 128) -> dict[str, np.ndarray]:
    return {"input_ids": np.random.default_rng(seed).integers(0, vocab, (n, seq)).astype(np.int64)}


def _quantize(ctx: Context, model: onnx.ModelProto, calib: Any, val: Any = None, **kw: Any) -> tuple[Any, float]:
    from onnxopt.quantization.api import quantize
    from onnxopt.quantization.config import QuantizeConfig

    t0 = time.perf_counter()
    bench = ctx.config(runs=max(10, ctx.runs // 2))
    cfg = QuantizeConfig(final_runs=ctx.runs, **kw)
    r = quantize(model, cfg, calib=calib, val=val, bench=bench)
    return r, time.perf_counter() - t0


def _auto_rows(section: str, label: str, r: Any, seconds: float) -> list[Row]:
    from onnxopt.measure.stats import RatioCI

    rep = r.report
    lat = rep.get("latency") or {}
    ratio = (RatioCI(lat["ratio"], lat["low"], lat["high"], lat["significant"])
             if "low" in lat else None)
    rows = [Row(section=section, name=f"{label}: auto -> {rep['winner']}",
                metrics={"size x": rep["size_ratio"], "min cos": f"{rep['fidelity']['min_cosine']:.5f}", "seconds": seconds},
                ratio=ratio, reference=f"{label} fp32", note=rep["why"][:160])]
    return rows


def _candidate_rows(section: str, label: str, rep: dict[str, Any]) -> list[Row]:
    from onnxopt.measure.stats import RatioCI

    rows = []
    for c in rep["candidates"]:
        r = c.get("final") or c.get("quick")
        if c["status"] != "ok" or r is None:
            continue
        ratio = RatioCI(r["ratio"], r["low"], r["high"], r["significant"])
        rows.append(Row(section=section, name=f"{label}: {c['name']}",
                        metrics={"size x": c["size"] / rep["size_before"],
                                 "min cos": f"{c['fidelity']['min_cosine']:.5f}"},
                        ratio=ratio, reference=f"{label} fp32",
                        note=("final" if c.get("final") else "brief") + (" (winner)" if c["name"] == rep["winner"] else "")))
    return rows


# ----------------------------------------------------------------------------- the section


def run(ctx: Context) -> list[Row]:
    """Auto/size/grid on conv nets, the BERT-style encoder, and the digits CNN accuracy."""
    try:
        from onnxopt.frameworks import require_torch

        require_torch()
    except Exception as e:
        raise SkipSection(f"the quantize benchmark builds its models with torch: {e}") from e
    from onnxopt.measure.fidelity import load_eval_data
    from onnxopt.quantization.api import quantize
    from onnxopt.quantization.config import QuantizeConfig

    rows: list[Row] = []
    work = ctx.out_dir / "quantize"
    work.mkdir(parents=True, exist_ok=True)

    # 1. digits CNN: static int8 accuracy vs fp32 (target: within 0.5 points).
    digits = onnx.load(str(ctx.digits_model))
    val = load_eval_data(digits, ctx.digits_val)
    calib, _ = load_eval_data(digits, ctx.digits_calib)
    r = quantize(digits, QuantizeConfig(mode="static", activation_type="uint8", reduce_range=True), calib=calib, val=val)
    f = r.report["fidelity"]
    rows.append(Row(section="quantize", name="digits CNN static int8 (U8S8, reduce_range)",
                    metrics={"fp32 acc %": f["accuracy_reference"], "int8 acc %": f["accuracy_candidate"],
                             "size x": r.report["size_ratio"]},
                    note=f"drop {f['accuracy_drop']:.2f} pt (target <= 0.5)"))

    # 2. a ~5 MB conv net: auto (time budget 2 min) and onnxruntime's whole quantizer grid.
    small_path = build_small_convnet(work / "convnet5mb.onnx")
    small = onnx.load(str(small_path))
    calib_img = _images(32, 1)
    auto, secs = _quantize(ctx, small, calib_img)
    rows += _auto_rows("quantize", "convnet 5MB", auto, secs)
    rows[-1] = replace(rows[-1], note=f"{secs:.0f} s (target < 120 s); " + rows[-1].note)
    grid, gsecs = _quantize(ctx, small, calib_img, grid="full")
    rows += _candidate_rows("quantize grid", "convnet 5MB", grid.report)
    ctx.log(f"grid on the 5 MB conv net took {gsecs:.0f} s; winner {grid.report['winner']}")
    rows += _head_to_head(ctx, small, auto, grid)

    # 3. the large conv net: auto latency, and --objective size.
    large = onnx.load(str(ctx.large_model()))
    calib_large = _images(16, 2)
    auto_l, secs_l = _quantize(ctx, large, calib_large)
    rows += _auto_rows("quantize", "resnet18", auto_l, secs_l)
    rows += _candidate_rows("quantize candidates", "resnet18", auto_l.report)
    size_l, _ = _quantize(ctx, large, calib_large, objective="size")
    rows += [_size_row("resnet18", size_l)]

    # 4. BERT-style encoder: dynamic int8 cosine (target >= 0.99) and auto.
    bert = onnx.load(str(build_bert(work / "bert_small.onnx")))
    ids_calib, ids_val = _ids(32, 3), _ids(32, 4)
    dyn, _ = _quantize(ctx, bert, ids_calib, (ids_val, None), mode="dynamic")
    lat = dyn.report["latency"]["ratio"]
    from onnxopt.measure.stats import RatioCI

    rows.append(Row(section="quantize", name="BERT-style encoder: dynamic int8",
                    metrics={"size x": dyn.report["size_ratio"], "min cos": f"{dyn.report['fidelity']['min_cosine']:.5f}"},
                    ratio=RatioCI(lat["ratio"], lat["low"], lat["high"], lat["significant"]),
                    reference="encoder fp32", note="target cosine >= 0.99"))
    auto_b, secs_b = _quantize(ctx, bert, ids_calib, (ids_val, None))
    rows += _auto_rows("quantize", "encoder", auto_b, secs_b)
    size_b, _ = _quantize(ctx, bert, ids_calib, (ids_val, None), objective="size")
    rows += [_size_row("encoder", size_b)]
    ctx.extras["quantize"] = {
        "convnet5mb_auto_seconds": secs, "resnet18_auto_seconds": secs_l,
        "resnet18_auto_winner": auto_l.report["winner"], "grid_winner": grid.report["winner"],
    }
    return rows


def _size_row(label: str, r: Any) -> Row:
    from onnxopt.measure.stats import RatioCI

    rep = r.report
    lat = rep["latency"]
    return Row(section="quantize", name=f"{label}: --objective size -> {rep['winner']}",
               metrics={"size x": rep["size_ratio"], "int8 floor x": rep["int8_floor"] / rep["size_before"],
                        "min cos": f"{rep['fidelity']['min_cosine']:.5f}"},
               ratio=RatioCI(lat["ratio"], lat["low"], lat["high"], lat["significant"]),
               reference=f"{label} fp32", note="target size <= 0.27x where weights dominate")


def _head_to_head(ctx: Context, model: onnx.ModelProto, auto: Any, grid: Any) -> list[Row]:
    """auto's pick vs the grid's best, measured side by side in one run."""
    from onnxopt.measure.stats import latency_ratio

    res = ctx.bench([model, auto.model, grid.model], ["fp32", "auto", "grid best"])
    r_auto = latency_ratio(res[1], res[0])
    r_grid = latency_ratio(res[2], res[0])
    r_vs = latency_ratio(res[1], res[2])
    return [
        Row(section="quantize", name=f"convnet 5MB: auto ({auto.report['winner']})", ratio=r_auto,
            reference="convnet 5MB fp32", metrics={"min cos": f"{auto.report['fidelity']['min_cosine']:.5f}"}),
        Row(section="quantize", name=f"convnet 5MB: grid best ({grid.report['winner']})", ratio=r_grid,
            reference="convnet 5MB fp32", metrics={"min cos": f"{grid.report['fidelity']['min_cosine']:.5f}"}),
        Row(section="quantize", name="convnet 5MB: auto vs grid best", ratio=r_vs, reference="grid best",
            note="target: not slower (CI upper end <= 1.02) with equal or better fidelity"),
    ]
