"""Conversion: parity of PyTorch / Keras exports against the source framework, conversion time, exporter speed."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import Context, Row, SkipSection, rows_vs_reference

ORDER = 40
TITLE = "convert: parity vs the source framework (target max abs < 1e-4), conversion time, exporters"
SECTION = "convert"
PARITY_TARGET = 1e-4
MOBILENET_SECONDS_TARGET = 60.0


def _parity_row(name: str, result: Any, seconds: float, note: str = "") -> Row:
    p = result.parity
    ok = p.max_abs < PARITY_TARGET
    return Row(
        section=SECTION,
        name=name,
        metrics={"max abs": f"{p.max_abs:.2e}", "max rel": f"{p.max_rel:.2e}", "samples": p.samples,
                 "convert s": seconds, "exporter": result.exporter},
        note=f"parity < 1e-4: {'met' if ok else 'MISSED'}" + (f"; {note}" if note else ""),
    )


def _load(path: Path) -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def torch_rows(ctx: Context) -> list[Row]:
    """Digits CNN (real val data) and a ResNet-18 defined in code; dynamo vs TorchScript export speed."""
    try:
        import torch
    except ImportError as e:
        raise SkipSection("torch not installed: pip install 'onnxopt[torch]'") from e
    from onnxopt.conversion.api import from_torch

    rows = []
    data = dict(np.load(ctx.digits_val))
    net = _load(ctx.root / "models" / "digits_cnn.py").build()
    net.load_state_dict(torch.load(ctx.root / "models" / "digits_cnn.pt", weights_only=True))
    t = time.perf_counter()
    r = from_torch(net, (data["input"][:1],), output_names=["logits"], data=data)
    rows.append(_parity_row("digits CNN (torch, auto exporter)", r, time.perf_counter() - t,
                            f"kept {r.exporter}: {r.report['exporter_reason']}"))
    ctx.log(f"digits torch: max abs {r.parity.max_abs:.2e}")

    sys.path.insert(0, str(ctx.root / "scripts"))
    try:
        from resnet import resnet18
    finally:
        sys.path.pop(0)
    torch.manual_seed(0)
    model = resnet18(num_classes=1000).eval()
    example = (np.zeros((1, 3, 224, 224), np.float32),)
    exported = {}
    for exporter in ("dynamo", "torchscript"):
        t = time.perf_counter()
        res = from_torch(model, example, exporter=exporter, output_names=["logits"])
        exported[exporter] = res
        rows.append(_parity_row(f"resnet18 (torch, {exporter})", res, time.perf_counter() - t))
        ctx.log(f"resnet18 {exporter}: max abs {res.parity.max_abs:.2e}")
    results = ctx.bench([exported["torchscript"].model, exported["dynamo"].model],
                        ["resnet18 torchscript export", "resnet18 dynamo export"])
    rows += rows_vs_reference(SECTION, results, reference=results[0], label_threads=False)
    if not ctx.quick:
        rows += _minilm_rows(ctx, torch)
    return rows


def _minilm_rows(ctx: Context, torch: Any) -> list[Row]:
    """A MiniLM-class encoder (6 layers, d 384, 12 heads, seq 128, seeded): dynamo vs TorchScript export."""
    from torch import nn

    from onnxopt.conversion.api import from_torch

    class MiniLM(nn.Module):
        def __init__(self, vocab: int = 30522, d: int = 384, layers: int = 6, heads: int = 12, seq: int = 128) -> None:
            super().__init__()
            self.tok = nn.Embedding(vocab, d)
            self.pos = nn.Embedding(seq, d)
            self.norm = nn.LayerNorm(d)
            layer = nn.TransformerEncoderLayer(d, heads, 4 * d, dropout=0.0, activation="gelu", batch_first=True)
            self.enc = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

        def forward(self, ids: Any) -> Any:
            pos = torch.arange(ids.shape[1], device=ids.device)
            return self.enc(self.norm(self.tok(ids) + self.pos(pos)))

    torch.manual_seed(0)
    model = MiniLM().eval()
    ids = (np.random.default_rng(0).integers(0, 30522, (1, 128)).astype(np.int64),)
    rows, exported = [], {}
    for exporter in ("dynamo", "torchscript"):
        t = time.perf_counter()
        res = from_torch(model, ids, exporter=exporter, input_names=["input_ids"])
        exported[exporter] = res
        rows.append(_parity_row(f"MiniLM-class encoder (torch, {exporter})", res, time.perf_counter() - t))
        ctx.log(f"MiniLM {exporter}: max abs {res.parity.max_abs:.2e}")
    results = ctx.bench([exported["dynamo"].model, exported["torchscript"].model],
                        ["MiniLM dynamo export", "MiniLM torchscript export"])
    rows += rows_vs_reference(SECTION, results, reference=results[0], label_threads=False)
    return rows


def keras_rows(ctx: Context) -> list[Row]:
    """Digits Keras model, keras.applications MobileNetV2 (CLI, timed) and ResNet50 (weights=None, seeded)."""
    try:
        from onnxopt.frameworks import require_keras

        keras = require_keras()
    except Exception as e:
        raise SkipSection(f"keras not usable: {e}") from e
    from onnxopt.conversion.api import convert_source, from_keras

    rows = []
    data = dict(np.load(ctx.digits_val))
    t = time.perf_counter()
    r = convert_source(str(ctx.root / "models" / "digits_keras.keras"), data=data)
    rows.append(_parity_row("digits Keras (.keras file)", r, time.perf_counter() - t))
    with tempfile.TemporaryDirectory() as d:
        keras.utils.set_random_seed(0)
        mobilenet = keras.applications.MobileNetV2(weights=None, classifier_activation=None)
        src = Path(d) / "mobilenet_v2.keras"
        mobilenet.save(src)
        out = Path(d) / "mobilenet_v2.onnx"
        cmd = [sys.executable, "-m", "onnxopt", "convert", str(src), "-o", str(out), "--json"]
        cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ctx.root, timeout=900)
        seconds = time.perf_counter() - t
        cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
        if proc.returncode != 0:
            rows.append(Row(section=SECTION, name="MobileNetV2 (keras, `onnxopt convert`)",
                            note=f"FAILED: {proc.stderr.strip()[-300:]}"))
        else:
            rep = json.loads(proc.stdout)
            p = rep["parity"]
            rows.append(Row(
                section=SECTION, name="MobileNetV2 (keras, `onnxopt convert`, wall clock)",
                metrics={"max abs": f"{p['max_abs']:.2e}", "max rel": f"{p['max_rel']:.2e}", "samples": p["samples"],
                         "convert s": seconds, "cpu s": cpu, "exporter": rep["exporter"]},
                note=f"parity < 1e-4: {'met' if p['max_abs'] < PARITY_TARGET else 'MISSED'}; "
                     f"< {MOBILENET_SECONDS_TARGET:.0f} s: {'met' if seconds < MOBILENET_SECONDS_TARGET else 'MISSED'} "
                     f"(wall clock incl. TensorFlow import; tf2onnx export {rep['attempts'][0].get('export_s', 0):.0f} s)",
            ))
            ctx.log(f"MobileNetV2 CLI: {seconds:.1f} s wall, {cpu:.1f} s CPU, max abs {p['max_abs']:.2e}")
    if not ctx.quick:
        keras.utils.set_random_seed(0)
        resnet = keras.applications.ResNet50(weights=None, classifier_activation=None)
        t = time.perf_counter()
        r = from_keras(resnet)
        rows.append(_parity_row("ResNet50 (keras, from_keras)", r, time.perf_counter() - t))
        ctx.log(f"ResNet50 keras: max abs {r.parity.max_abs:.2e}")
    return rows


def run(ctx: Context) -> list[Row]:
    """Both frameworks; a missing framework skips only its rows."""
    rows: list[Row] = []
    skipped = []
    for part in (torch_rows, keras_rows):
        try:
            rows += part(ctx)
        except SkipSection as e:
            skipped.append(str(e))
    if not rows:
        raise SkipSection("; ".join(skipped))
    for s in skipped:
        rows.append(Row(section=SECTION, name="skipped", note=s))
    return rows
