"""Fidelity of a candidate model to a reference: output differences, cosine, top-1 agreement, accuracy."""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from onnx import ModelProto

from onnxopt.core.checks import check_data, check_sample_counts
from onnxopt.core.errors import InvalidInputError, MissingLabelsError
from onnxopt.core.feeds import (
    Feed,
    add_batch_axis,
    batches,
    check_feed,
    feed_samples,
    load_npz,
    model_feed_from_npz,
    with_free_batch,
)
from onnxopt.core.model import (
    TensorSpec,
    batch_axes,
    graph_inputs,
    graph_outputs,
    load_model,
    run_batch,
)
from onnxopt.core.runtime import SessionConfig, create_session, run

log = logging.getLogger(__name__)

ModelLike = ModelProto | str | os.PathLike[str]


def _proto(model: ModelLike) -> ModelProto:
    """The model's proto; from a path, the graph only (sessions read the weights from the file)."""
    return model if isinstance(model, ModelProto) else load_model(model, load_external_data=False)


def run_batched(
    model: ModelLike,
    feed: Feed,
    batch_size: int = 256,
    session: SessionConfig | None = None,
) -> list[np.ndarray]:
    """Run a model over a feed in batches; outputs concatenated over batches (axis 0).

    Models whose batch dimension is fixed are run in batches of that size. Inputs without a
    batch axis (scalars, recurrent states: core.model.batch_axes) go whole into every run; when
    such an input has a symbolic dim (a state [2, ?, 128]) the runs are sample by sample.
    """
    if batch_size < 1:
        raise InvalidInputError(f"batch_size must be >= 1, got {batch_size}")
    proto = _proto(model)
    wanted = {s.name for s in graph_inputs(proto)}
    sub = {k: v for k, v in feed.items() if k in wanted}
    check_feed(with_free_batch(proto), sub, "the feed")
    axes = batch_axes(proto)
    fixed = run_batch(proto)
    bs = fixed if fixed is not None else batch_size
    from onnxopt.core.runtime import lean_session

    src = proto if isinstance(model, ModelProto) else Path(model)
    sess = create_session(src, lean_session(proto, session or SessionConfig()))
    chunks: list[list[np.ndarray]] = []
    for b in batches(sub, bs, axes):
        n = feed_samples(b, axes)
        if fixed is not None and n != fixed:
            log.warning("dropping the last %d samples: the model's batch is fixed at %d", n, fixed)
            break
        chunks.append(run(sess, b))
    if not chunks:
        raise InvalidInputError("the feed has no samples to run")
    n_out = len(chunks[0])
    outs = []
    for k in range(n_out):
        parts = [c[k] for c in chunks]
        if len(parts) == 1 or parts[0].ndim == 0:
            outs.append(np.asarray(parts[0]) if len(parts) == 1 else np.stack(parts))
        else:
            outs.append(np.concatenate(parts, axis=0))
    return outs


def first_samples(outputs: list[np.ndarray], n: int, total: int) -> list[np.ndarray]:
    """The outputs of the first n of `total` samples, from run_batched's outputs over all of them.

    Each sample gives out.shape[0] / total rows of an output (1 for batch-first outputs; more for
    a fixed-batch model whose output leads with another axis, e.g. a CRNN's [time, 1, classes]
    chunks concatenated on axis 0); scalars and outputs that do not split evenly stay whole.
    """
    if n >= total:
        return list(outputs)
    out = []
    for r in outputs:
        rows = r.shape[0] if r.ndim else 0
        out.append(r[: rows // total * n] if rows and rows % total == 0 else r)
    return out


def _top1(logits: np.ndarray) -> np.ndarray:
    a = np.asarray(logits)
    if a.ndim == 1:
        return a.astype(np.int64)
    return a.reshape(a.shape[0], -1).argmax(axis=1) if a.ndim > 2 else a.argmax(axis=-1)


def accuracy_of(logits: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy in percent of logits (argmax of the last axis) against integer labels."""
    pred = _top1(logits)
    y = np.asarray(labels)
    y = y.argmax(axis=-1) if y.ndim == 2 and y.shape[1] > 1 else y.reshape(-1)
    n = min(pred.shape[0], y.shape[0])
    if n == 0:
        raise InvalidInputError("no samples to compute accuracy on")
    if pred.shape[0] != y.shape[0]:
        log.warning("accuracy over the first %d samples (%d predictions, %d labels)", n, pred.shape[0], y.shape[0])
    return float((pred[:n] == y[:n]).mean() * 100.0)


def accuracy(model: ModelLike, feed: Feed, labels: np.ndarray, batch_size: int = 256) -> float:
    """Top-1 accuracy in percent (0-100): argmax of the model's first output against labels."""
    outs = run_batched(model, feed, batch_size)
    return accuracy_of(outs[0], labels)


@dataclass(frozen=True)
class OutputFidelity:
    """How close one candidate output is to the reference's."""

    name: str
    max_abs: float
    mean_abs: float
    cosine: float  # mean over samples of the cosine similarity of the flattened per-sample outputs
    top1_agreement: float | None  # percent (0-100) of samples with the same argmax; classifier-like outputs
    worst_cosine: float  # the lowest per-sample cosine: what the fidelity floor holds


@dataclass(frozen=True)
class FidelityReport:
    """Per-output fidelity and (with labels) the accuracy of both models."""

    outputs: tuple[OutputFidelity, ...]
    samples: int
    accuracy_reference: float | None  # percent
    accuracy_candidate: float | None  # percent

    @property
    def accuracy_drop(self) -> float | None:
        """Percentage points lost: reference accuracy - candidate accuracy."""
        if self.accuracy_reference is None or self.accuracy_candidate is None:
            return None
        return self.accuracy_reference - self.accuracy_candidate

    @property
    def min_cosine(self) -> float:
        """The lowest per-sample cosine similarity over the outputs and samples: the number every
        fidelity floor holds (each sample, not their mean, must reach it)."""
        return min((o.worst_cosine for o in self.outputs), default=1.0)

    @property
    def max_abs(self) -> float:
        """The largest absolute difference over the outputs."""
        return max((o.max_abs for o in self.outputs), default=0.0)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict (with accuracy_drop and min_cosine)."""
        return {
            "outputs": [asdict(o) for o in self.outputs],
            "samples": self.samples,
            "accuracy_reference": self.accuracy_reference,
            "accuracy_candidate": self.accuracy_candidate,
            "accuracy_drop": self.accuracy_drop,
            "min_cosine": self.min_cosine,
        }


def _is_classifier_like(spec: TensorSpec | None, arr: np.ndarray) -> bool:
    return (
        arr.ndim == 2
        and arr.shape[1] > 1
        and np.issubdtype(arr.dtype, np.floating)
        and (spec is None or spec.dtype in ("float", "float16", "double", "bfloat16"))
    )


def output_fidelity(name: str, ref: np.ndarray, cand: np.ndarray, spec: TensorSpec | None = None) -> OutputFidelity:
    """Max/mean absolute difference, mean and lowest per-sample cosine and top-1 agreement of two arrays."""
    if ref.shape != cand.shape:
        raise InvalidInputError(
            f"output {name!r}: reference shape {tuple(ref.shape)} differs from candidate shape {tuple(cand.shape)}"
        )
    r = np.asarray(ref, dtype=np.float64)
    c = np.asarray(cand, dtype=np.float64)
    if r.size == 0:
        return OutputFidelity(name, 0.0, 0.0, 1.0, None, 1.0)
    diff = np.abs(r - c)
    rows_r = r.reshape(r.shape[0], -1) if r.ndim >= 1 else r.reshape(1, 1)
    rows_c = c.reshape(rows_r.shape)
    dot = np.einsum("ij,ij->i", rows_r, rows_c)
    nr = np.linalg.norm(rows_r, axis=1)
    nc = np.linalg.norm(rows_c, axis=1)
    both_zero = (nr == 0) & (nc == 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = np.where(both_zero, 1.0, np.where((nr == 0) | (nc == 0), 0.0, dot / (nr * nc)))
    cos = np.clip(cos, -1.0, 1.0)
    top1 = None
    if _is_classifier_like(spec, ref):
        top1 = float((ref.argmax(axis=1) == cand.argmax(axis=1)).mean() * 100.0)
    return OutputFidelity(
        name=name,
        max_abs=float(diff.max()),
        mean_abs=float(diff.mean()),
        cosine=float(cos.mean()),
        top1_agreement=top1,
        worst_cosine=float(cos.min()),
    )


def check_same_inputs(reference: ModelProto, candidate: ModelProto) -> None:
    """Raise InvalidInputError unless both models take the same inputs (names, dtypes, ranks)."""
    ri = {s.name: s for s in graph_inputs(reference)}
    ci = {s.name: s for s in graph_inputs(candidate)}

    def fmt(specs: dict[str, TensorSpec]) -> str:
        return ", ".join(
            f"{s.name}:{s.dtype}[{','.join('?' if d is None else str(d) for d in s.shape)}]"
            for s in specs.values()
        )

    if set(ri) != set(ci):
        raise InvalidInputError(
            f"the models take different inputs: reference has {fmt(ri)}; candidate has {fmt(ci)}"
        )
    for name, rs in ri.items():
        cs = ci[name]
        fixed_clash = any(
            isinstance(a, int) and isinstance(b, int) and a > 0 and b > 0 and a != b
            for a, b in zip(rs.shape, cs.shape)
        )
        if rs.dtype != cs.dtype or len(rs.shape) != len(cs.shape) or fixed_clash:
            raise InvalidInputError(
                f"the models take different inputs: reference has {fmt({name: rs})}; candidate has {fmt({name: cs})}"
            )


def compare_models(
    reference: ModelLike,
    candidate: ModelLike,
    feed: Feed,
    labels: np.ndarray | None = None,
    batch_size: int = 256,
) -> FidelityReport:
    """Run both models on the same feed and report per-output fidelity (and accuracy with labels)."""
    ref = _proto(reference)
    cand = _proto(candidate)
    check_same_inputs(ref, cand)
    ref_out_specs = graph_outputs(ref)
    cand_out_specs = graph_outputs(cand)
    if len(ref_out_specs) != len(cand_out_specs):
        raise InvalidInputError(
            f"the models have different outputs: reference has {len(ref_out_specs)} "
            f"({', '.join(s.name for s in ref_out_specs)}), candidate has {len(cand_out_specs)} "
            f"({', '.join(s.name for s in cand_out_specs)})"
        )
    r_outs = run_batched(reference, feed, batch_size)
    c_outs = run_batched(candidate, feed, batch_size)
    # Pair outputs by name when the names agree, else by position.
    c_index = {s.name: i for i, s in enumerate(cand_out_specs)}
    same_names = all(s.name in c_index for s in ref_out_specs)
    fids = []
    for i, spec in enumerate(ref_out_specs):
        j = c_index[spec.name] if same_names else i
        fids.append(output_fidelity(spec.name, r_outs[i], c_outs[j], spec))
    samples = int(r_outs[0].shape[0]) if r_outs and r_outs[0].ndim else 1
    acc_r = acc_c = None
    if labels is not None:
        acc_r = accuracy_of(r_outs[0], labels)
        acc_c = accuracy_of(c_outs[c_index[ref_out_specs[0].name] if same_names else 0], labels)
    return FidelityReport(tuple(fids), samples, acc_r, acc_c)


def load_eval_data(
    model: ModelProto, path: str | os.PathLike[str], labels_key: str = "labels"
) -> tuple[Feed, np.ndarray | None]:
    """Labelled validation data: the model's inputs and (if present under labels_key) the labels
    from an .npz file. Any number of samples fits a model with a fixed batch (run in chunks of it);
    an array one rank short of its input is one sample."""
    data = load_npz(path)
    labels = data.pop(labels_key, None)
    check_data(data, str(path))  # strings, NaN, ...: refused before they reach the model
    labels = np.atleast_1d(labels) if labels is not None else None
    feed = model_feed_from_npz(with_free_batch(model), add_batch_axis(model, data), source=str(path))
    check_sample_counts(model, feed, str(path))
    if labels is not None:
        n = feed_samples(feed, batch_axes(model))
        if labels.ndim == 0 or labels.shape[0] != n:
            raise InvalidInputError(
                f"{path}: {labels_key!r} has {labels.size} entries but the inputs have {n} samples"
            )
        labels = check_data(feed, f"{path}: {labels_key!r}", labels=labels, classes=output_classes(model))
    return feed, labels


def output_classes(model: ModelProto) -> int | None:
    """The number of classes of the first output (its static non-batch dims), or None when unknown."""
    outs = graph_outputs(model)
    dims = outs[0].shape[1:] if outs else ()
    if not dims or not all(isinstance(d, int) and d > 0 for d in dims):
        return None
    return int(np.prod([int(d) for d in dims if isinstance(d, int)]))


def require_labels(labels: np.ndarray | None, labels_key: str = "labels") -> None:
    """Raise MissingLabelsError when an accuracy gate (--max-accuracy-drop) has no labels to measure on."""
    if labels is None:
        raise MissingLabelsError(
            f"--max-accuracy-drop needs labelled data (accuracy needs labels): pass --data val.npz with a "
            f"{labels_key!r} array, or use --min-cosine without labels"
        )
