"""`make bench --only scale`: onnxopt on models of about 128 MB, 512 MB and 2.2 GB (built in code).

Each model is an MLP of MatMul 4096x4096 + Relu layers (64 MiB of float32 weights each) without
node names, weights in one external-data file, written to a temporary folder and deleted after
its row (the 2.2 GB one needs about 3 GB of free disk). Every command runs in its own process;
the row gives its wall time (and per GB of model: flat when time grows linearly), its peak resident memory (the child's ru_maxrss) over the model's
size on disk (the issue's bound: 3x plus about 1 GB), and, for commands that produce a model,
the latency ratio of the result against the input as the command measured it.
`--quick` runs the 128 MB model only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import Context, Row

ORDER = 90
TITLE = "scale: wall time, peak RSS / model size, latency ratio over model sizes (external data)"

WIDTH = 4096
SIZES = {"128 MB": 2, "512 MB": 8, "2.2 GB": 35}  # layers of 64 MiB


def build(path: Path, layers: int, seed: int = 0) -> Path:
    """The MLP, written tensor by tensor (never whole in memory), weights in `<name>.data`."""
    import onnx
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    data = path.with_name(path.name + ".data")
    nodes: list[onnx.NodeProto] = []
    inits: list[TensorProto] = []
    with open(data, "wb") as f:
        for i in range(layers):
            w = (rng.standard_normal((WIDTH, WIDTH), dtype=np.float32) / np.float32(np.sqrt(WIDTH)))
            t = TensorProto(name=f"w{i}", data_type=TensorProto.FLOAT, dims=[WIDTH, WIDTH],
                            data_location=TensorProto.EXTERNAL)
            for k, v in (("location", data.name), ("offset", str(f.tell())), ("length", str(w.nbytes))):
                e = t.external_data.add()
                e.key, e.value = k, v
            f.write(w.tobytes())
            inits.append(t)
    for i in range(layers):  # (MatMul -> Relu) per layer, the first reading `input`
        x, h = (f"r{i - 1}" if i else "input"), f"m{i}"
        nodes.extend((helper.make_node("MatMul", [x, f"w{i}"], [h]), helper.make_node("Relu", [h], [f"r{i}"])))
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", WIDTH]) for n in ("input", f"r{layers - 1}")]
    model = helper.make_model(helper.make_graph(nodes, "mlp", io[:1], io[1:], inits),
                              opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    path.write_bytes(model.SerializeToString())
    return path


def measure(args: list[str]) -> tuple[int, float, float, str]:
    """(exit code, wall s, peak RSS MB, stdout) of `onnxopt ARGS` in a child of a fresh interpreter."""
    probe = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
             "r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
             "sys.stdout.write(r.stdout); "
             "print('\\n@@', r.returncode, time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    cli = [sys.executable, "-c", "import sys; from onnxopt.cli import main; main(sys.argv[1:])"]
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    out = subprocess.run([sys.executable, "-c", probe, *cli, *args], capture_output=True, text=True, env=env, check=False)
    body, _, tail = out.stdout.rpartition("\n@@")
    code, wall, kb = tail.split()
    return int(code), float(wall), int(kb) / 1024, body


def _ratio(report: dict[str, Any], command: str) -> str:
    if command == "quantize":
        r = (report.get("latency") or {}).get("ratio")  # --mode auto: the ratio; a single mode: its RatioCI dict
        r = r.get("ratio") if isinstance(r, dict) else r
        return f"{r:.3f}" if isinstance(r, float) else "-"
    final = next((s for s in report.get("stages", []) if s["name"] == report.get("final")), None)
    vs = (final or {}).get("vs_original") or {}
    return f"{vs['ratio']:.3f}" if "ratio" in vs else "1.000 (input kept)"


def run(ctx: Context) -> list[Row]:
    """One row per (model size, command)."""
    rows: list[Row] = []
    sizes = {"128 MB": SIZES["128 MB"]} if ctx.quick else SIZES
    runs = str(max(5, ctx.runs // 4))
    commands: dict[str, list[str]] = {
        "inspect": ["inspect", "{m}", "--json"],
        "bench": ["bench", "{m}", "--runs", runs, "--warmup", "2"],
        "compare": ["compare", "{m}", "{m}", "--runs", runs, "--json"],
        "prune": ["prune", "{m}", "-o", "{o}", "--json"],
        "quantize": ["quantize", "{m}", "-o", "{o}", "--mode", "dynamic", "--runs", runs, "--json"],
        "quantize-auto": ["quantize", "{m}", "-o", "{o}", "--mode", "auto", "--runs", runs, "--json"],
        "optimize": ["optimize", "{m}", "-o", "{o}", "--bench-runs", runs, "--json"],
    }
    for label, layers in sizes.items():
        with tempfile.TemporaryDirectory(prefix="onnxopt-scale-") as tmp:
            model = build(Path(tmp) / "mlp.onnx", layers)
            size_mb = (model.stat().st_size + model.with_name("mlp.onnx.data").stat().st_size) / 2**20
            for name, template in commands.items():
                out = Path(tmp) / f"{name}.onnx"
                args = [a.format(m=model, o=out) for a in template]
                ctx.log(f"scale {label}: onnxopt {' '.join(args)}")
                code, wall, peak, stdout = measure(args)
                ratio = "-"
                if code == 0 and name.startswith(("quantize", "optimize")):
                    ratio = _ratio(json.loads(stdout), name.split("-")[0])
                rows.append(Row(section="scale", name=f"{label}: {name}", metrics={
                    "model MB": round(size_mb), "wall s": round(wall, 1),
                    "s / GB": round(wall / size_mb * 1024, 1), "peak RSS MB": round(peak),
                    "RSS / size": round(peak / size_mb, 2), "bound (3x + 1 GB)": "ok" if peak <= 3 * size_mb + 1024 else "OVER",
                    "latency ratio": ratio, "exit": code}))
                for p in Path(tmp).glob(f"{name}.onnx*"):
                    p.unlink()
            time.sleep(0.1)
    return rows
