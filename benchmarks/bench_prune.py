"""Pruning: channel pruning speed and size, magnitude pruning + sparse storage file size, digits accuracy."""

from __future__ import annotations

import tempfile
from pathlib import Path

import onnx
from common import Context, Row, rows_vs_reference

from onnxopt.core.model import load_model
from onnxopt.measure.fidelity import accuracy, load_eval_data
from onnxopt.pruning.channels.prune import ChannelConfig, prune_channels
from onnxopt.pruning.magnitude import MagnitudeConfig, prune_magnitude
from onnxopt.pruning.sparse_storage import compress_initializers, model_sizes

ORDER = 30
TITLE = "pruning: channels (speed), magnitude + sparse storage (size), digits accuracy"
SECTION = "prune"


def _quantize_dynamic(model: onnx.ModelProto, workdir: Path, name: str) -> onnx.ModelProto:
    """onnxruntime quantize_dynamic (int8 weights) of an in-memory model."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, dst = workdir / f"{name}.onnx", workdir / f"{name}.int8.onnx"
    onnx.save(model, str(src))
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    return onnx.load(str(dst))


def channel_rows(ctx: Context) -> list[Row]:
    """Channel ratio 0.5 on the large model: params, MACs and latency vs the dense model."""
    large = load_model(ctx.large_model())
    pruned = prune_channels(large, ChannelConfig(ratio=0.5))
    mag = prune_magnitude(large, MagnitudeConfig(sparsity=0.5, sparse_storage=True))
    rep = pruned.report
    ctx.log(f"channels 0.5: params x{rep['params_ratio']:.3f}, MACs x{rep['macs_ratio']:.3f}")
    results = ctx.bench([large, pruned.model, mag.model],
                        ["resnet18 fp32", "resnet18 channels 0.5", "resnet18 magnitude 50% (sparse storage)"])
    rows = rows_vs_reference(SECTION, results, reference=results[0], label_threads=False)
    ratio = rows[1].ratio.ratio if rows[1].ratio else float("nan")
    rows[1] = Row(
        section=SECTION, name=rows[1].name,
        metrics={**rows[1].metrics, "params ratio": rep["params_ratio"], "MACs ratio": rep["macs_ratio"]},
        ratio=rows[1].ratio, reference=rows[1].reference,
        note=f"target <= 0.65x: {'met' if ratio <= 0.65 else 'MISSED'}; params/MACs ~0.5x: "
             f"{'met' if max(rep['params_ratio'], rep['macs_ratio']) <= 0.55 else 'MISSED'}",
    )
    rows[2] = Row(section=SECTION, name=rows[2].name, metrics=rows[2].metrics, ratio=rows[2].ratio,
                  reference=rows[2].reference, note="zeros: no speedup (expected)")
    return rows


def size_rows(ctx: Context) -> list[Row]:
    """File and gzip sizes: magnitude 50% + sparse storage, and with int8 dynamic quantization."""
    large = load_model(ctx.large_model())
    dense = model_sizes(large)
    pruned = prune_magnitude(large, MagnitudeConfig(sparsity=0.5)).model
    sparse, _ = compress_initializers(pruned, gzip=False)
    with tempfile.TemporaryDirectory() as d:
        q_dense = _quantize_dynamic(large, Path(d), "dense")
        q_pruned = _quantize_dynamic(pruned, Path(d), "pruned")
    q_sparse, _ = compress_initializers(q_pruned, gzip=False)
    variants = [
        ("magnitude 50%, dense storage", pruned, None),
        ("magnitude 50% + sparse storage", sparse, 0.6),
        ("int8 dynamic (no pruning)", q_dense, None),
        ("magnitude 50% + int8 dynamic + sparse storage", q_sparse, 0.2),
    ]
    rows = [Row(section=SECTION, name="resnet18 fp32 file", is_reference=True,
                metrics={"size MiB": dense.size / 2**20, "gzip MiB": (dense.gzip or 0) / 2**20})]
    for name, model, target in variants:
        s = model_sizes(model)
        size_ratio, gzip_ratio = s.size / dense.size, (s.gzip or 0) / (dense.gzip or 1)
        note = ""
        if target is not None:
            note = f"target <= {target}x: {'met' if size_ratio <= target else 'MISSED'}"
        ctx.log(f"{name}: file x{size_ratio:.3f}, gzip x{gzip_ratio:.3f}")
        rows.append(Row(section=SECTION, name=name, note=note, metrics={
            "size MiB": s.size / 2**20, "file ratio": size_ratio,
            "gzip MiB": (s.gzip or 0) / 2**20, "gzip ratio": gzip_ratio}))
    return rows


def digits_rows(ctx: Context) -> list[Row]:
    """Validation accuracy of the digits CNN after pruning, without fine-tuning."""
    model = load_model(ctx.digits_model)
    feed, labels = load_eval_data(model, ctx.digits_val)
    assert labels is not None
    base = accuracy(model, feed, labels)
    first_conv = next(n.name for n in model.graph.node if n.op_type == "Conv")
    rows = [Row(section=SECTION, name="digits CNN", metrics={"accuracy %": base}, is_reference=True)]
    variants = [
        ("digits magnitude 50%", prune_magnitude(model, MagnitudeConfig(sparsity=0.5)).model),
        ("digits magnitude 50% (global)", prune_magnitude(model, MagnitudeConfig(sparsity=0.5, global_=True)).model),
        ("digits channels 30%", prune_channels(model, ChannelConfig(ratio=0.3)).model),
        ("digits channels 30% (round to 8)", prune_channels(model, ChannelConfig(ratio=0.3, round_to=8)).model),
        ("digits channels 30% (first conv skipped)",
         prune_channels(model, ChannelConfig(ratio=0.3, skip=(first_conv,))).model),
    ]
    for name, pruned in variants:
        acc = accuracy(pruned, feed, labels)
        rows.append(Row(section=SECTION, name=name, metrics={"accuracy %": acc, "drop pp": base - acc},
                        note="no fine-tuning"))
    return rows


def _torch_chain(model: onnx.ModelProto) -> object:
    """An nn.Sequential equal to a plain Conv/Relu/MaxPool/Flatten/Gemm chain ONNX model, weights copied."""
    from onnx import helper, numpy_helper

    from onnxopt.frameworks import require_torch

    torch = require_torch()
    nn = torch.nn
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    layers: list = []
    for n in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        if n.op_type == "Conv":
            w, b = inits[n.input[1]], inits[n.input[2]]
            conv = nn.Conv2d(w.shape[1], w.shape[0], tuple(w.shape[2:]), padding=tuple(attrs["pads"][:2]))
            conv.weight.data, conv.bias.data = torch.tensor(w), torch.tensor(b)
            layers.append(conv)
        elif n.op_type == "Gemm":
            w, b = inits[n.input[1]], inits[n.input[2]]
            lin = nn.Linear(w.shape[1], w.shape[0])
            lin.weight.data, lin.bias.data = torch.tensor(w), torch.tensor(b)
            layers.append(lin)
        elif n.op_type == "Relu":
            layers.append(nn.ReLU())
        elif n.op_type == "MaxPool":
            layers.append(nn.MaxPool2d(tuple(attrs["kernel_shape"]), tuple(attrs["strides"])))
        elif n.op_type == "Flatten":
            layers.append(nn.Flatten())
        else:
            raise ValueError(f"unexpected op {n.op_type}")
    return nn.Sequential(*layers)


def recovery_rows(ctx: Context) -> list[Row]:
    """digits channels 30%, then distilled from the original ONNX model in PyTorch (weights kept)."""
    import numpy as np

    from onnxopt.core.feeds import load_npz
    from onnxopt.distillation.core import DistillConfig

    try:
        from onnxopt.frameworks.torch_distill import distill, predict
    except Exception as e:  # noqa: BLE001 - torch extra missing: no row
        ctx.log(f"skipping fine-tune row: {e}")
        return []
    model = load_model(ctx.digits_model)
    pruned = prune_channels(model, ChannelConfig(ratio=0.3)).model
    student = _torch_chain(pruned)
    train, val = load_npz(ctx.digits_train), load_npz(ctx.digits_val)
    x, y = train["input"].astype(np.float32), train["labels"]
    order = np.random.default_rng(0).permutation(len(y))
    hold, fit = order[: len(y) // 5], order[len(y) // 5 :]
    feed, labels = load_eval_data(model, ctx.digits_val)
    assert labels is not None
    before = accuracy(pruned, feed, labels)
    from onnxopt.measure.fidelity import run_batched

    same = np.abs(predict(student, feed["input"]) - run_batched(pruned, feed)[0]).max()
    if same > 1e-3:
        raise RuntimeError(f"PyTorch copy of the pruned model differs from it by {same}")
    student, hist = distill(model, student, (x[fit], y[fit]), (x[hold], y[hold]),
                            DistillConfig(epochs=10, lr=1e-3, patience=5, seed=0, threads=1))
    after = float((predict(student, val["input"].astype(np.float32)).argmax(1) == val["labels"]).mean() * 100)
    base = accuracy(model, feed, labels)
    return [Row(section=SECTION, name="digits channels 30% + distillation (10 epochs)",
                metrics={"accuracy %": after, "drop pp": base - after},
                note=f"{before:.1f}% before fine-tuning; early stopping on a train split, epoch {hist.best_epoch}")]


def run(ctx: Context) -> list[Row]:
    """All pruning measurements of `make bench`."""
    return channel_rows(ctx) + size_rows(ctx) + digits_rows(ctx) + recovery_rows(ctx)
