"""The shipped search evaluators: build a PyTorch or Keras candidate, train briefly (optionally
distil), export, and measure accuracy and latency in onnxruntime.

``TorchEvaluator(train, val, config)`` (or ``KerasEvaluator``, same interface) is a picklable
fitness callable for :func:`onnxopt.nas.engine.search`: ``evaluator(genome)`` returns
``{"accuracy": percent on the validation split measured in onnxruntime, "latency_ms": p50
latency from the benchmark engine (or predicted by a cost model: EvalConfig.latency_model), "size_bytes", "params", "train_s", "model_path"}``. The candidate's ONNX file is kept in the
evaluator's work directory so the chosen model can be copied out without retraining.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from onnxopt.core.checks import check_labels
from onnxopt.core.errors import InvalidInputError
from onnxopt.core.feeds import load_labelled_npz

Data = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class EvalConfig:
    """How each candidate is trained and measured."""

    epochs: int = 15
    batch_size: int = 64
    lr: float = 5e-3
    weight_decay: float = 1e-4
    alpha: float = 0.7  # weight of the distillation loss when a teacher is given
    temperature: float = 4.0
    seed: int = 0
    threads: int = 1  # torch / TensorFlow threads while training (per worker)
    latency_threads: int = 1  # onnxruntime intra-op threads when measuring latency
    bench_runs: int = 100
    bench_warmup: int = 10
    batch: int = 1  # batch size of the latency measurement
    opset: int = 17
    train_limit: int = 0  # > 0: train on the first N samples only (a cheaper proxy)
    # a CostModel JSON (onnxopt.nas.cost): latency_ms is predicted from the graph, not measured,
    # so the same candidate always gets the same latency (reproducible searches on a busy machine)
    latency_model: str = ""

    def __post_init__(self) -> None:
        checks = [
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.lr > 0, f"lr must be > 0, got {self.lr}: use e.g. 0.005"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (0.0 <= self.alpha <= 1.0, f"alpha must be in [0, 1], got {self.alpha}"),
            (self.temperature > 0, f"temperature must be > 0, got {self.temperature}"),
            (self.threads >= 1, f"threads must be >= 1, got {self.threads}"),
            (self.latency_threads >= 1, f"latency_threads must be >= 1, got {self.latency_threads}"),
            (self.bench_runs >= 5, f"bench_runs must be >= 5, got {self.bench_runs}"),
            (self.bench_warmup >= 0, f"bench_warmup must be >= 0, got {self.bench_warmup}"),
            (self.batch >= 1, f"batch must be >= 1, got {self.batch}"),
            (11 <= self.opset <= 23, f"opset must be in 11..23, got {self.opset}"),
            (self.train_limit >= 0, f"train_limit must be >= 0, got {self.train_limit}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise InvalidInputError(msg)

    @staticmethod
    def from_settings(settings: Mapping[str, Any], **overrides: Any) -> EvalConfig:
        """A config from a space's [train] table, then non-None overrides (CLI options)."""
        known = {f.name for f in fields(EvalConfig)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise InvalidInputError(
                f"[train] has unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known))}"
            )
        merged = dict(settings) | {k: v for k, v in overrides.items() if v is not None}
        try:
            return EvalConfig(**merged)
        except TypeError as e:
            raise InvalidInputError(f"[train]: {e}") from e

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict."""
        return asdict(self)


def load_split(path: str | os.PathLike[str]) -> Data:
    """(inputs float32 [N, C, H, W], labels int64) from an .npz with an input and a `labels` array."""
    x, y = load_labelled_npz(path)
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 4:
        raise InvalidInputError(f"{path}: input must be images [N, C, H, W]; got shape {x.shape}")
    if len(x) == 0:
        raise InvalidInputError(f"{path}: no samples")
    return x, check_labels(y, len(x), str(path))


def genome_id(genome: Mapping[str, Any]) -> str:
    """A short stable id of a genome (file names of candidate models)."""
    text = json.dumps({k: genome[k] for k in sorted(genome)}, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


class _Evaluator:
    """Shared part of the evaluators: data checks, training config, measurement, saving the candidate.

    Subclasses give ``build`` (untrained model), ``train_module`` and ``export`` (ModelProto).
    """

    framework = ""

    def __init__(
        self,
        train: Data,
        val: Data,
        config: EvalConfig = EvalConfig(),
        *,
        teacher_logits: np.ndarray | None = None,
        workdir: str | os.PathLike[str] | None = None,
        num_classes: int | None = None,
    ) -> None:
        x, y = train
        xv, yv = val
        if x.shape[1:] != xv.shape[1:]:
            raise InvalidInputError(
                f"training inputs {x.shape[1:]} and validation inputs {xv.shape[1:]} differ in shape"
            )
        if config.train_limit:
            x, y = x[: config.train_limit], y[: config.train_limit]
            if teacher_logits is not None:
                teacher_logits = teacher_logits[: config.train_limit]
        if teacher_logits is not None and len(teacher_logits) != len(x):
            raise InvalidInputError(f"{len(teacher_logits)} teacher logits for {len(x)} training samples")
        self.train = (x, y)
        self.val = (xv, yv)
        self.config = config
        self.teacher_logits = teacher_logits
        self.workdir = str(workdir) if workdir is not None else None
        classes = int(max(y.max(), yv.max())) + 1
        if teacher_logits is not None:
            classes = max(classes, int(teacher_logits.shape[1]))
        self.num_classes = num_classes or classes

    def build(self, genome: Mapping[str, Any]) -> Any:
        """The untrained model of a genome (framework-specific)."""
        raise TypeError(f"{type(self).__name__} must define build()")

    def train_module(self, genome: Mapping[str, Any]) -> Any:
        """Build and train the candidate (framework-specific)."""
        raise TypeError(f"{type(self).__name__} must define train_module()")

    def export(self, module: Any) -> Any:
        """ONNX ModelProto of a trained model (framework-specific)."""
        raise TypeError(f"{type(self).__name__} must define export()")

    def distill_config(self) -> Any:
        """The DistillConfig of candidate training (labels only unless teacher logits are given)."""
        from onnxopt.distillation.core import DistillConfig

        return DistillConfig(
            temperature=self.config.temperature,
            alpha=self.config.alpha if self.teacher_logits is not None else 0.0,
            epochs=self.config.epochs,
            batch_size=self.config.batch_size,
            lr=self.config.lr,
            weight_decay=self.config.weight_decay,
            patience=0,
            seed=self.config.seed,
        )

    def measure(self, model: Any) -> dict[str, float]:
        """Accuracy on the validation split and p50 latency, both in onnxruntime."""
        from onnxopt.core.model import initializer_stats
        from onnxopt.core.runtime import SessionConfig
        from onnxopt.measure.benchmark import BenchConfig, benchmark
        from onnxopt.measure.fidelity import accuracy

        acc = accuracy(model, {"input": self.val[0]}, self.val[1])
        if self.config.latency_model:
            from onnxopt.nas.cost import CostModel

            params, _ = initializer_stats(model)
            est = CostModel.load(self.config.latency_model).predict(model)
            return {"accuracy": float(acc), "latency_ms": est, "latency_min_ms": est,
                    "size_bytes": float(model.ByteSize()), "params": float(params)}
        bench = BenchConfig(
            session=SessionConfig(intra_op_threads=self.config.latency_threads, allow_spinning=False),
            warmup=self.config.bench_warmup,
            runs=self.config.bench_runs,
            batch=self.config.batch,
            seed=self.config.seed,
        )
        res = benchmark([model], bench)[0]
        params, _ = initializer_stats(model)
        return {
            "accuracy": float(acc),
            "latency_ms": float(res.stats.p50_ms),
            "latency_min_ms": float(res.stats.min_ms),
            "size_bytes": float(model.ByteSize()),
            "params": float(params),
        }

    def __call__(self, genome: Mapping[str, Any]) -> dict[str, Any]:
        """Train, export and measure one candidate."""
        start = time.perf_counter()
        module = self.train_module(genome)
        train_s = time.perf_counter() - start
        model = self.export(module)
        # opset imports no node uses depend on what the process loaded before (e.g. onnxruntime-
        # extensions' domains): dropped, so a candidate's bytes depend on its genome and seed only
        from onnxopt.core.model import prune_opset_imports

        prune_opset_imports(model)
        metrics: dict[str, Any] = self.measure(model)
        metrics["train_s"] = round(train_s, 3)
        if self.workdir is not None:
            from onnxopt.core.model import save_model

            path = Path(self.workdir) / f"{genome_id(genome)}.onnx"
            save_model(model, path)
            metrics["model_path"] = str(path)
        return metrics


class TorchEvaluator(_Evaluator):
    """Fitness callable: genome -> accuracy (onnxruntime, %), latency_ms (p50), size, params (PyTorch)."""

    framework = "torch"

    def build(self, genome: Mapping[str, Any]) -> Any:
        """The untrained torch module of a genome."""
        from onnxopt.frameworks.torch_genome import build

        return build(genome, self.train[0].shape[1:], self.num_classes, seed=self.config.seed)

    def train_module(self, genome: Mapping[str, Any]) -> Any:
        """Build and train (or distil) the candidate; returns the trained module in eval mode."""
        from onnxopt.frameworks import require_torch
        from onnxopt.frameworks.torch_distill import distill

        torch = require_torch()
        torch.set_num_threads(self.config.threads)
        module = self.build(genome)
        module, _ = distill(None, module, self.train, self.val, self.distill_config(),
                            teacher_logits=self.teacher_logits)
        return module

    def export(self, module: Any) -> Any:
        """ONNX ModelProto of a trained module (TorchScript exporter, dynamic batch, parity-checked)."""
        from onnxopt.conversion.api import from_torch

        example = (self.val[0][:1],)
        res = from_torch(
            module, example, opset=self.config.opset, exporter="torchscript",
            input_names=["input"], output_names=["logits"],
        )
        return res.model


class KerasEvaluator(_Evaluator):
    """Fitness callable: genome -> accuracy (onnxruntime, %), latency_ms (p50), size, params (Keras 3)."""

    framework = "keras"

    def build(self, genome: Mapping[str, Any]) -> Any:
        """The untrained keras.Model of a genome (NCHW input, logits output)."""
        from onnxopt.frameworks.keras_genome import build

        return build(genome, self.train[0].shape[1:], self.num_classes, seed=self.config.seed)

    def train_module(self, genome: Mapping[str, Any]) -> Any:
        """Build and train (or distil) the candidate with keras_distill; returns the trained model."""
        from onnxopt.frameworks.keras_distill import distill
        from onnxopt.frameworks.keras_genome import limit_threads

        limit_threads(self.config.threads)
        model = self.build(genome)
        model, _ = distill(None, model, self.train, self.val, self.distill_config(),
                           teacher_logits=self.teacher_logits)
        return model

    def export(self, module: Any) -> Any:
        """ONNX ModelProto of a trained Keras model (dynamic batch, simplified, parity-checked)."""
        from onnxopt.conversion.api import from_keras

        res = from_keras(
            module, example_inputs=(self.val[0][:1],), opset=self.config.opset, simplify=True,
            input_names=["input"], output_names=["logits"], seed=self.config.seed,
        )
        return res.model


EVALUATORS: dict[str, type[_Evaluator]] = {"torch": TorchEvaluator, "keras": KerasEvaluator}


def evaluator_for(framework: str) -> type[_Evaluator]:
    """The evaluator class of a framework name (torch | keras)."""
    try:
        return EVALUATORS[framework]
    except KeyError:
        raise InvalidInputError(
            f"framework {framework!r} unknown; choose one of {', '.join(EVALUATORS)}"
        ) from None


def teacher_logits_for(teacher: str | os.PathLike[str], x: np.ndarray) -> np.ndarray:
    """Logits of an ONNX teacher on the training inputs, computed once in onnxruntime."""
    from onnxopt.distillation.teacher import teacher_outputs

    return teacher_outputs(teacher, x).logits


def remeasure(
    models: Mapping[str, str | os.PathLike[str]],
    *,
    latency_threads: int = 1,
    runs: int = 300,
    batch: int = 1,
    seed: int = 0,
    reference: str | None = None,
) -> dict[str, dict[str, Any]]:
    """Latency of several models measured together, interleaved (quiet machine, same settings).

    Returns {name: {"p50_ms", "mean_ms", "min_ms", "cv"} (+ "speedup", "ci_low", "ci_high",
    "significant" against `reference`, one of the names)}.
    """
    from onnxopt.core.runtime import SessionConfig
    from onnxopt.measure.benchmark import BenchConfig, benchmark
    from onnxopt.measure.stats import latency_ratio

    names = list(models)
    cfg = BenchConfig(
        session=SessionConfig(intra_op_threads=latency_threads, allow_spinning=False),
        warmup=20, runs=runs, batch=batch, seed=seed,
    )
    results = benchmark([str(models[n]) for n in names], cfg, names=names)
    out: dict[str, dict[str, Any]] = {}
    ref = results[names.index(reference)] if reference is not None else None
    for r in results:
        d: dict[str, Any] = {
            "p50_ms": r.stats.p50_ms, "mean_ms": r.stats.mean_ms, "min_ms": r.stats.min_ms, "cv": r.stats.cv,
        }
        if ref is not None and r is not ref:
            ci = latency_ratio(r, ref)
            d |= {"speedup": ci.speedup, "ci_low": 1 / ci.high, "ci_high": 1 / ci.low, "significant": ci.significant}
        out[r.name] = d
    return out
