"""A candidate model against its reference: fidelity on the same inputs, latency side by side, gates.

What `onnxopt compare` measures, as a library call: compare_files() returns a Comparison and
never prints; the gates are checked on measured numbers only.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from onnxopt.core.errors import InvalidInputError
from onnxopt.core.feeds import synthesize_feed
from onnxopt.core.model import load_model
from onnxopt.measure.benchmark import BenchConfig, BenchResult, benchmark, data_feed
from onnxopt.measure.fidelity import (
    FidelityReport,
    check_same_inputs,
    compare_models,
    load_eval_data,
    require_labels,
)
from onnxopt.measure.stats import RatioCI, latency_ratio

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CompareGates:
    """Limits compare checks; None disables a gate."""

    max_accuracy_drop: float | None = None  # percentage points (needs labels)
    min_speedup: float | None = None  # measured speedup at the ratio quantile (needs the latency run)
    min_cosine: float | None = None  # lowest mean cosine similarity over the outputs


@dataclass(frozen=True)
class Comparison:
    """Fidelity of the candidate, the latency of both (when measured) and the gates that failed."""

    fidelity: FidelityReport
    data: str  # where the inputs came from
    results: tuple[BenchResult, ...]  # (reference, candidate), or () without the latency run
    ratio: RatioCI | None  # candidate / reference latency
    failed: tuple[str, ...]  # one message per failed gate


def _failed_gates(
    report: FidelityReport,
    speedup: float | None,
    max_accuracy_drop: float | None,
    min_speedup: float | None,
    min_cosine: float | None,
) -> list[str]:
    """Messages of the gates that failed (empty when every requested gate passed)."""
    failed = []
    drop = report.accuracy_drop
    if max_accuracy_drop is not None and drop is not None and drop > max_accuracy_drop:
        failed.append(f"accuracy drop {drop:.2f} pp > --max-accuracy-drop {max_accuracy_drop:g}")
    if min_cosine is not None and report.min_cosine < min_cosine:
        failed.append(f"min cosine {report.min_cosine:.6f} < --min-cosine {min_cosine:g}")
    if min_speedup is not None and speedup is not None and speedup < min_speedup:
        failed.append(f"speedup {speedup:.3f}x < --min-speedup {min_speedup:g}")
    return failed


def compare_files(
    reference: str | os.PathLike[str],
    candidate: str | os.PathLike[str],
    config: BenchConfig,
    *,
    latency: bool = True,
    data: str | os.PathLike[str] | None = None,
    labels_key: str = "labels",
    samples: int = 64,
    quantile: float = 0.5,
    gates: CompareGates | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Comparison:
    """Run both models on the same inputs (data, else `samples` synthesized with config's seed and
    shapes), then (latency) benchmark them side by side with config, and check the gates."""
    g = gates or CompareGates()
    if samples < 1:
        raise InvalidInputError(f"--samples must be >= 1, got {samples}")
    if g.min_speedup is not None and not latency:
        raise InvalidInputError("--min-speedup needs the latency comparison: drop --no-latency")
    # The graphs only: sessions read each model's weights from its file (onnxopt.core.external).
    ref, cand = load_model(reference, load_external_data=False), load_model(candidate, load_external_data=False)
    check_same_inputs(ref, cand)
    labels = None
    if data is not None:
        feed, labels = load_eval_data(ref, data, labels_key)
        if labels is None and labels_key != "labels":
            raise InvalidInputError(f"{data}: no array named {labels_key!r} (--labels-key)")
        source = str(data)
    else:
        feed = synthesize_feed(ref, batch=samples, overrides=config.shape_overrides, seed=config.seed)
        source = f"synthesized, seed {config.seed}"
    if g.max_accuracy_drop is not None:
        require_labels(labels, labels_key)
    fid = compare_models(reference, candidate, feed, labels)
    results: list[BenchResult] = []
    ratio = None
    if latency:
        bench_feed = data_feed(ref, data, config.batch, labels_key) if data is not None else None
        names = [Path(reference).name, Path(candidate).name]
        results = benchmark([Path(reference), Path(candidate)], config, feed=bench_feed, names=names, progress=progress)
        ratio = latency_ratio(results[1], results[0], quantile=quantile)
    failed = _failed_gates(fid, ratio.speedup if ratio else None, g.max_accuracy_drop, g.min_speedup, g.min_cosine)
    return Comparison(fid, source, tuple(results), ratio, tuple(failed))
