"""Measurements in fresh processes: subprocess-isolated timing and peak resident memory.

Each measurement runs `python -m onnxopt.measure.isolation worker SPEC.json` with the model and
its feed staged on disk; the worker prints one JSON line. Subprocess timing repeats every model
in alternating blocks (A B, B A, ...) so that no model always runs first. Peak memory is the
peak resident set size during session creation and a few runs, minus the resident size just
before (the worker's own, not the parent's: see _peak_rss_mb).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from onnx import ModelProto

from onnxopt.core.errors import InvalidModelError, OnnxoptError
from onnxopt.core.external import write_model_file
from onnxopt.core.feeds import Feed
from onnxopt.core.model import load_model
from onnxopt.core.runtime import (
    SessionConfig,
    bench_session,
    create_session,
    lean_session,
    run_error,
    session_options,
)

log = logging.getLogger(__name__)


@dataclass
class Entry:
    """One model as measured: its name, file (None when in memory), proto, size and session settings."""

    name: str
    path: str | None
    proto: ModelProto
    file_size: int
    session: SessionConfig


def run_once(sess: Any, feed: Feed) -> float:
    """Milliseconds one sess.run(None, feed) takes (an onnxruntime error becomes a ModelRunError).

    sess.run is called directly, not through runtime.run, so that nothing but the run is timed.
    """
    try:
        t0 = time.perf_counter_ns()
        sess.run(None, feed)
        return (time.perf_counter_ns() - t0) / 1e6
    except Exception as e:
        raise run_error(e) from e


def _worker_env() -> dict[str, str]:
    env = dict(os.environ)
    pkg_parent = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = pkg_parent + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _run_worker(spec: dict[str, Any], workdir: Path, tag: str) -> dict[str, Any]:
    spec_path = workdir / f"spec_{tag}.json"
    spec_path.write_text(json.dumps(spec))
    proc = subprocess.run(
        [sys.executable, "-m", "onnxopt.measure.isolation", "worker", str(spec_path)],
        capture_output=True,
        text=True,
        env=_worker_env(),
        timeout=3600,
    )
    if proc.returncode != 0:
        err = proc.stderr.strip().splitlines()
        raise OnnxoptError(f"benchmark worker failed: {err[-1] if err else proc.returncode}")
    try:
        result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError) as e:
        raise OnnxoptError(f"benchmark worker returned no result: {proc.stdout[-200:]!r}") from e
    if "error" in result:
        raise OnnxoptError(result["error"])
    return result


def _stage(entries: list[Entry], feeds: list[Feed], workdir: Path) -> list[tuple[str, str]]:
    staged = []
    for i, (e, f) in enumerate(zip(entries, feeds)):
        if e.path is not None:
            mpath = e.path
        else:
            mpath = str(workdir / f"model_{i}.onnx")
            if not Path(mpath).exists():
                write_model_file(e.proto, Path(mpath))
        fpath = workdir / f"feed_{i}.npz"
        np.savez(fpath, **f)  # type: ignore[arg-type]
        staged.append((str(Path(mpath).resolve()), str(fpath)))
    return staged


def _spec(staged: tuple[str, str], session: SessionConfig, warmup: int, runs: int, duration_s: float | None,
          memory: bool) -> dict[str, Any]:
    return {
        "model": staged[0],
        "feed": staged[1],
        "session": asdict(session),
        "warmup": warmup,
        "runs": runs,
        "duration_s": duration_s,
        "memory": memory,
    }


def time_in_subprocesses(
    entries: list[Entry],
    feeds: list[Feed],
    *,
    runs: int,
    blocks: int,
    warmup: int,
    duration_s: float | None,
    progress: Callable[[int, int], None] | None = None,
    block_sizes: list[list[int]] | None = None,
) -> tuple[list[list[float]], list[float]]:
    """(latency samples, median session-creation ms) per entry, each block of runs in a fresh process.

    block_sizes, when given, receives the number of samples of each process, per entry in order.
    """
    n = len(entries)
    blocks = min(blocks, runs)
    per_block = [runs // blocks + (1 if b < runs % blocks else 0) for b in range(blocks)]
    duration = duration_s / blocks / n if duration_s else None
    samples: list[list[float]] = [[] for _ in range(n)]
    creates: list[list[float]] = [[] for _ in range(n)]
    done = 0
    with tempfile.TemporaryDirectory(prefix="onnxopt-bench-") as tmp:
        workdir = Path(tmp)
        staged = _stage(entries, feeds, workdir)
        for b in range(blocks):
            order = list(range(n)) if b % 2 == 0 else list(reversed(range(n)))
            for i in order:
                spec = _spec(staged[i], entries[i].session, warmup, per_block[b], duration, memory=False)
                res = _run_worker(spec, workdir, f"{b}_{i}")
                samples[i].extend(res["samples_ms"])
                if block_sizes is not None:
                    block_sizes[i].append(len(res["samples_ms"]))
                creates[i].append(res["session_create_ms"])
                done += 1
                if progress is not None:
                    progress(done, blocks * n)
    return samples, [float(np.median(c)) for c in creates]


def measure_peak_rss(
    model: ModelProto | str | Path, feed: Feed, session: SessionConfig | None = None, runs: int = 3
) -> float:
    """Peak resident memory in MB added by creating a session and running it, in a fresh process."""
    proto = model if isinstance(model, ModelProto) else load_model(model, load_external_data=False)
    path = None if isinstance(model, ModelProto) else str(model)
    entry = Entry("m", path, proto, 0, lean_session(proto, session or bench_session()))
    with tempfile.TemporaryDirectory(prefix="onnxopt-mem-") as tmp:
        workdir = Path(tmp)
        (staged,) = _stage([entry], [feed], workdir)
        res = _run_worker(_spec(staged, entry.session, 0, max(1, runs), None, memory=True), workdir, "mem")
    return float(res["peak_rss_mb"])


def _rss_mb() -> float:
    try:
        import psutil

        return float(psutil.Process().memory_info().rss) / 2**20
    except Exception:  # pragma: no cover - psutil is a dependency; be safe anyway
        return 0.0


def _reset_peak_rss() -> None:
    """Reset the kernel's peak-RSS mark of this process to its current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _peak_rss_mb() -> float:
    """Peak RSS of this process image in MB.

    Linux: VmHWM from /proc (ru_maxrss is unusable here: it survives execve, so a fresh worker
    would inherit the peak of the process that started it).
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return float(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return float(peak) / (2**20 if sys.platform == "darwin" else 2**10)


def _worker(spec_path: str) -> dict[str, Any]:
    """Measure one model in this (fresh) process as described by a JSON spec."""
    spec = json.loads(Path(spec_path).read_text())
    with np.load(spec["feed"], allow_pickle=False) as z:
        feed = {k: z[k] for k in z.files}
    session = SessionConfig(**spec["session"])
    session_options(session)  # load libraries before the baseline and the timed creation
    base = _rss_mb()
    if spec["memory"]:
        _reset_peak_rss()
    t0 = time.perf_counter_ns()
    sess = create_session(spec["model"], session)
    create_ms = (time.perf_counter_ns() - t0) / 1e6
    for _ in range(spec["warmup"]):
        run_once(sess, feed)
    samples = []
    start = time.perf_counter()
    while True:
        samples.append(run_once(sess, feed))
        if len(samples) >= spec["runs"] and (
            spec["duration_s"] is None or time.perf_counter() - start >= spec["duration_s"]
        ):
            break
    out: dict[str, Any] = {"samples_ms": samples, "session_create_ms": create_ms}
    if spec["memory"]:
        out["peak_rss_mb"] = max(0.0, _peak_rss_mb() - base)
    return out


def _worker_main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "worker":
        print("usage: python -m onnxopt.measure.isolation worker SPEC.json", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.ERROR)
    try:
        result = _worker(argv[1])
    except (OnnxoptError, InvalidModelError) as e:
        result = {"error": str(e)}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(_worker_main(sys.argv[1:]))
