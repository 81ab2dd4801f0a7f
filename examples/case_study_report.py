"""Self-contained HTML report of a case-study run: the table and three plots (matplotlib)."""

from __future__ import annotations

import base64
import html
import io
import os
import tempfile
from pathlib import Path
from typing import Any


def _pyplot() -> Any:
    from onnxopt.optimization.report import check_html_available

    check_html_available()  # MissingExtraError with the pip command when matplotlib is absent
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(plt: Any, fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def accuracy_vs_latency(plt: Any, rows: list[dict[str, Any]]) -> str:
    """Every model of the table: test accuracy vs p50 latency (one interleaved benchmark)."""
    fig, ax = plt.subplots(figsize=(8, 5))
    for r in rows:
        ax.scatter(r["p50_ms"], r["accuracy"], s=40)
        ax.annotate(r["model"], (r["p50_ms"], r["accuracy"]), fontsize=7, xytext=(4, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("p50 latency, batch 1 (ms, log scale)")
    ax.set_ylabel("accuracy on the held-out test split (%)")
    ax.set_title("Every model built: accuracy vs onnxruntime latency")
    ax.grid(alpha=0.3)
    return _png(plt, fig)


def search_front(plt: Any, search: dict[str, Any]) -> str:
    """Every search candidate and the Pareto front (select split, the evaluator's 1-thread latency)."""
    ok = [r for r in search["records"] if r.get("metrics") and not r.get("error")]
    front = sorted((r["metrics"]["latency_ms"], r["metrics"]["accuracy"]) for r in search["result"]["front"])
    fig, ax = plt.subplots(figsize=(8, 5))
    ax.scatter([r["metrics"]["latency_ms"] for r in ok], [r["metrics"]["accuracy"] for r in ok],
               color="tab:gray", alpha=0.6, s=20, label=f"candidates ({len(ok)})")
    if front:
        ax.plot([p[0] for p in front], [p[1] for p in front], "o-", color="tab:red", label=f"Pareto front ({len(front)})")
    chosen = [r for r in ok if r["genome"] == search["genome"]]
    if chosen:
        m = chosen[0]["metrics"]
        ax.scatter([m["latency_ms"]], [m["accuracy"]], marker="*", s=220, color="tab:blue", zorder=5, label="chosen")
    ax.set_xlabel("p50 latency in the search (ms, 1 thread)")
    ax.set_ylabel("distilled accuracy on the select split (%)")
    ax.set_title("Architecture search")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _png(plt, fig)


def size_per_stage(plt: Any, rows: list[dict[str, Any]]) -> str:
    """File size of every model (log scale)."""
    fig, ax = plt.subplots(figsize=(8, 0.8 + 0.45 * len(rows)))
    ax.barh([r["model"] for r in rows], [r["file_size"] / 1e3 for r in rows], color="tab:blue")
    ax.set_xscale("log")
    ax.set_xlabel("file size (kB, log scale)")
    ax.invert_yaxis()
    ax.set_title("Size per stage")
    return _png(plt, fig)


def render(results: dict[str, Any]) -> str:
    """The HTML page of a results.json dict."""
    plt = _pyplot()
    e = html.escape
    rows = results["rows"]
    m = results["machine"]
    images = [
        ("Accuracy vs latency, every model", accuracy_vs_latency(plt, rows)),
        ("Search: candidates and Pareto front", search_front(plt, results["search"])),
        ("Size per stage", size_per_stage(plt, rows)),
    ]
    cols = ["model", "accuracy", "params", "file_size", "p50_ms", "speedup", "smaller"]
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>onnxopt case study</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child{text-align:left}</style>",
        "</head><body><h1>onnxopt case study: VGG teacher to int8 student</h1>",
        f"<p>Machine: {e(str(m['cpu']))}, {e(m['cpu_features'])}, {m['physical_cores']} physical cores; "
        f"onnxruntime {e(m['onnxruntime'])}. Wall time {results['seconds']:.0f} s"
        f"{' (smoke budgets)' if results['smoke'] else ''}, seed {results['seed']}.</p>",
        "<table><tr>" + "".join(f"<th>{c}</th>" for c in cols) + "</tr>",
    ]
    for r in rows:
        cells = [e(r["model"]), f"{r['accuracy']:.2f}%", f"{r['params']:,}", f"{r['file_size'] / 1e3:,.1f} kB",
                 f"{r['p50_ms']:.3f} ms", f"{r['speedup']:.1f}x", f"{r['smaller']:.1f}x"]
        parts.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    parts.append("</table><h2>Targets</h2><ul>")
    for k, v in results["targets"].items():
        parts.append(f"<li>{e(k)}: {'met' if v else 'MISSED'}</li>")
    parts.append("</ul>")
    for w in results["optimize"].get("warnings", []):
        parts.append(f"<p><b>optimize warning:</b> {e(w)}</p>")
    for caption, png in images:
        parts.append(f"<h2>{e(caption)}</h2><img alt='{e(caption)}' src='data:image/png;base64,{png}'>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(results: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write the report atomically."""
    out = Path(path)
    text = render(results)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, out)
    return out
