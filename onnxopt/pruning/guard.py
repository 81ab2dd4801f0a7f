"""The fidelity floor of pruning: measure a pruned model against its input, lower the amount until it holds.

Pruning changes the answers. After pruning, every sample of a feed (the user's data, else
seeded synthetic samples from onnxopt.pruning.probe: noise, and image-like fields for image
models) is run through both models with onnxruntime, one sample at a time; per sample and per
output the cosine of the flattened outputs is taken (float64, over the entries the input model
gives finite values for). The floor holds when the minimum over them is >= `min_cosine` and,
with labels, the top-1 accuracy drop is <= `max_accuracy_drop` percentage points.

Synthetic inputs are a weak probe: noise saturates classifier heads and fires no detection, so
a pruned model can look fine on it and not on real inputs. Measured on 11 real models (the
scripts/realmodels corpus, 8 samples each), 1 - cosine on real-looking inputs was 3x to 200x
what it was on noise at the same sparsity. Without data the floor is therefore
checked `synthetic_margin` (100) times tighter on 1 - cosine: 0.99 becomes 0.9999.

When the requested amount (sparsity, threshold or channel ratio) misses the floor, it is
repaired by bisection between 0 (the input model, which always holds) and the requested value:
`steps` deterministic halvings, keeping the largest tried value that holds and changes the
model. When none does, GateFailedError (exit 3) says so and nothing is returned to write.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from onnx import ModelProto

from onnxopt.core import progress
from onnxopt.core.errors import GateFailedError, InvalidInputError, OnnxoptError, short_message
from onnxopt.core.feeds import Feed, batches, feed_samples
from onnxopt.core.model import batch_axes, fixed_batch, graph_inputs
from onnxopt.core.runtime import SessionConfig, create_session, lean_session
from onnxopt.measure.fidelity import accuracy_of
from onnxopt.pruning.probe import synthetic_feed
from onnxopt.pruning.result import PruneResult

log = logging.getLogger(__name__)

DEFAULT_MIN_COSINE = 0.99
DEFAULT_MAX_ACCURACY_DROP = 0.5  # percentage points; applies only when labels are given
SYNTHETIC_MARGIN = 100.0  # without data, 1 - cosine must be this many times smaller (see the module doc)

PruneFn = Callable[[ModelProto, Any], PruneResult]


@dataclass(frozen=True)
class FidelityFloor:
    """How close a pruned model must stay to its input, and how the check is run.

    min_cosine: lowest per-sample output cosine allowed (0 turns the cosine check off).
    max_accuracy_drop: largest top-1 accuracy drop in points, used only with labels (None: off).
    samples/seed/shape_overrides: the synthetic feed used when no data is given (`samples` noise
    samples, and as many image-like ones for an image model).
    synthetic_margin: on synthetic inputs 1 - cosine must be this many times smaller (module doc).
    steps: bisection steps of the repair (the smallest value tried is requested / 2**steps).
    """

    min_cosine: float = DEFAULT_MIN_COSINE
    max_accuracy_drop: float | None = DEFAULT_MAX_ACCURACY_DROP
    samples: int = 8
    seed: int = 0
    synthetic_margin: float = SYNTHETIC_MARGIN
    steps: int = 6
    shape_overrides: Mapping[str, tuple[int, ...]] | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_cosine <= 1.0:
            raise InvalidInputError(f"--min-cosine must be in [0, 1] (0 turns the floor off); got {self.min_cosine}")
        if self.max_accuracy_drop is not None and not self.max_accuracy_drop >= 0.0:
            raise InvalidInputError(f"--max-accuracy-drop must be >= 0 percentage points; got {self.max_accuracy_drop}")
        if self.samples < 1 or self.steps < 1 or not self.synthetic_margin >= 1.0:
            raise InvalidInputError("samples, steps and synthetic_margin of a fidelity floor must be >= 1")

    def cosine_floor(self, synthetic: bool) -> float:
        """The cosine the measured samples must reach: min_cosine, tightened on synthetic inputs."""
        return 1.0 - (1.0 - self.min_cosine) / self.synthetic_margin if synthetic and self.min_cosine > 0 else self.min_cosine

    def active(self, labelled: bool) -> bool:
        """Whether anything is checked: a cosine floor, or an accuracy floor with labels."""
        return self.min_cosine > 0.0 or (labelled and self.max_accuracy_drop is not None)


@dataclass(frozen=True)
class _Check:
    """One measured candidate."""

    value: float
    min_cosine: float
    accuracy: float | None
    modified: bool
    ok: bool


def _cosines(ref: np.ndarray, cand: np.ndarray, samples: int) -> np.ndarray:
    """Per-sample cosines of one output of one run (rows along axis 0 when it holds the run's
    samples, else one cosine for the whole array), over the entries where the reference is
    finite (an attention mask of synthetic ids may give NaN); 0 on a shape change or where the
    candidate is not finite."""
    if ref.shape != cand.shape:
        return np.zeros(1)
    rows = samples if ref.ndim >= 1 and ref.shape[0] == samples and samples > 1 else 1
    r = np.asarray(ref, dtype=np.float64).reshape(rows, -1)
    c = np.asarray(cand, dtype=np.float64).reshape(rows, -1)
    finite = np.isfinite(r)
    if not finite.all():
        r, c = np.where(finite, r, 0.0), np.where(finite, c, 0.0)
    broken = ~np.isfinite(c).all(axis=1)
    c = np.where(np.isfinite(c), c, 0.0)
    nr, nc = np.linalg.norm(r, axis=1), np.linalg.norm(c, axis=1)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        cos = np.einsum("ij,ij->i", r, c) / (nr * nc)
    cos = np.where((nr == 0) & (nc == 0), 1.0, np.where(np.isfinite(cos), cos, 0.0))
    return np.clip(np.where(broken, 0.0, cos), -1.0, 1.0)


def _describe(feed: Feed) -> str:
    return ", ".join(f"{k}[{','.join(map(str, np.shape(v)))}]" for k, v in feed.items())


class _Meter:
    """The reference outputs, computed once, and the measurement of each candidate.

    Samples are run one at a time (or in chunks of a fixed batch), as models are deployed:
    some exports only run at batch 1.
    """

    def __init__(self, model: ModelProto, feed: Feed, labels: np.ndarray | None, floor: FidelityFloor,
                 source: str, reference: ModelProto | Path | None = None) -> None:
        self.floor, self.labels, self.proto = floor, labels, model
        self.cos_floor = floor.cosine_floor(source == "synthetic")
        wanted = {s.name for s in graph_inputs(model)}
        sub = {k: v for k, v in feed.items() if k in wanted}
        axes = batch_axes(model)
        fixed = fixed_batch(model)
        self.chunks = list(batches(sub, fixed or 1, axes))
        self.sizes = [feed_samples(c, axes) for c in self.chunks]
        if fixed and len(self.chunks) > 1 and self.sizes[-1] != fixed:  # a model with a fixed batch cannot run it
            self.chunks, self.sizes = self.chunks[:-1], self.sizes[:-1]
        self.samples = sum(self.sizes)
        try:
            self.ref = self._run(model if reference is None else reference)
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types; one line for the user
            hint = "pass --data with real inputs" + (" or --shape NAME=dims" if source == "synthetic" else "")
            raise InvalidInputError(
                f"cannot check the fidelity floor: the input model fails on the {source} samples "
                f"({_describe(self.chunks[0])}): {short_message(e, 200)}; {hint}, or --min-cosine 0 to skip the check"
            ) from e
        self.acc_ref = self._accuracy(self.ref)

    def _run(self, model: ModelProto | Path) -> list[list[np.ndarray]]:
        """The outputs of every chunk; the session (onnxruntime's copy of the weights) is freed on return."""
        sess = create_session(model, lean_session(self.proto, SessionConfig()))
        return [list(sess.run(None, chunk)) for chunk in self.chunks]

    def _accuracy(self, outs: list[list[np.ndarray]]) -> float | None:
        if self.labels is None:
            return None
        return accuracy_of(np.concatenate([np.atleast_1d(o[0]) for o in outs]), self.labels)

    def check(self, value: float, result: PruneResult) -> _Check:
        """Measure one pruned model (an unchanged one is the input: cosine 1)."""
        if not result.modified:
            return _Check(value, 1.0, self.acc_ref, False, True)
        try:
            outs = self._run(result.model if result.path is None else result.path)
        except Exception as e:  # noqa: BLE001 - a pruned model that cannot run is a bug, not a measurement
            raise OnnxoptError(f"the pruned model fails to run ({short_message(e, 200)}); please report this") from e
        cos = 1.0
        for ref_run, cand_run, n in zip(self.ref, outs, self.sizes):
            if len(ref_run) != len(cand_run):
                cos = 0.0
                break
            cos = min([cos] + [float(_cosines(r, c, n).min()) for r, c in zip(ref_run, cand_run)])
        acc = self._accuracy(outs)
        ok = cos >= self.cos_floor
        if self.acc_ref is not None and acc is not None and self.floor.max_accuracy_drop is not None:
            ok = ok and self.acc_ref - acc <= self.floor.max_accuracy_drop + 1e-9
        return _Check(value, cos, acc, True, ok)


def _pct(field: str, value: float) -> str:
    if field == "threshold":
        return f"{value:g}"
    return f"{100 * value:.1f}".rstrip("0").rstrip(".") + "%"


def _criteria(floor: FidelityFloor, check: _Check, meter: _Meter, at: str = "") -> str:
    """'output cosine >= 0.99 (0.9912) and accuracy drop <= 0.5 pt (0.31)': the floor and the measured values."""
    parts = []
    if floor.min_cosine > 0:
        if meter.cos_floor != floor.min_cosine:
            parts.append(f"output cosine >= {floor.min_cosine:g} (checked at >= {meter.cos_floor:g} on synthetic "
                         f"inputs: {check.min_cosine:.6f}{at})")
        else:
            parts.append(f"output cosine >= {floor.min_cosine:g} ({check.min_cosine:.4f}{at})")
    if meter.acc_ref is not None and check.accuracy is not None and floor.max_accuracy_drop is not None:
        parts.append(f"accuracy drop <= {floor.max_accuracy_drop:g} pt ({meter.acc_ref - check.accuracy:.2f}{at})")
    return " and ".join(parts)


def _force_hint(floor: FidelityFloor, labelled: bool, synthetic: bool, requested: str) -> str:
    """'pass --data to check on your inputs, or --min-cosine 0 to force 50%'."""
    flags = []
    if floor.min_cosine > 0:
        flags.append("--min-cosine 0")
    if labelled and floor.max_accuracy_drop is not None:
        flags.append("--max-accuracy-drop 100")
    force = f"{' '.join(flags)} to force {requested}"
    return f"pass --data to check on your inputs, or {force}" if synthetic else f"pass {force}"


def _bisect(requested: float, run: Callable[[float], _Check], steps: int) -> tuple[_Check | None, list[_Check]]:
    """The largest tried value in (0, requested) whose candidate holds and changes the model."""
    lo, hi = 0.0, requested
    best: _Check | None = None
    tried: list[_Check] = []
    for _ in range(steps):
        mid = (lo + hi) / 2
        c = run(mid)
        tried.append(c)
        if c.ok:
            lo = mid
            if c.modified:
                best = c
        else:
            hi = mid
    return best, tried


def guarded_prune(
    model: ModelProto,
    config: Any,
    prune: PruneFn,
    field: str,
    floor: FidelityFloor,
    feed: Feed | None = None,
    labels: np.ndarray | None = None,
    reference: Path | None = None,
) -> PruneResult:
    """Prune with `prune(model, config)`, then hold the fidelity floor by lowering `config.<field>`.

    reference: the file the reference outputs are computed from (default: `model`), for a model
    pruned from a file whose `model` is its graph only (candidates are then measured from
    their `PruneResult.path`).

    The search runs with sparse storage and gzip sizes off (they do not change the numbers);
    the returned result is built with the full config at the applied value, and its report has
    a "fidelity" entry: requested and applied value, measured min cosine (and accuracy), the
    values tried, and `message`, the one line to show when the value was lowered.
    Raises GateFailedError when no tried value keeps the floor.
    """
    requested = float(getattr(config, field))
    labelled = labels is not None
    fast = _fast(config)
    first = prune(model, fast)
    if not floor.active(labelled) or requested == 0.0 or not first.modified:
        result = first if fast is config else prune(model, config)
        result.report["fidelity"] = {"checked": False, "parameter": field, "requested": requested,
                                     "applied": requested, "min_cosine_floor": floor.min_cosine}
        return result
    source, described = "data", "data"
    if feed is None:
        source = "synthetic"
        feed, described = synthetic_feed(model, floor.samples, floor.seed, floor.shape_overrides)
    meter = _Meter(model, feed, labels, floor, source, reference)

    def run(value: float) -> _Check:
        progress.report(f"prune: checking {field} {_pct(field, value)} against the floor")
        return meter.check(value, prune(model, dataclasses.replace(fast, **{field: value})))

    check = meter.check(requested, first)
    tried = [check]
    hint = _force_hint(floor, labelled, source == "synthetic", _pct(field, requested))
    message = None
    if not check.ok:
        best, more = _bisect(requested, run, floor.steps)
        tried += more
        if best is None:
            # the smallest value that changed the model (smaller ones may change nothing: channel counts round down)
            low = min((c for c in tried if c.modified), key=lambda c: c.value)
            at = f" at {_pct(field, low.value)}"
            what = "pruning breaks the model" if source == "data" else "pruning cannot be shown safe on synthetic inputs"
            raise GateFailedError(
                f"{what}: no {field} from {_pct(field, requested)} down to {_pct(field, low.value)} "
                f"keeps {_criteria(floor, low, meter, at)}; nothing written; {hint}"
            )
        message = (f"{field} lowered from {_pct(field, requested)} to {_pct(field, best.value)} to keep "
                   f"{_criteria(floor, best, meter)}; {hint}")
        log.info("%s", message)
        check = best
    final = prune(model, dataclasses.replace(config, **{field: check.value}))
    final.report["fidelity"] = _record(field, requested, check, meter, described, tried, floor, message)
    if meter.acc_ref is not None and check.accuracy is not None:
        final.report["accuracy"] = {"before": meter.acc_ref, "after": check.accuracy,
                                    "drop": meter.acc_ref - check.accuracy}
    return final


def _fast(config: Any) -> Any:
    """The config without the parts that cost time and do not change the numbers."""
    changes = {k: False for k in ("sparse_storage", "measure_gzip") if getattr(config, k, False)}
    return dataclasses.replace(config, **changes) if changes else config


def _record(field: str, requested: float, check: _Check, meter: _Meter, source: str,
            tried: list[_Check], floor: FidelityFloor, message: str | None) -> dict:
    """The report's "fidelity" entry."""
    return {
        "checked": True,
        "parameter": field,
        "requested": requested,
        "applied": check.value,
        "min_cosine": check.min_cosine,
        "min_cosine_floor": floor.min_cosine,
        "min_cosine_checked": meter.cos_floor,  # tightened on synthetic inputs (module doc)
        "accuracy_before": meter.acc_ref,
        "accuracy_after": check.accuracy,
        "max_accuracy_drop": floor.max_accuracy_drop if meter.acc_ref is not None else None,
        "inputs": source,  # "data", or "8 noise + 8 image-like" (onnxopt.pruning.probe)
        "samples": meter.samples,
        "tried": [{"value": c.value, "min_cosine": c.min_cosine, "accuracy": c.accuracy, "ok": c.ok}
                  for c in tried],
        "message": message,
    }
