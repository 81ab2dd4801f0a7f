"""Latency ratios with 95% bootstrap confidence intervals.

ratio = Q_q(candidate samples) / Q_q(reference samples), Q_q the q-quantile (the median by
default). The interval is the 2.5th-97.5th percentile of the ratio over bootstrap resamples:
samples timed in the same interleaved rounds are resampled as pairs (the same round indices
for both, which cancels machine drift); samples timed in several processes are resampled
hierarchically, processes (blocks) first, then runs within each block.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from onnxopt.core.errors import InvalidInputError

# A candidate counts as "not slower" than its reference when the upper end of the 95% CI of
# candidate/reference latency is at most this: 2% covers the run-to-run noise of interleaved
# rounds on a quiet machine without letting a real slowdown through.
NOT_SLOWER = 1.02


@runtime_checkable
class TimedSamples(Protocol):
    """What a ratio needs of a benchmark result: its samples and how they split into blocks."""

    @property
    def samples_ms(self) -> Sequence[float]: ...

    @property
    def block_sizes(self) -> Sequence[int]: ...


@dataclass(frozen=True)
class RatioCI:
    """Candidate latency / reference latency (ratio of medians by default), 95% bootstrap CI over rounds."""

    ratio: float
    low: float
    high: float
    significant: bool  # the CI excludes 1.0
    paired: bool = True
    n: int = 0
    quantile: float = 0.5  # the latency statistic compared: 0.5 = medians

    @property
    def speedup(self) -> float:
        """Reference latency / candidate latency (> 1 means the candidate is faster)."""
        return 1.0 / self.ratio if self.ratio > 0 else float("inf")

    def describe(self) -> str:
        """E.g. '0.52x [0.50, 0.54] (1.92x faster)' or '... not significant'."""
        text = f"{self.ratio:.3f}x [{self.low:.3f}, {self.high:.3f}]"
        if not self.significant:
            return text + " (not significant)"
        if self.ratio < 1:
            return text + f" ({self.speedup:.2f}x faster)"
        return text + f" ({self.ratio:.2f}x slower)"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict (with the speedup)."""
        d = asdict(self)
        d["speedup"] = self.speedup
        return d


def latency_ratio(
    candidate: TimedSamples | Sequence[float],
    reference: TimedSamples | Sequence[float],
    *,
    n_boot: int = 2000,
    seed: int = 0,
    quantile: float = 0.5,
) -> RatioCI:
    """Ratio of median latencies (candidate / reference) with a 95% bootstrap CI.

    Samples measured in the same rounds (interleaved) are resampled as pairs (the same round
    indices for both), which cancels drift; samples of different lengths are resampled apart.
    Results measured in several processes (subprocess mode) are resampled hierarchically:
    processes first, then runs within them, so the CI includes process-to-process variation.
    quantile: the latency statistic compared (0.5: medians). On a busy machine where many runs
    are preempted (bimodal samples), a lower quantile such as 0.25 is steadier.
    """
    if not 0.0 <= quantile <= 1.0:
        raise InvalidInputError(f"quantile must be within [0, 1], got {quantile}")
    q = 100.0 * quantile
    c = np.asarray(candidate.samples_ms if isinstance(candidate, TimedSamples) else candidate, dtype=np.float64)
    r = np.asarray(reference.samples_ms if isinstance(reference, TimedSamples) else reference, dtype=np.float64)
    if c.size < 2 or r.size < 2:
        raise InvalidInputError("a latency ratio needs at least 2 samples per model")
    rng = np.random.default_rng(seed)
    ratio = float(np.percentile(c, q) / np.percentile(r, q))
    cb = candidate.block_sizes if isinstance(candidate, TimedSamples) else ()
    rb = reference.block_sizes if isinstance(reference, TimedSamples) else ()
    if len(cb) > 1 and len(rb) > 1:
        boot = _block_bootstrap(c, cb, r, rb, n_boot, rng, q)
        low, high = (float(v) for v in np.percentile(boot, [2.5, 97.5]))
        return RatioCI(ratio, low, high, not (low <= 1.0 <= high), paired=len(cb) == len(rb),
                       n=int(min(c.size, r.size)), quantile=quantile)
    paired = c.size == r.size
    if paired:
        idx = rng.integers(0, c.size, size=(n_boot, c.size))
        boot = np.percentile(c[idx], q, axis=1) / np.percentile(r[idx], q, axis=1)
    else:
        ic = rng.integers(0, c.size, size=(n_boot, c.size))
        ir = rng.integers(0, r.size, size=(n_boot, r.size))
        boot = np.percentile(c[ic], q, axis=1) / np.percentile(r[ir], q, axis=1)
    low, high = (float(v) for v in np.percentile(boot, [2.5, 97.5]))
    return RatioCI(
        ratio=ratio,
        low=low,
        high=high,
        significant=not (low <= 1.0 <= high),
        paired=paired,
        n=int(min(c.size, r.size)),
        quantile=quantile,
    )


def _split(a: np.ndarray, sizes: Sequence[int]) -> list[np.ndarray]:
    return np.split(a, np.cumsum(sizes)[:-1]) if sum(sizes) == a.size else [a]


def _block_bootstrap(
    c: np.ndarray,
    cb: Sequence[int],
    r: np.ndarray,
    rb: Sequence[int],
    n_boot: int,
    rng: np.random.Generator,
    q: float = 50.0,
) -> np.ndarray:
    """Ratio of quantiles resampling blocks (the same block indices for both when paired), then runs."""
    cs, rs = _split(c, cb), _split(r, rb)
    paired = len(cs) == len(rs)
    out = np.empty(n_boot)
    for k in range(n_boot):
        ic = rng.integers(0, len(cs), len(cs))
        ir = ic if paired else rng.integers(0, len(rs), len(rs))
        cc = np.concatenate([b[rng.integers(0, b.size, b.size)] for b in (cs[i] for i in ic)])
        rr = np.concatenate([b[rng.integers(0, b.size, b.size)] for b in (rs[i] for i in ir)])
        out[k] = np.percentile(cc, q) / np.percentile(rr, q)
    return out
