"""Plot a search: accuracy vs latency of every evaluated candidate, the Pareto front highlighted."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from onnxopt.measure.plots import require_matplotlib
from onnxopt.nas.types import Record


def plot_front(
    records: Sequence[Record],
    front: Sequence[Record],
    path: str | os.PathLike[str],
    *,
    x: str = "latency_ms",
    y: str = "accuracy",
    baseline: Mapping[str, float] | None = None,
    title: str = "onnxopt search",
) -> Path:
    """Save a scatter of y vs x for every successful record, front as a line, baseline as a star."""
    plt = require_matplotlib()
    ok = [r for r in records if r.ok]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    ax.scatter([r.value(x) for r in ok], [r.value(y) for r in ok], s=16, alpha=0.45,
               color="tab:gray", label=f"candidates ({len(ok)})")
    pts = sorted((r.value(x), r.value(y)) for r in front if r.ok)
    if pts:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color="tab:red", ms=6,
                label=f"Pareto front ({len(pts)})")
    if baseline is not None and x in baseline and y in baseline:
        ax.scatter([baseline[x]], [baseline[y]], marker="*", s=180, color="tab:blue",
                   zorder=5, label="baseline")
    ax.set_xlabel(x.replace("_ms", " (ms)"))
    ax.set_ylabel(y + (" (%)" if y == "accuracy" else ""))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.stem}.", suffix=out.suffix or ".png", dir=out.parent)
    os.close(fd)
    try:
        fig.savefig(tmp)
        os.replace(tmp, out)
    finally:
        plt.close(fig)
        Path(tmp).unlink(missing_ok=True)
    return out
