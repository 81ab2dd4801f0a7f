"""Independent A/B measurement of an output model against its input model, with onnxruntime only.

Nothing here comes from onnxopt: the harness must not trust the code it checks.
- fidelity: every sample is run through both models at batch 1; per output, the cosine of the
  flattened arrays (float64); the reported number is the minimum over samples and outputs.
- latency: interleaved rounds (each round runs A and B once, in a random order) at batch 1 on
  one real-looking sample; ratio = median(B) / median(A), 95% CI from a bootstrap over rounds.
Run as a script it measures one pair in this (child) process and prints one JSON object, so a
crash or a hang in onnxruntime cannot take the harness down.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from realmodels.corpus import ModelEntry, load_manifest, model_path  # noqa: E402
from realmodels.inputs import synthesize  # noqa: E402


@dataclass(frozen=True)
class Measurement:
    """What the table shows for one output model (ratios are output / input)."""

    latency_ratio: float
    ci_low: float
    ci_high: float
    in_ms: float
    out_ms: float
    rounds: int
    min_cosine: float
    size_ratio: float


def session(path: Path, threads: int = 2) -> ort.InferenceSession:
    """A CPU session with `threads` intra-op threads, sequential execution, no spinning."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    # Two sessions take turns: an idle spinning session would steal the cores of the one being
    # timed (latencies double and the ratio is biased), so neither spins.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def run_once(sess: ort.InferenceSession, feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Run one feed, passing only the inputs the session declares."""
    names = {i.name for i in sess.get_inputs()}
    return sess.run(None, {k: v for k, v in feed.items() if k in names})


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of two flattened arrays; 1.0 when both are all zero, 0.0 on a shape mismatch."""
    if a.shape != b.shape:
        return 0.0
    x, y = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    nx, ny = float(np.linalg.norm(x)), float(np.linalg.norm(y))
    if nx == 0.0 and ny == 0.0:
        return 1.0
    if nx == 0.0 or ny == 0.0 or not np.isfinite(nx * ny):
        return 0.0
    return float(np.dot(x, y) / (nx * ny))


def min_cosine(a: ort.InferenceSession, b: ort.InferenceSession, feeds: list[dict[str, np.ndarray]]) -> float:
    """Minimum per-sample, per-output cosine of b's outputs against a's (matched by position)."""
    worst = 1.0
    for feed in feeds:
        outs_a, outs_b = run_once(a, feed), run_once(b, feed)
        if len(outs_a) != len(outs_b):
            return 0.0
        worst = min([worst] + [cosine(x, y) for x, y in zip(outs_a, outs_b)])
    return worst


def latency_ratio(a: ort.InferenceSession, b: ort.InferenceSession, feed: dict[str, np.ndarray],
                  min_rounds: int = 30, min_seconds: float = 6.0, max_seconds: float = 90.0,
                  seed: int = 0) -> tuple[float, float, float, float, float, int]:
    """(ratio, ci_low, ci_high, a_ms, b_ms, rounds) from interleaved single runs of a and b."""
    rng = np.random.default_rng(seed)
    for _ in range(3):  # warm-up: first runs allocate and pick kernels
        run_once(a, feed)
        run_once(b, feed)
    times: list[tuple[float, float]] = []
    start = time.perf_counter()
    while True:
        elapsed = time.perf_counter() - start
        if (len(times) >= min_rounds and elapsed >= min_seconds) or (elapsed >= max_seconds and len(times) >= 5):
            break
        pair = {}
        for which in (("a", "b") if rng.random() < 0.5 else ("b", "a")):
            t0 = time.perf_counter()
            run_once(a if which == "a" else b, feed)
            pair[which] = time.perf_counter() - t0
        times.append((pair["a"], pair["b"]))
    ta, tb = np.array([t[0] for t in times]), np.array([t[1] for t in times])
    ratio = float(np.median(tb) / np.median(ta))
    idx = rng.integers(0, len(times), (2000, len(times)))
    boot = np.median(tb[idx], axis=1) / np.median(ta[idx], axis=1)
    low, high = np.percentile(boot, [2.5, 97.5])
    return ratio, float(low), float(high), float(np.median(ta) * 1e3), float(np.median(tb) * 1e3), len(times)


def measure(entry: ModelEntry, reference: Path, candidate: Path, samples: int = 8,
            threads: int = 2, seed: int = 0) -> Measurement:
    """Fidelity over `samples` inputs, then the interleaved latency ratio on sample 0."""
    a, b = session(reference, threads), session(candidate, threads)
    feeds = [synthesize(entry.inputs, i, seed) for i in range(samples)]
    cos = min_cosine(a, b, feeds)
    ratio, low, high, a_ms, b_ms, rounds = latency_ratio(a, b, feeds[0], seed=seed)
    size = candidate.stat().st_size / reference.stat().st_size
    return Measurement(ratio, low, high, a_ms, b_ms, rounds, cos, size)


def main(argv: list[str] | None = None) -> int:
    """Child-process entry: measure one output model and print the Measurement as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="manifest name of the input model")
    parser.add_argument("--candidate", required=True, type=Path, help="output model to measure")
    parser.add_argument("--reference", type=Path, default=None,
                        help="model to measure it against (default: the input model)")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    entry = load_manifest().select(args.model)[0]
    result = measure(entry, args.reference or model_path(entry), args.candidate, args.samples, args.threads, args.seed)
    print(json.dumps(asdict(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
