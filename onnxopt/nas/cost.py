"""A latency cost model for the search: calibrated once on a CPU, then deterministic.

Latency measured inside a search on a shared machine changes from run to run, and so does
whatever a search picks by it. A cost model predicts the batch-1 latency of a float ONNX
model from its graph alone, so the same candidate always gets the same latency term.

Features of a model (shapes inferred with the batch fixed to `batch`), per node:

  conv_macs       dense Conv:      N * C_out * H_out * W_out * (C_in / group) * k_h * k_w
  depthwise_macs  Conv with group == C_in > 1 (memory-bound kernels, a cost of its own)
  gemm_macs       Gemm / MatMul:   M * K * N (M = batch when the activation's shape is unknown)
  elementwise     output elements of every other node (activations, pools, adds, reshapes)
  nodes           the node count (per-kernel dispatch overhead)

and the prediction is linear, ``latency_ms = intercept + sum_i w_i * feature_i`` with w >= 0.
`calibrate` fits w on (model, measured latency) pairs by least squares on the *relative* error
(each row divided by its latency, so a 0.05 ms model weighs as much as a 2 ms one); a
coefficient that comes out negative is dropped (fixed at 0) and the rest refitted, until all
are >= 0 (an active-set shortcut of non-negative least squares). `CostModel.fit` records the
fit's median and worst relative error on the calibration set. int8 graphs are not modelled
(their kernels differ per CPU): measure them.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import ModelProto

from onnxopt.core.errors import InvalidInputError

FEATURES = ("conv_macs", "depthwise_macs", "gemm_macs", "elementwise", "nodes")


def _static_shapes(model: ModelProto, batch: int) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape with the graph inputs' symbolic dims set to `batch`."""
    m = ModelProto()
    m.CopyFrom(model)
    inits = {i.name for i in m.graph.initializer}
    for vi in m.graph.input:
        if vi.name in inits:
            continue
        for d in vi.type.tensor_type.shape.dim:
            if not d.HasField("dim_value"):
                d.Clear()
                d.dim_value = batch
    m = onnx.shape_inference.infer_shapes(m)
    shapes: dict[str, tuple[int, ...]] = {}
    for vi in list(m.graph.input) + list(m.graph.value_info) + list(m.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[vi.name] = tuple(int(d.dim_value) for d in dims)
    for init in m.graph.initializer:
        shapes[init.name] = tuple(int(d) for d in init.dims)
    return shapes


def _attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def model_features(model: ModelProto, batch: int = 1) -> dict[str, float]:
    """The cost features of a float model (see the module docstring); unknown shapes count 0."""
    shapes = _static_shapes(model, batch)
    f = dict.fromkeys(FEATURES, 0.0)
    for node in model.graph.node:
        f["nodes"] += 1
        out = shapes.get(node.output[0]) if node.output else None
        if node.op_type == "Conv" and out is not None and node.input[1] in shapes:
            w = shapes[node.input[1]]  # [C_out, C_in / group, k...]
            group = int(_attr(node, "group", 1))
            macs = float(np.prod(out)) * float(np.prod(w[1:]))
            cin = shapes.get(node.input[0], (0, 0))[1] if node.input[0] in shapes else 0
            f["depthwise_macs" if group > 1 and group == cin else "conv_macs"] += macs
        elif node.op_type in ("Gemm", "MatMul") and out is not None and node.input[0] in shapes:
            a = shapes[node.input[0]]
            k = a[0] if node.op_type == "Gemm" and int(_attr(node, "transA", 0)) else a[-1]
            f["gemm_macs"] += float(np.prod(out)) * float(k)
        elif node.op_type in ("Gemm", "MatMul") and len(node.input) > 1 and len(shapes.get(node.input[1], ())) == 2:
            # the activation's shape is lost (e.g. after a data-dependent Reshape): `batch` rows times
            # the weight matrix, M * K * N with M = batch
            f["gemm_macs"] += float(batch) * float(np.prod(shapes[node.input[1]]))
        elif out is not None:
            f["elementwise"] += float(np.prod(out))
    return f


@dataclass(frozen=True)
class CostModel:
    """latency_ms = intercept_ms + sum(coef[f] * feature f): a linear, non-negative cost model."""

    coef: Mapping[str, float]
    intercept_ms: float
    batch: int = 1
    threads: int = 1
    cpu: str = ""
    fit: Mapping[str, float] = field(default_factory=dict)  # median/max relative error, samples

    def __post_init__(self) -> None:
        missing = [f for f in FEATURES if f not in self.coef]
        if missing:
            raise InvalidInputError(f"cost model has no coefficient for {', '.join(missing)}: recalibrate it")
        if any(not np.isfinite(v) or v < 0 for v in self.coef.values()) or self.intercept_ms < 0:
            raise InvalidInputError("cost model coefficients must be finite and >= 0: recalibrate it")

    def predict(self, model: ModelProto) -> float:
        """Predicted latency (ms) of a float model at this model's batch and threads."""
        f = model_features(model, self.batch)
        return float(self.intercept_ms + sum(self.coef[k] * f[k] for k in FEATURES))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict."""
        d = asdict(self)
        d["coef"], d["fit"] = dict(self.coef), dict(self.fit)
        return d

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the model as JSON (atomically) and return the path."""
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
            os.replace(tmp, out)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return out

    @staticmethod
    def load(path: str | os.PathLike[str]) -> CostModel:
        """Read a model written by save(); InvalidInputError naming the file when it is not one."""
        try:
            d = json.loads(Path(path).read_text())
            return CostModel(coef={k: float(v) for k, v in d["coef"].items()},
                             intercept_ms=float(d["intercept_ms"]), batch=int(d.get("batch", 1)),
                             threads=int(d.get("threads", 1)), cpu=str(d.get("cpu", "")),
                             fit={k: float(v) for k, v in d.get("fit", {}).items()})
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise InvalidInputError(f"{path}: not a cost model JSON ({e}); recalibrate it") from e


def calibrate(models: Sequence[ModelProto], latencies_ms: Sequence[float], *, batch: int = 1,
              threads: int = 1, cpu: str = "") -> CostModel:
    """Fit a CostModel to measured latencies (relative least squares, coefficients >= 0)."""
    y = np.asarray(latencies_ms, dtype=np.float64)
    if len(models) != len(y) or len(y) < len(FEATURES) + 1:
        raise InvalidInputError(
            f"calibration needs one latency per model and at least {len(FEATURES) + 1} models; "
            f"got {len(models)} models, {len(y)} latencies"
        )
    if not (np.isfinite(y).all() and (y > 0).all()):
        raise InvalidInputError("calibration latencies must be finite and > 0")
    x = np.array([[1.0] + [model_features(m, batch)[k] for k in FEATURES] for m in models])
    scale = np.maximum(x.max(axis=0), 1e-12)  # columns of similar magnitude for lstsq
    a = x / scale / y[:, None]
    active = list(range(x.shape[1]))
    w = np.zeros(x.shape[1])
    while active:
        sol, *_ = np.linalg.lstsq(a[:, active], np.ones(len(y)), rcond=None)
        if (sol >= 0).all():
            w[:] = 0.0
            w[active] = sol
            break
        active = [j for j, v in zip(active, sol) if v >= 0]  # drop the negative ones, refit
    w = w / scale
    rel = np.abs(x @ w - y) / y
    return CostModel(
        coef={k: float(w[i + 1]) for i, k in enumerate(FEATURES)}, intercept_ms=float(w[0]), batch=batch,
        threads=threads, cpu=cpu,
        fit={"median_rel_error": float(np.median(rel)), "max_rel_error": float(rel.max()), "samples": float(len(y))},
    )


def measure_and_calibrate(models: Sequence[ModelProto], *, threads: int = 1, batch: int = 1, runs: int = 200,
                          seed: int = 0, cpu: str = "") -> tuple[CostModel, list[float]]:
    """Benchmark the models interleaved (p50, batch `batch`), fit a CostModel; (model, latencies)."""
    from onnxopt.core.runtime import SessionConfig
    from onnxopt.measure.benchmark import BenchConfig, benchmark

    cfg = BenchConfig(session=SessionConfig(intra_op_threads=threads, allow_spinning=False),
                      warmup=10, runs=runs, batch=batch, seed=seed)
    res = benchmark(list(models), cfg)
    lat = [float(r.stats.p50_ms) for r in res]
    return calibrate(models, lat, batch=batch, threads=threads, cpu=cpu), lat
