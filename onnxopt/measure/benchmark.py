"""Latency, throughput and memory of ONNX models on onnxruntime CPU providers, measured side by side.

Two isolation modes:

* ``interleaved`` (default): every model gets a session in this process with intra-op spinning
  disabled (an idle spinning session steals the cores of the one being timed), each is warmed
  up, then rounds run one inference per model, rotating the start order every round so no model
  always goes first. Drift of the machine hits every model alike, and samples are paired by round.
* ``subprocess``: each model is timed in its own fresh Python process, one after the other,
  repeated in alternating blocks (A B, B A, ...). Slower to start, nothing else shares the process.

Peak memory (``measure_memory``) is always measured in a fresh subprocess. The fresh-process
machinery (workers, peak RSS) lives in onnxopt.measure.isolation.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from onnx import ModelProto

from onnxopt.core.errors import InvalidInputError
from onnxopt.core.feeds import Feed, check_feed, feed_samples, first_batch, synthesize_feed
from onnxopt.core.model import batch_axes, fixed_batch, graph_inputs, load_model
from onnxopt.core.runtime import (
    SessionConfig,
    bench_session,
    create_session,
    lean_session,
    session_options,
)
from onnxopt.measure.isolation import Entry, measure_peak_rss, run_once, time_in_subprocesses

log = logging.getLogger(__name__)

ISOLATION_MODES = ("interleaved", "subprocess")


@dataclass(frozen=True)
class BenchConfig:
    """How to benchmark: session settings, warm-up, number of timed runs, isolation, inputs."""

    session: SessionConfig = field(default_factory=bench_session)
    warmup: int = 5
    runs: int = 50  # timed runs per model (minimum when duration_s is set)
    duration_s: float | None = None  # keep running rounds until this many seconds in total
    batch: int = 1
    seed: int = 0
    isolation: str = "interleaved"  # interleaved | subprocess
    measure_memory: bool = False  # peak RSS of a session, measured in a fresh subprocess
    shape_overrides: Mapping[str, tuple[int, ...]] | None = None
    blocks: int = 3  # subprocess mode: number of alternating blocks (processes per model)

    def __post_init__(self) -> None:
        if self.warmup < 0:
            raise InvalidInputError(f"warmup must be >= 0, got {self.warmup}: use --warmup 0 or more")
        if self.runs < 2:
            raise InvalidInputError(f"runs must be >= 2, got {self.runs}: use --runs 2 or more")
        if self.duration_s is not None and self.duration_s <= 0:
            raise InvalidInputError(f"duration must be > 0 seconds, got {self.duration_s}")
        if self.batch < 1:
            raise InvalidInputError(f"batch must be >= 1, got {self.batch}: use --batch 1 or more")
        if self.isolation not in ISOLATION_MODES:
            raise InvalidInputError(
                f"unknown isolation {self.isolation!r}; choose one of {', '.join(ISOLATION_MODES)}"
            )
        if self.blocks < 1:
            raise InvalidInputError(f"blocks must be >= 1, got {self.blocks}")


@dataclass(frozen=True)
class LatencyStats:
    """Latency statistics in milliseconds over the timed runs."""

    mean_ms: float
    std_ms: float
    min_ms: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    cv: float  # coefficient of variation: std / mean
    throughput_per_s: float  # samples (inferences x batch) per second at the mean latency
    n: int

    @classmethod
    def from_samples(cls, samples_ms: Sequence[float], batch: int = 1) -> LatencyStats:
        """Statistics of a sequence of latencies in ms."""
        a = np.asarray(samples_ms, dtype=np.float64)
        if a.size == 0:
            raise InvalidInputError("no latency samples to summarize")
        mean = float(a.mean())
        std = float(a.std(ddof=1)) if a.size > 1 else 0.0
        p50, p90, p95, p99 = (float(v) for v in np.percentile(a, [50, 90, 95, 99]))
        return cls(
            mean_ms=mean,
            std_ms=std,
            min_ms=float(a.min()),
            p50_ms=p50,
            p90_ms=p90,
            p95_ms=p95,
            p99_ms=p99,
            max_ms=float(a.max()),
            cv=std / mean if mean > 0 else 0.0,
            throughput_per_s=batch * 1000.0 / mean if mean > 0 else 0.0,
            n=int(a.size),
        )


@dataclass(frozen=True)
class BenchResult:
    """One model's measurement (one row per model and thread setting)."""

    name: str
    path: str | None
    file_size: int
    samples_ms: tuple[float, ...]
    stats: LatencyStats
    session_create_ms: float
    peak_rss_mb: float | None
    threads: int = 0
    provider: str = "CPUExecutionProvider"
    isolation: str = "interleaved"
    batch: int = 1
    block_sizes: tuple[int, ...] = ()  # subprocess mode: samples per process, in order
    allow_spinning: bool = False

    @property
    def label(self) -> str:
        """Name with the thread setting, e.g. 'model (2 threads)'."""
        return f"{self.name} ({self.threads} thread{'s' if self.threads != 1 else ''})"

    def to_dict(self, samples: bool = False) -> dict[str, Any]:
        """A JSON-serializable dict (samples only when asked: they can be long)."""
        d = asdict(self)
        if not samples:
            d.pop("samples_ms")
        else:
            d["samples_ms"] = list(self.samples_ms)
        return d


# ----------------------------------------------------------------------------- inputs


def _resolve_models(
    models: Sequence[ModelProto | str | Path], names: Sequence[str] | None
) -> list[tuple[str, str | None, ModelProto, int]]:
    if not models:
        raise InvalidInputError("no models to benchmark")
    if names is not None and len(names) != len(models):
        raise InvalidInputError(f"got {len(names)} names for {len(models)} models")
    out = []
    seen: dict[str, int] = {}
    for i, m in enumerate(models):
        if isinstance(m, ModelProto):
            proto, path, size = m, None, m.ByteSize()
            default = m.graph.name or f"model{i}"
        else:
            p = Path(m)
            proto, path, size = load_model(p, load_external_data=False), str(p), p.stat().st_size  # sessions read the file
            default = p.name
        name = names[i] if names is not None else default
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            name = f"{name}#{seen[name]}"
        out.append((name, path, proto, size))
    return out


def _check_fixed_batch(model: ModelProto, batch: int) -> None:
    """Raise when --batch asks for a batch the model's batched inputs are fixed not to take."""
    axes = batch_axes(model)
    for spec in graph_inputs(model):
        axis = axes.get(spec.name)
        lead = spec.shape[axis] if axis is not None else None
        if batch > 1 and isinstance(lead, int) and lead > 0 and lead != batch:
            raise InvalidInputError(
                f"batch {batch}: input {spec.name!r} has a fixed batch of {lead}; "
                "re-export the model with a dynamic batch or use --batch " + str(lead)
            )


def model_feed(model: ModelProto, config: BenchConfig, feed: Feed | None = None) -> Feed:
    """The feed one model is benchmarked with: the given feed (checked) or a synthesized one."""
    if feed is None:
        _check_fixed_batch(model, config.batch)
        return synthesize_feed(model, batch=config.batch, overrides=config.shape_overrides, seed=config.seed)
    wanted = {s.name for s in graph_inputs(model)}
    sub = {k: v for k, v in feed.items() if k in wanted}
    check_feed(model, sub, "the feed")
    return sub


def timing_feed(
    model: ModelProto,
    data: Feed | None = None,
    *,
    batch: int = 1,
    overrides: Mapping[str, tuple[int, ...]] | None = None,
    seed: int = 0,
    source: str = "--data",
) -> Feed:
    """The feed latency is measured with, at the shape the model is deployed at.

    With real samples (`data`): the first `batch` of them, or the model's own batch when it is
    fixed; inputs without a batch axis (scalars, states) as they are. Without: inputs
    synthesized at `batch` and the `overrides` (symbolic height/width of images default to
    640, sequence axes to 128; other symbolic dims need an override). Raises InvalidInputError.
    """
    _check_fixed_batch(model, batch)
    if data is None:
        return synthesize_feed(model, batch=batch, overrides=overrides, seed=seed)
    axes = batch_axes(model)
    n = fixed_batch(model) or batch
    have = feed_samples(data, axes)
    if have < n:
        raise InvalidInputError(f"{source}: has {have} samples, fewer than --batch {n}")
    wanted = {s.name for s in graph_inputs(model)}
    out = first_batch({k: v for k, v in data.items() if k in wanted}, n, axes)
    check_feed(model, out, f"{source} (first {n} samples; --batch)")
    return out


def feed_shapes(feed: Mapping[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    """{input name: shape} of a feed (what a report states as the timed shapes)."""
    return {k: tuple(int(d) for d in np.shape(v)) for k, v in feed.items()}


def data_feed(model: ModelProto, path: str | os.PathLike[str], batch: int, labels_key: str = "labels") -> Feed:
    """The first `batch` samples of an .npz (labels dropped) for the model's inputs, checked
    (timing_feed on the file's samples)."""
    from onnxopt.measure.fidelity import load_eval_data

    feed, _ = load_eval_data(model, path, labels_key)
    return timing_feed(model, feed, batch=batch, source=str(path))


# ----------------------------------------------------------------------------- measurement


def benchmark(
    models: Sequence[ModelProto | str | Path],
    config: BenchConfig | None = None,
    feed: Feed | None = None,
    names: Sequence[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
    threads: Sequence[int] | None = None,
) -> list[BenchResult]:
    """Benchmark models side by side with the same settings; one result per (model, threads).

    threads: intra-op thread counts to sweep (default: the config's session setting); all
    (model, threads) variants are measured in the same interleaved rounds.
    progress: called as progress(done, total) with done/total in model runs.
    """
    cfg = config or BenchConfig()
    resolved = _resolve_models(models, names)
    sweep = list(dict.fromkeys(threads)) if threads else [cfg.session.intra_op_threads]
    if any(t < 0 for t in sweep):
        raise InvalidInputError(f"thread counts must be >= 0, got {sweep}")
    if cfg.isolation == "interleaved" and cfg.session.allow_spinning and len(resolved) * len(sweep) > 1:
        # Idle spinning sessions steal the cores of the one being timed (seen: 4x off on 2 cores).
        log.info("interleaved benchmark: intra-op spinning turned off")
        cfg = replace(cfg, session=replace(cfg.session, allow_spinning=False))
    entries = [
        Entry(name, path, proto, size, lean_session(proto, replace(cfg.session, intra_op_threads=t)))
        for name, path, proto, size in resolved
        for t in sweep
    ]
    feeds = [model_feed(e.proto, cfg, feed) for e in entries]
    blocks: list[list[int]] = [[] for _ in entries]
    if cfg.isolation == "interleaved":
        samples, create_ms = _interleaved(entries, feeds, cfg, progress)
    else:
        samples, create_ms = time_in_subprocesses(
            entries, feeds, runs=cfg.runs, blocks=cfg.blocks, warmup=cfg.warmup, duration_s=cfg.duration_s,
            progress=progress, block_sizes=blocks,
        )
    rss: list[float | None] = [None] * len(entries)
    if cfg.measure_memory:
        rss = [measure_peak_rss(e.proto, f, e.session) for e, f in zip(entries, feeds)]
    results = []
    for e, s, c, m, bl in zip(entries, samples, create_ms, rss, blocks):
        results.append(
            BenchResult(
                name=e.name,
                path=e.path,
                file_size=e.file_size,
                samples_ms=tuple(float(x) for x in s),
                stats=LatencyStats.from_samples(s, cfg.batch),
                session_create_ms=c,
                peak_rss_mb=m,
                threads=e.session.intra_op_threads,
                provider=e.session.provider,
                isolation=cfg.isolation,
                batch=cfg.batch,
                block_sizes=tuple(bl),
                allow_spinning=e.session.allow_spinning,
            )
        )
    return results


def _create(proto: ModelProto, session: SessionConfig, path: str | None = None) -> tuple[Any, float]:
    # From the file when there is one: that is what a deployment does (and no serialization is timed).
    src: ModelProto | str = path if path is not None else proto
    t0 = time.perf_counter_ns()
    sess = create_session(src, session)
    return sess, (time.perf_counter_ns() - t0) / 1e6


def _interleaved(
    entries: list[Entry],
    feeds: list[Feed],
    cfg: BenchConfig,
    progress: Callable[[int, int], None] | None,
) -> tuple[list[list[float]], list[float]]:
    for e in entries:
        session_options(e.session)  # load libraries once, outside the timed session creation
    sessions = []
    create_ms = []
    for e in entries:
        s, ms = _create(e.proto, e.session, e.path)
        sessions.append(s)
        create_ms.append(ms)
    for s, f in zip(sessions, feeds):
        for _ in range(cfg.warmup):
            run_once(s, f)
    n = len(sessions)
    samples: list[list[float]] = [[] for _ in range(n)]
    total_rounds = cfg.runs
    start = time.perf_counter()
    r = 0
    while True:
        for k in range(n):
            i = (r + k) % n
            samples[i].append(run_once(sessions[i], feeds[i]))
        r += 1
        elapsed = time.perf_counter() - start
        if cfg.duration_s is not None:
            finished = r >= cfg.runs and elapsed >= cfg.duration_s
            # Re-estimate the number of rounds the duration allows (for the progress bar).
            total_rounds = r if finished else max(cfg.runs, int(cfg.duration_s / (elapsed / r)), r + 1)
        else:
            finished = r >= total_rounds
        if progress is not None:
            progress(r * n, total_rounds * n)
        if finished:
            break
    log.info("interleaved: %d models x %d rounds in %.1f s", n, r, time.perf_counter() - start)
    return samples, create_ms
