"""Choose among exports that passed the checks: the faster in onnxruntime, else the smaller file."""

from __future__ import annotations

import logging
from typing import Any

from onnxopt.conversion.types import Candidate, ConvertOptions
from onnxopt.core.errors import short_message as _short
from onnxopt.core.feeds import Feed

log = logging.getLogger(__name__)

SMALLER_FILE = 0.98  # on a latency tie, the second exporter wins only when its file is >2% smaller


def choose_exporter(
    candidates: list[Candidate], options: ConvertOptions, *, feed: Feed | None = None
) -> tuple[Candidate, str, dict[str, Any] | None]:
    """(chosen candidate, why, benchmark figures or None) among candidates in preference order.

    With two candidates, both are benchmarked side by side (options.benchmark_runs at batch 1,
    on feed when given, e.g. valid token ids at sequence 128, else synthetic inputs): a
    significant latency difference decides, else the smaller file. Benchmarking is advisory:
    when it fails the first candidate is kept.
    """
    if len(candidates) == 1:
        return candidates[0], "the only exporter that passed", None
    try:
        from onnxopt.measure.benchmark import BenchConfig, benchmark
        from onnxopt.measure.stats import latency_ratio
    except ImportError:
        return candidates[0], "first exporter that passed (benchmark unavailable)", None
    try:
        cfg = BenchConfig(runs=options.benchmark_runs, warmup=3, batch=1, seed=options.seed)
        results = benchmark([c[1] for c in candidates], cfg, feed=feed, names=[c[0] for c in candidates])
        ref, cand = results[0], results[1]
        ratio = latency_ratio(cand, ref)
    except Exception as e:  # benchmarking is advisory: never lose a good export to it
        log.warning("benchmark of the exporters failed, keeping %s: %s", candidates[0][0], _short(e))
        return candidates[0], f"first exporter that passed (benchmark failed: {_short(e)})", None
    bench: dict[str, Any] = {
        r.name: {"p50_ms": round(r.stats.p50_ms, 4), "mean_ms": round(r.stats.mean_ms, 4)} for r in results
    }
    bench["ratio"] = {"candidate": cand.name, "reference": ref.name, "ratio": round(ratio.ratio, 4),
                      "low": round(ratio.low, 4), "high": round(ratio.high, 4), "significant": ratio.significant}
    if ratio.significant and ratio.ratio < 1.0:
        reason = f"{cand.name} is {1 / ratio.ratio:.2f}x as fast as {ref.name} (p50, 95% CI {ratio.low:.3f}-{ratio.high:.3f})"
        return candidates[1], reason, bench
    if ratio.significant:
        return candidates[0], f"{ref.name} is {ratio.ratio:.2f}x as fast as {cand.name}", bench
    # A tie on latency: the smaller file wins (exporters differ in how they store weights).
    sizes = [c[1].ByteSize() for c in candidates[:2]]
    pick = 1 if sizes[1] < SMALLER_FILE * sizes[0] else 0
    reason = (
        f"no significant latency difference (ratio {ratio.ratio:.3f}); kept {candidates[pick][0]}"
        + (f", the smaller file ({sizes[1] / 2**20:.1f} vs {sizes[0] / 2**20:.1f} MiB)" if pick else "")
    )
    return candidates[pick], reason, bench
