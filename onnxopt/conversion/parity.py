"""Parity of an exported model with its source: both run on the same seeded or real inputs, every element within |onnx - ref| <= atol + rtol * |ref| (numpy.allclose)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from onnx import ModelProto

from onnxopt.core.errors import InvalidInputError, OnnxoptError
from onnxopt.core.errors import short_message as _short
from onnxopt.core.feeds import Feed

log = logging.getLogger(__name__)


class ParityError(OnnxoptError):
    """The exported model does not reproduce the source model within atol/rtol."""


@dataclass(frozen=True)
class ParityReport:
    """Largest differences between source-framework and onnxruntime outputs on the same inputs."""

    max_abs: float
    max_rel: float  # max |onnx - source| / max |source|, per output, worst output
    worst_output: str
    passed: bool
    atol: float
    rtol: float
    samples: int
    per_output: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict."""
        return asdict(self)


def as_numpy(x: Any) -> np.ndarray:
    """A numpy array from a numpy array, torch tensor, tf tensor or nested list."""
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "detach"):
        return np.asarray(x.detach().cpu().numpy())
    if hasattr(x, "numpy"):
        return np.asarray(x.numpy())
    return np.asarray(x)


def check_parity(
    reference: Sequence[Sequence[np.ndarray]],
    model: ModelProto | Any,
    feeds: Sequence[Feed],
    *,
    atol: float = 1e-4,
    rtol: float = 1e-3,
) -> ParityReport:
    """Run model in onnxruntime on each feed and compare with the reference outputs of that feed.

    Passes when every element satisfies |onnx - ref| <= atol + rtol * |ref| (numpy.allclose).
    model may also be an onnxruntime InferenceSession already created for the model.
    """
    from onnxopt.core.runtime import create_session, run

    sess = create_session(model) if isinstance(model, ModelProto) else model
    names = [o.name for o in sess.get_outputs()]
    stats: dict[str, dict[str, float]] = {
        n: {"max_abs": 0.0, "max_ref": 0.0, "excess": 0.0} for n in names
    }
    samples = 0
    for ref, feed in zip(reference, feeds):
        if len(ref) != len(names):
            raise ParityError(
                f"the ONNX model has {len(names)} outputs but the source model returned {len(ref)}"
            )
        try:
            got = run(sess, feed, what="the exported model")
        except Exception as e:
            raise ParityError(f"onnxruntime cannot run the exported model: {_short(e)}") from e
        samples += int(next(iter(feed.values())).shape[0]) if feed else 1
        for name, r, g in zip(names, ref, got):
            r = np.asarray(r)
            g = np.asarray(g)
            if r.shape != g.shape:
                raise ParityError(
                    f"parity check failed: output {name!r} has shape {g.shape} in ONNX but {r.shape} "
                    "in the source model (a traced constant or a fixed batch?)"
                )
            s = stats[name]
            if r.size == 0:
                continue
            rf = r.astype(np.float64)
            gf = g.astype(np.float64)
            diff = np.abs(gf - rf)
            finite_mismatch = np.isnan(rf) != np.isnan(gf)
            diff = np.where(np.isnan(rf) & np.isnan(gf), 0.0, diff)
            if finite_mismatch.any():
                diff = np.where(finite_mismatch, np.inf, diff)
            s["max_abs"] = max(s["max_abs"], float(np.nanmax(diff)))
            s["max_ref"] = max(s["max_ref"], float(np.nanmax(np.abs(rf))) if np.isfinite(rf).any() else 0.0)
            tol = atol + rtol * np.abs(rf)
            with np.errstate(divide="ignore", invalid="ignore"):
                excess = np.where(tol > 0, diff / tol, np.where(diff > 0, np.inf, 0.0))
            s["excess"] = max(s["excess"], float(np.nanmax(excess)))
    per_output = {
        n: {
            "max_abs": s["max_abs"],
            "max_rel": s["max_abs"] / s["max_ref"] if s["max_ref"] > 0 else s["max_abs"],
        }
        for n, s in stats.items()
    }
    worst = max(names, key=lambda n: (stats[n]["excess"], stats[n]["max_abs"])) if names else ""
    return ParityReport(
        max_abs=max((p["max_abs"] for p in per_output.values()), default=0.0),
        max_rel=max((p["max_rel"] for p in per_output.values()), default=0.0),
        worst_output=worst,
        passed=all(s["excess"] <= 1.0 for s in stats.values()),
        atol=atol,
        rtol=rtol,
        samples=samples,
        per_output=per_output,
    )


def seeded_inputs(examples: Sequence[np.ndarray], batch: int | None, seed: int) -> list[np.ndarray]:
    """Seeded random inputs shaped and typed like the examples, with the batch dim set to batch."""
    rng = np.random.default_rng(seed)
    out = []
    for ex in examples:
        shape = tuple(ex.shape)
        if batch is not None and shape:
            shape = (batch, *shape[1:])
        dt = ex.dtype
        if np.issubdtype(dt, np.floating):
            lo, hi = (float(ex.min()), float(ex.max())) if ex.size else (0.0, 1.0)
            if lo >= 0.0 and hi <= 1.0:  # images scaled to [0, 1]: stay in range
                arr = rng.random(shape).astype(dt)
            else:
                arr = rng.standard_normal(shape).astype(dt)
        elif dt == np.bool_:
            arr = rng.integers(0, 2, shape).astype(np.bool_)
        elif np.issubdtype(dt, np.integer):
            hi_i = int(ex.max()) + 1 if ex.size else 100
            arr = rng.integers(0, max(hi_i, 2), shape).astype(dt)
        else:
            raise InvalidInputError(f"cannot synthesize inputs of dtype {dt}; pass real inputs with --data")
        out.append(arr)
    return out


def parity_message(p: ParityReport) -> str:
    worst = p.per_output.get(p.worst_output, {})
    return (
        f"parity check failed: output {p.worst_output!r} differs by up to {worst.get('max_abs', p.max_abs):.3g} "
        f"(relative {worst.get('max_rel', p.max_rel):.3g}), above --atol {p.atol:g} / --rtol {p.rtol:g}"
    )
