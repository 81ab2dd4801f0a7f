"""Fidelity of quantized candidates against the float model, with the reference outputs computed once."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import ModelProto

from onnxopt.core.feeds import Feed, feed_samples, first_batch
from onnxopt.core.model import all_graphs, batch_axes, graph_outputs, load_model
from onnxopt.measure.fidelity import (
    FidelityReport,
    ModelLike,
    accuracy_of,
    first_samples,
    output_fidelity,
    run_batched,
)


@dataclass(frozen=True)
class Budget:
    """The accuracy budget a quantized model must hold."""

    max_accuracy_drop: float | None = None  # percentage points, needs labels
    min_cosine: float | None = None  # 0: the user turned the cosine floor off

    @property
    def active(self) -> bool:
        """True when some limit is set (a floor set to 0 counts: the user chose no floor)."""
        return self.max_accuracy_drop is not None or self.min_cosine is not None

    @property
    def checks_cosine(self) -> bool:
        """True when a positive cosine floor is set."""
        return self.min_cosine is not None and self.min_cosine > 0

    def holds(self, rep: FidelityReport) -> bool:
        """True when the report is within every limit that is set."""
        if self.max_accuracy_drop is not None:
            drop = rep.accuracy_drop
            if drop is None or drop > self.max_accuracy_drop + 1e-9:
                return False
        return not (self.checks_cosine and rep.min_cosine < (self.min_cosine or 0.0))

    def describe(self) -> str:
        """e.g. 'accuracy drop <= 0.5 pt, cosine >= 0.99'."""
        parts = []
        if self.max_accuracy_drop is not None:
            parts.append(f"accuracy drop <= {self.max_accuracy_drop:g} pt")
        if self.checks_cosine:
            parts.append(f"cosine >= {self.min_cosine:g}")
        return ", ".join(parts) or "none"

    def shortfall(self, rep: FidelityReport) -> float:
        """How far the report is from the budget (0 when it holds; larger is worse), for ranking."""
        s = 0.0
        if self.max_accuracy_drop is not None and rep.accuracy_drop is not None:
            s += max(0.0, rep.accuracy_drop - self.max_accuracy_drop) / 100.0
        if self.checks_cosine:
            s += max(0.0, (self.min_cosine or 0.0) - rep.min_cosine)
        return s


class Evaluator:
    """Scores candidates on a fixed feed against reference outputs computed once (once more, one
    sample per run, for candidates whose numbers depend on the batch: see _batch)."""

    def __init__(self, reference: ModelProto, feed: Feed, labels: np.ndarray | None, source: str, *,
                 run_from: ModelLike | None = None) -> None:
        """run_from: what the reference session loads (e.g. its file, when `reference` is its graph only)."""
        self.feed = feed
        self.labels = labels
        self.source = source
        self._axes = batch_axes(reference)
        self.samples = feed_samples(feed, self._axes)
        self._specs = graph_outputs(reference)
        self._reference: ModelLike = reference if run_from is None else run_from
        self._refs = {BATCH: run_batched(self._reference, feed, BATCH)}
        self._acc_ref = accuracy_of(self._refs[BATCH][0], labels) if labels is not None else None

    def subset(self, n: int) -> Evaluator:
        """An evaluator over the first n samples (reusing the reference outputs)."""
        ev = object.__new__(Evaluator)
        ev._axes = self._axes
        ev.feed = first_batch(self.feed, n, self._axes)
        ev.labels = self.labels[:n] if self.labels is not None else None
        ev.source = self.source
        ev.samples = min(n, self.samples)
        ev._specs = self._specs
        ev._reference = self._reference
        ev._refs = {b: first_samples(r, n, self.samples) for b, r in self._refs.items()}
        ev._acc_ref = accuracy_of(ev._refs[BATCH][0], ev.labels) if ev.labels is not None else None
        return ev

    def score(self, candidate: ModelLike) -> FidelityReport:
        """Fidelity of a candidate (same inputs/outputs as the reference) on the feed; a path is
        loaded by onnxruntime from the file."""
        batch = _batch(candidate)
        if batch not in self._refs:  # both models run alike: outputs without a batch axis line up
            self._refs[batch] = run_batched(self._reference, self.feed, batch)
        outs = run_batched(candidate, self.feed, batch)
        fids = tuple(output_fidelity(s.name, r, c, s) for s, r, c in zip(self._specs, self._refs[batch], outs))
        acc = accuracy_of(outs[0], self.labels) if self.labels is not None else None
        return FidelityReport(fids, self.samples, self._acc_ref, acc)


BATCH = 256  # samples per run when the numbers do not depend on the batch
# Ops whose numbers depend on the batch: a dynamic int8 activation scale spans the whole batch.
BATCH_DEPENDENT_OPS = frozenset({"DynamicQuantizeLinear", "DynamicQuantizeMatMul", "DynamicQuantizeLSTM"})


def _batch(model: ModelLike) -> int:
    """Samples per run for scoring a model: 1 when it has BATCH_DEPENDENT_OPS, so that its fidelity is
    batch 1's (the deployment batch) and not that of a batch of every sample, whose scales differ."""
    proto = model if isinstance(model, ModelProto) else load_model(model, load_external_data=False)
    return 1 if any(n.op_type in BATCH_DEPENDENT_OPS for g in all_graphs(proto.graph) for n in g.node) else BATCH
