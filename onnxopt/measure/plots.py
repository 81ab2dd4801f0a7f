"""Latency plots with matplotlib (the `report` extra), imported lazily."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxopt.core.errors import MissingExtraError

if TYPE_CHECKING:
    from onnxopt.measure.benchmark import BenchResult


def require_matplotlib() -> Any:
    """Import matplotlib with a file-only backend or raise MissingExtraError for 'report'."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise MissingExtraError("matplotlib", "report") from e
    return plt


def latency_plot(results: Sequence[BenchResult], path: str | os.PathLike[str], title: str = "latency") -> Path:
    """Save the latency distributions of results side by side (box + points) to path, atomically."""
    plt = require_matplotlib()
    out = Path(path)
    labels = [r.label if len({x.threads for x in results}) > 1 else r.name for r in results]
    data = [list(r.samples_ms) for r in results]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(results) + 2), 4.5))
    try:
        ax.boxplot(data, showfliers=False, widths=0.5)
        for i, d in enumerate(data, start=1):
            jitter = [i + 0.18 * ((k * 0.618) % 1.0 - 0.5) for k in range(len(d))]
            ax.scatter(jitter, d, s=6, alpha=0.4)
        ax.set_xticks(range(1, len(labels) + 1))
        ax.set_xticklabels(labels, rotation=15, ha="right", fontsize=8)
        ax.set_ylabel("latency per run (ms)")
        flat = sorted(v for d in data for v in d)
        if flat and flat[len(flat) // 2] > 0 and flat[-1] / flat[len(flat) // 2] > 10:
            ax.set_yscale("log")  # a few slow outliers would flatten the boxes
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{out.stem}.", suffix=out.suffix, dir=out.parent)
        os.close(fd)
        try:
            fig.savefig(tmp, dpi=120)
            os.replace(tmp, out)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    finally:
        plt.close(fig)
    return out
