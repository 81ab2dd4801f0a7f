"""Reports of an optimize() run: JSON, Markdown (CI job summaries) and self-contained HTML with plots.

Every format carries the run's provenance (onnxopt.core.provenance): the input model's name,
sha256 and size, the machine, the software versions, the timed shapes and batch, the date and
the command line or API call, so a reader can tell what was measured.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from pathlib import Path
from typing import Any

from onnxopt.core.errors import MissingExtraError
from onnxopt.core.jsonable import json_default
from onnxopt.core.provenance import Provenance
from onnxopt.measure.plots import require_matplotlib
from onnxopt.optimization.types import OptimizeResult

COLUMNS = ("stage", "size", "p50 ms", "speedup [95% CI]", "min cosine", "top-1 agree", "accuracy", "pass time", "kept")


def provenance_of(
    result: OptimizeResult,
    *,
    model_path: str | os.PathLike[str] | None = None,
    feed: Any = None,
    invocation: str | None = None,
) -> Provenance:
    """The provenance of an optimize() run.

    model_path: the input file (hashed as it is on disk; default: the serialized input model).
    feed: the verification inputs given to optimize() as `val[0]` (the timed shapes come from
    it when the batch axis is dynamic). invocation: the command line; default: the API call.
    """
    from onnxopt.core.provenance import collect, timed_shapes

    original = result.stages[0]
    bench = next((s.bench for s in result.stages if s.bench is not None), None)
    if invocation is None:
        invocation = (
            f"onnxopt.optimize(model, recipe={result.recipe.description or 'custom'!r}, "
            f"config={result.config!r})"
        )
    return collect(
        original.model,
        path=model_path,
        shapes=result.timed_shapes or timed_shapes(original.model, feed),
        batch=bench.batch if bench is not None else 1,
        threads=bench.threads if bench is not None else result.config.threads,
        invocation=invocation,
    )


def report_dict(result: OptimizeResult, provenance: Provenance | None = None, samples: bool = False) -> dict[str, Any]:
    """The JSON report as a dict: the result's fields plus `provenance`."""
    prov = provenance or provenance_of(result)
    return {**result.to_dict(samples=samples), "provenance": prov.to_dict()}


def _size(n: int) -> str:
    if n >= 10**6:
        return f"{n / 1e6:.2f} MB"
    return f"{n / 1e3:.1f} kB"


def stage_rows(result: OptimizeResult) -> list[dict[str, str]]:
    """One dict of display strings per stage (the table every format shows)."""
    stages = result.stages
    original = stages[0]
    ref_acc = next(
        (s.fidelity.accuracy_reference for s in stages if s.fidelity is not None and s.fidelity.accuracy_reference is not None),
        None,
    )
    rows = []
    for s in stages:
        changed = s.modified or s.pass_name is None
        if s is original:
            acc = f"{ref_acc:.2f}%" if ref_acc is not None else "-"
        elif s.fidelity is not None and s.fidelity.accuracy_candidate is not None:
            acc = f"{s.fidelity.accuracy_candidate:.2f}% ({0.0 - s.fidelity.accuracy_drop:+.2f})"
        else:
            acc = "-"
        f = s.fidelity
        top1 = [o.top1_agreement for o in f.outputs if o.top1_agreement is not None] if f is not None else []
        if s is original:
            speed = "1.00x"
        elif s.ratio is not None and changed:
            r = s.ratio
            speed = f"{r.speedup:.2f}x [{1 / r.high:.2f}-{1 / r.low:.2f}]"
        else:
            speed = "-"
        if s is original:
            kept = "final" if result.final == s.name else "input"
        elif s.name == result.final:
            kept = "final"
        elif not changed:
            kept = s.note or "no change"
        else:
            kept = "yes" if s.kept else (s.note or "no")
        rows.append(
            {
                "stage": s.name,
                "size": _size(s.size_bytes) if changed else "-",
                "p50 ms": f"{s.bench.stats.p50_ms:.3f}" if s.bench is not None and changed else "-",
                "speedup [95% CI]": speed,
                "min cosine": "ref" if s is original else (f"{f.min_cosine:.5f}" if f is not None else "-"),
                "top-1 agree": f"{min(top1):.2f}%" if top1 else "-",
                "accuracy": acc,
                "pass time": "-" if s is original else f"{s.wall_s:.2f} s",
                "kept": kept,
            }
        )
    return rows


def headline(result: OptimizeResult) -> list[str]:
    """The lines a user must not miss: warnings (e.g. int8 slower here) and gate failures."""
    lines = [f"WARNING: {w}" for w in result.warnings]
    for g in result.failed_gates:
        lines.append(f"GATE FAILED: {g.describe()}")
    return lines


def summary_line(result: OptimizeResult) -> str:
    """E.g. 'final: quantized (int8 static), 2.10x faster, 0.27x the size'."""
    final, original = result.final_stage, result.stages[0]
    parts = [f"final: {final.name}"]
    if final is not original and final.ratio is not None:
        sp = final.ratio.speedup
        parts.append(f"{sp:.2f}x faster (p50)" if sp >= 1 else f"{1 / sp:.2f}x slower (p50)")
    parts.append(f"{final.size_bytes / max(original.size_bytes, 1):.2f}x the size")
    if result.timed_shapes:
        parts.append("timed at " + ", ".join(f"{k} {'x'.join(map(str, v)) or 'scalar'}"
                                             for k, v in result.timed_shapes.items()))
    parts.append(f"optimize took {result.timings.get('total', 0.0):.1f} s")
    return ", ".join(parts)


def text_summary(result: OptimizeResult) -> str | None:
    """For a text model (token-id inputs): what was timed (batch, sequence length) and the
    per-sample output cosines of the int8 stage (each sample run alone); None for other models."""
    from onnxopt.core.tokens import text_inputs

    roles = text_inputs(result.stages[0].model)
    ids = next((n for n, r in roles.items() if r == "ids"), None)
    if ids is None:
        return None
    shape = result.timed_shapes.get(ids)
    parts = [f"text model: timed at batch {shape[0]}, sequence length {shape[1]}" if shape and len(shape) == 2
             else "text model"]
    q = next((s for s in result.stages if s.report.get("per_sample_cosine") and s.modified), None)
    if q is not None:
        cos = sorted(q.report["per_sample_cosine"])
        timed = q.report.get("timed", {})
        shown = " ".join(f"{c:.4f}" for c in cos[:8]) + (" ..." if len(cos) > 8 else "")
        parts.append(f"per-sample output cosine of {q.name} ({len(cos)} samples at batch {timed.get('batch', 1)}, "
                     f"lowest first): min {cos[0]:.4f}, median {cos[len(cos) // 2]:.4f} [{shown}]")
    return "; ".join(parts)


def to_json(result: OptimizeResult, samples: bool = True, provenance: Provenance | None = None) -> str:
    """The full result as indented JSON, with its provenance (schema: README, "Reports")."""
    return json.dumps(report_dict(result, provenance, samples=samples), indent=2, default=_default)


def _default(o: Any) -> Any:
    try:
        return json_default(o)
    except TypeError:
        return str(o)


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def to_markdown(result: OptimizeResult, title: str = "onnxopt optimize", provenance: Provenance | None = None) -> str:
    """A GitHub-flavoured Markdown report (fits $GITHUB_STEP_SUMMARY)."""
    prov = provenance or provenance_of(result)
    lines = [f"### {title}", "", _md_escape(prov.headline()), ""]
    status = "passed" if result.gates_passed else "FAILED"
    if result.gates:
        lines.append(f"**Gates {status}**")
        lines.append("")
        for g in result.gates:
            mark = "✅" if g.passed else "❌"
            lines.append(f"- {mark} {_md_escape(g.describe())}")
        lines.append("")
    for h in result.warnings:
        lines.append(f"> **Warning:** {_md_escape(h)}")
        lines.append("")
    rows = stage_rows(result)
    lines.append("| " + " | ".join(COLUMNS) + " |")
    lines.append("|" + "|".join("---" for _ in COLUMNS) + "|")
    for r in rows:
        lines.append("| " + " | ".join(_md_escape(r[c]) for c in COLUMNS) + " |")
    lines.append("")
    lines.append(_md_escape(summary_line(result)) + ".")
    lines.append("")
    text = text_summary(result)
    if text:
        lines += [_md_escape(text) + ".", ""]
    t = result.timings
    lines.append(
        f"Verification data: {_md_escape(result.data)}. Wall time: passes {t.get('passes', 0):.2f} s, "
        f"verify {t.get('verify', 0):.2f} s, benchmark {t.get('benchmark', 0):.2f} s, total {t.get('total', 0):.2f} s. "
        "Speedup: p50 of the input / p50 of the stage, measured interleaved; 95% bootstrap CI."
    )
    lines.append("")
    lines += ["| provenance | |", "|---|---|"]
    lines += [f"| {label} | {_md_escape(_md_code(text) if label in _CODE else text)} |" for label, text in prov.summary_lines()]
    lines.append("")
    return "\n".join(lines)


_CODE = ("sha256", "invocation")


def _md_code(text: str) -> str:
    tick = "``" if "`" in text else "`"
    return f"{tick}{text}{tick}"


def check_html_available() -> None:
    """Raise MissingExtraError now (before any work) when HTML reports cannot be drawn."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise MissingExtraError("matplotlib", "report")


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    return base64.b64encode(buf.getvalue()).decode("ascii")


def plots(result: OptimizeResult) -> dict[str, str]:
    """Base64 PNGs: latency distributions per stage and per-stage bars (latency, size)."""
    plt = require_matplotlib()
    measured = [s for s in result.stages if s.bench is not None and (s.modified or s.pass_name is None)]
    out: dict[str, str] = {}
    if measured:
        fig, ax = plt.subplots(figsize=(8, 0.6 + 0.7 * len(measured)))
        data = [list(s.bench.samples_ms) for s in measured]
        try:
            ax.boxplot(data, orientation="horizontal", showfliers=True)
        except TypeError:  # matplotlib < 3.10
            ax.boxplot(data, vert=False, showfliers=True)
        ax.set_yticks(range(1, len(measured) + 1), [s.name for s in measured])
        ax.set_xscale("log")  # outliers from a busy machine would squash the boxes otherwise
        ax.set_xlabel("latency per inference (ms, log scale), interleaved runs")
        ax.set_title("Latency distribution per stage")
        ax.invert_yaxis()
        out["latency_distribution"] = _png(fig)
        plt.close(fig)
    stages = [s for s in result.stages if s.modified or s.pass_name is None]
    fig, axes = plt.subplots(1, 2, figsize=(10, 0.8 + 0.6 * len(stages)))
    names = [s.name for s in stages]
    colors = ["#2b8a3e" if s.name == result.final else ("#adb5bd" if not s.kept else "#1c7ed6") for s in stages]
    p50 = [s.bench.stats.p50_ms if s.bench is not None else 0.0 for s in stages]
    axes[0].barh(names, p50, color=colors)
    axes[0].set_xlabel("p50 latency (ms)")
    axes[0].invert_yaxis()
    axes[1].barh(names, [s.size_bytes / 1e6 for s in stages], color=colors)
    axes[1].set_xlabel("size (MB)")
    axes[1].invert_yaxis()
    axes[1].set_yticks([])
    fig.suptitle("Per stage (green: final; grey: rejected)")
    out["stages"] = _png(fig)
    plt.close(fig)
    return out


def to_html(result: OptimizeResult, title: str = "onnxopt optimize", provenance: Provenance | None = None) -> str:
    """A self-contained HTML page: table, gates, warnings, embedded PNG plots and provenance."""
    images = plots(result)
    prov = provenance or provenance_of(result)
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        "<html><head><meta charset='utf-8'>",
        f"<title>{e(title)}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1100px}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
        "td:first-child,th:first-child{text-align:left}.warn{background:#fff3bf;padding:8px;font-weight:bold}"
        ".fail{color:#c92a2a;font-weight:bold}.pass{color:#2b8a3e}"
        ".provenance td,.provenance th{text-align:left}.provenance code{word-break:break-all}</style>",
        "</head><body>",
        f"<h1>{e(title)}</h1>",
        f"<p class='provenance'>{e(prov.headline())}</p>",
    ]
    for w in result.warnings:
        parts.append(f"<p class='warn'>Warning: {e(w)}</p>")
    if result.gates:
        parts.append("<h2>Gates</h2><ul>")
        for g in result.gates:
            cls = "pass" if g.passed else "fail"
            parts.append(f"<li class='{cls}'>{'PASS' if g.passed else 'FAIL'}: {e(g.describe())}</li>")
        parts.append("</ul>")
    parts.append("<h2>Stages</h2><table><tr>" + "".join(f"<th>{e(c)}</th>" for c in COLUMNS) + "</tr>")
    for r in stage_rows(result):
        parts.append("<tr>" + "".join(f"<td>{e(r[c])}</td>" for c in COLUMNS) + "</tr>")
    parts.append("</table>")
    parts.append(f"<p>{e(summary_line(result))}. Verification data: {e(result.data)}.</p>")
    for key, caption in (("latency_distribution", "Latency distributions"), ("stages", "Per-stage latency and size")):
        if key in images:
            parts.append(f"<h2>{e(caption)}</h2><img alt='{e(caption)}' src='data:image/png;base64,{images[key]}'>")
    parts.append("<h2>Recipe</h2><pre>" + e(result.recipe.to_toml()) + "</pre>")
    parts.append("<h2>Provenance</h2><table class='provenance'>")
    for label, text in prov.summary_lines():
        value = f"<code>{e(text)}</code>" if label in _CODE else e(text)
        parts.append(f"<tr><th>{e(label)}</th><td>{value}</td></tr>")
    parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write a report atomically (temp file beside it, then rename)."""
    import tempfile

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", dir=p.parent)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p
