"""Provenance of a measurement: which model, which machine, which software, which inputs, when, how.

A report that says "1.3x faster" is only useful when the reader can tell what was measured:
the exact input file (name, sha256, size), the CPU (model name, the instruction sets that
decide whether int8 pays, cores, the intra-op threads used), the versions of onnxopt,
onnxruntime, onnx and numpy, the shapes and batch that were timed, the date (UTC) and the
command line or API call. `collect()` gathers all of it into a frozen `Provenance`.
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from onnx import ModelProto

_CPUINFO = Path("/proc/cpuinfo")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class ModelInfo:
    """The measured input model: file name, content hash and size in bytes."""

    name: str
    path: str | None  # None for an in-memory model (hashed as serialized)
    sha256: str
    size_bytes: int

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict."""
        return dict(self.__dict__)


@dataclass(frozen=True)
class MachineInfo:
    """The CPU the numbers were measured on and the threads the benchmark used."""

    cpu_model: str
    arch: str
    isa: Mapping[str, Any]  # onnxopt.core.cpu.CpuFeatures.to_dict(): the flags int8 decisions use
    physical_cores: int
    logical_cpus: int
    threads: int  # intra-op threads of the timed sessions
    os: str
    python: str

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict."""
        d = dict(self.__dict__)
        d["isa"] = dict(self.isa)
        return d


@dataclass(frozen=True)
class Provenance:
    """Everything a reader needs to know what a report measured."""

    model: ModelInfo
    machine: MachineInfo
    versions: Mapping[str, str]
    timed_shapes: Mapping[str, tuple[int, ...]]  # input name -> concrete shape of one timed run
    batch: int
    date_utc: str  # ISO 8601, seconds, with +00:00
    invocation: str  # the command line, or the Python API call

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict (the `provenance` key of the JSON report)."""
        return {
            "model": self.model.to_dict(),
            "machine": self.machine.to_dict(),
            "versions": dict(self.versions),
            "timed_shapes": {k: list(v) for k, v in self.timed_shapes.items()},
            "batch": self.batch,
            "date_utc": self.date_utc,
            "invocation": self.invocation,
        }

    def headline(self) -> str:
        """One line for the top of a report: model, hash prefix, CPU, threads, batch, date."""
        m, c = self.model, self.machine
        return (
            f"{m.name} (sha256 {m.sha256[:12]}…) on {c.cpu_model}, {c.isa.get('summary', c.arch)}, "
            f"{c.threads} thread(s), batch {self.batch}, {self.date_utc}"
        )

    def summary_lines(self) -> list[tuple[str, str]]:
        """(label, text) pairs for the Markdown and HTML reports, in reading order."""
        m, c = self.model, self.machine
        shapes = ", ".join(f"{k} {'x'.join(str(d) for d in v)}" for k, v in self.timed_shapes.items())
        return [
            ("model", f"{m.name} ({m.size_bytes:,} bytes)"),
            ("sha256", m.sha256),
            ("cpu", f"{c.cpu_model}; {c.isa.get('summary', c.arch)}"),
            ("cores", f"{c.physical_cores} physical, {c.logical_cpus} logical; {c.threads} intra-op thread(s) timed"),
            ("timed inputs", f"{shapes or '-'} (batch {self.batch})"),
            ("versions", ", ".join(f"{k} {v}" for k, v in self.versions.items())),
            ("date (UTC)", self.date_utc),
            ("invocation", self.invocation),
        ]


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def model_info(model: ModelProto | None = None, path: str | os.PathLike[str] | None = None) -> ModelInfo:
    """ModelInfo of the file when a path is given (what the user can hash too), else of the
    serialized in-memory model."""
    if path is not None:
        p = Path(path)
        return ModelInfo(p.name, str(p), file_sha256(p), p.stat().st_size)
    if model is None:
        raise ValueError("model_info needs a model or a path")
    data = model.SerializeToString()
    name = (model.graph.name or "model") + " (in memory)"
    return ModelInfo(name, None, hashlib.sha256(data).hexdigest(), len(data))


def cpu_model_name(cpuinfo: str | None = None) -> str:
    """The CPU's marketing name (/proc/cpuinfo 'model name', else platform.processor())."""
    if cpuinfo is None:
        try:
            cpuinfo = _CPUINFO.read_text(errors="replace")
        except OSError:
            cpuinfo = ""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("model name", "hardware", "cpu model") and value.strip():
            return value.strip()
    return platform.processor() or platform.machine() or "unknown"


def machine_info(threads: int) -> MachineInfo:
    """This machine's CPU, instruction sets, cores, OS and Python, with the threads used."""
    from onnxopt.core.cpu import detect_cpu
    from onnxopt.core.runtime import physical_cores

    feats = detect_cpu()
    return MachineInfo(
        cpu_model=cpu_model_name(),
        arch=feats.arch,
        isa=feats.to_dict(),
        physical_cores=physical_cores(),
        logical_cpus=os.cpu_count() or 1,
        threads=threads,
        os=platform.platform(),
        python=platform.python_version(),
    )


def versions() -> dict[str, str]:
    """Versions of the software that produced the numbers."""
    import onnx
    import onnxruntime

    from onnxopt import __version__

    return {
        "onnxopt": __version__,
        "onnxruntime": onnxruntime.__version__,
        "onnx": onnx.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def timed_shapes(model: ModelProto, feed: Mapping[str, np.ndarray] | None = None) -> dict[str, tuple[int, ...]]:
    """The input shapes optimize() times (one run): one sample of the verification feed when the
    batch axis is dynamic, else the model's shapes (symbolic dims at onnxopt's defaults).

    Mirrors onnxopt.optimization.run's benchmark step (first_batch(feed, 1) for a dynamic
    batch, else inputs synthesized at batch 1).
    """
    from onnxopt.core.feeds import resolve_shape
    from onnxopt.core.model import graph_inputs

    specs = graph_inputs(model)
    dynamic = all(not (s.shape and isinstance(s.shape[0], int)) for s in specs)
    shapes: dict[str, tuple[int, ...]] = {}
    for spec in specs:
        if dynamic and feed is not None and spec.name in feed:
            shape = tuple(int(d) for d in np.shape(feed[spec.name]))
            shapes[spec.name] = (min(1, shape[0]), *shape[1:]) if shape else ()
        else:
            shapes[spec.name] = tuple(int(d) for d in resolve_shape(spec, 1, None))
    return shapes


def default_invocation() -> str:
    """The command line of this process (used when the caller does not say how it was run)."""
    return " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv and sys.argv[0] else "python"


def utc_now() -> str:
    """Now, UTC, ISO 8601 to the second (e.g. '2025-01-31T12:00:00+00:00')."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def collect(
    model: ModelProto | None = None,
    *,
    path: str | os.PathLike[str] | None = None,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    batch: int = 1,
    threads: int = 0,
    invocation: str | None = None,
) -> Provenance:
    """Gather the provenance of a measurement of `model` (or the file at `path`).

    threads: intra-op threads of the timed sessions (0: physical cores, onnxopt's default).
    shapes: the timed input shapes (default: timed_shapes(model)).
    invocation: the command line or API call (default: this process's argv).
    """
    from onnxopt.core.model import load_model
    from onnxopt.core.runtime import physical_cores

    if model is None:
        if path is None:
            raise ValueError("collect() needs a model or a path")
        model = load_model(path)
    return Provenance(
        model=model_info(model, path),
        machine=machine_info(threads or physical_cores()),
        versions=versions(),
        timed_shapes=dict(shapes) if shapes is not None else timed_shapes(model),
        batch=batch,
        date_utc=utc_now(),
        invocation=invocation or default_invocation(),
    )
