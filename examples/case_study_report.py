"""The case study's outputs for people: the Markdown table (also written into the README) and an HTML page."""

from __future__ import annotations

import base64
import html
import io
import os
import re
from pathlib import Path
from typing import Any

from onnxopt.optimization.report import write_text

BEGIN = "<!-- case-study-table:begin (written by `make case-study`; do not edit by hand) -->"
END = "<!-- case-study-table:end -->"


def markdown_table(results: dict[str, Any]) -> str:
    """Every model of the run, one row each, the kept one in bold."""
    lines = ["| model | stage | test acc. | select acc. | params | size | predicted | p50 measured | "
             "faster (95% CI) | smaller | verdict |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in results["rows"]:
        lo, hi = r["speedup_ci"]
        name = f"**{r['model']} = final**" if r["final"] else r["model"]
        verdict = "; ".join(v for v in (r["verdict"], "Pareto front" if r["pareto"] else "",
                                        "meets targets" if r["feasible"] and r["stage"] != "1. teacher" else "",
                                        r["note"]) if v)
        lines.append(
            f"| {name} | {r['stage']} | {r['test_accuracy']:.2f}% | {r['select_accuracy']:.2f}% | {r['params']:,} | "
            f"{r['file_size'] / 1e3:,.1f} kB | {r['predicted_ms']:.3f} ms | {r['p50_ms']:.3f} ms | "
            f"{r['speedup']:.1f}x ({lo:.1f}-{hi:.1f}) | {r['smaller']:.1f}x | {verdict} |")
    return "\n".join(lines)


def stage_lines(results: dict[str, Any]) -> list[str]:
    """One line per stage after the teacher: whether it paid (produced the kept model or one it came from)."""
    rows = [r for r in results["rows"] if r["stage"] != "1. teacher"]
    by = {r["model"]: r for r in rows}
    lineage, cur = set(), by.get(results["final"])
    while cur is not None and cur["model"] not in lineage:
        lineage.add(cur["model"])
        cur = by.get(cur.get("parent") or "")
    out = []
    for stage in dict.fromkeys(r["stage"] for r in rows):
        mine = [r for r in rows if r["stage"] == stage]
        paid = [r["model"] for r in mine if r["model"] in lineage]
        if all(not r.get("parent") for r in mine) and results["final"] not in paid:
            out.append(f"- {stage}: the control ({', '.join(r['model'] for r in mine)}: nothing to pay for)")
        elif paid:
            how = "is the kept model" if results["final"] in paid else "is where the kept model came from"
            out.append(f"- {stage}: **paid** ({', '.join(paid)} {how})")
        else:
            why = "; ".join(f"{r['model']}: {r['verdict'] or 'not kept'}" for r in mine)
            out.append(f"- {stage}: did not pay ({why})")
    return out


def summary_lines(results: dict[str, Any]) -> list[str]:
    """The run's settings, the kept model, the targets and the int8 verdict, as Markdown lines."""
    m = results["machine"]
    t = results["targets"]
    final = next(r for r in results["rows"] if r["final"])
    teacher = results["rows"][0]
    lines = [
        f"Seed {results['seed']} (data seed {results['data_seed']}), objective {results['objective']}, "
        f"{m['cpu']} ({m['cpu_features']}), {m['physical_cores']} cores, onnxruntime {m['onnxruntime']}; "
        f"wall time {results['seconds'] / 60:.1f} min{' (--quick)' if results['quick'] else ''}.",
        "",
        f"Kept: **{results['final']}** (stage {results['final_stage']}), sha256 `{results['final_sha256'][:16]}`: "
        f"{final['smaller']:.1f}x smaller ({'met' if t['smaller_20x'] else 'MISSED'}, >= 20x), "
        f"{final['speedup']:.1f}x faster measured ({'met' if t['faster_5x'] else 'MISSED'}, >= 5x), "
        f"{teacher['test_accuracy'] - final['test_accuracy']:.2f} points below the teacher on test "
        f"({'met' if t['within_2_points'] else 'MISSED'}, <= 2).",
    ]
    lines += ["", "Which stage paid (the kept model came from it or from a model it produced):", "",
              *stage_lines(results)]
    if results.get("int8_rejected"):
        lines += ["", f"int8 (auto engine, objective latency): not kept: {results['int8_rejected']}"]
    if results.get("smallest_within_budget"):
        s = results["smallest_within_budget"]
        lines += ["", f"Smallest model within the accuracy budget (objective size): {s['name']}, "
                      f"{s['size_bytes'] / 1e3:,.1f} kB ({s['why']})"]
    return lines


def update_readme(path: str | os.PathLike[str], results: dict[str, Any]) -> Path:
    """Replace the text between the case-study markers of a Markdown file with this run's table."""
    p = Path(path)
    text = p.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise ValueError(f"{p}: no case-study markers ({BEGIN} ... {END}); add them where the table goes")
    block = "\n".join([BEGIN, "", *summary_lines(results), "", markdown_table(results), "", END])
    write_text(p, pattern.sub(lambda _m: block, text, count=1))
    return p


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
    """Every model of the table: test accuracy vs measured p50 latency (one interleaved benchmark)."""
    fig, ax = plt.subplots(figsize=(8, 5))
    for r in rows:
        ax.scatter(r["p50_ms"], r["test_accuracy"], s=90 if r["final"] else 40,
                   marker="*" if r["final"] else "o", color="tab:red" if r["pareto"] else "tab:gray")
        ax.annotate(r["model"], (r["p50_ms"], r["test_accuracy"]), fontsize=7, xytext=(4, 3),
                    textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("p50 latency, batch 1 (ms, log scale)")
    ax.set_ylabel("accuracy on the held-out test split (%)")
    ax.set_title("Every model built (red: Pareto front on select accuracy, predicted latency, size)")
    ax.grid(alpha=0.3)
    return _png(plt, fig)


def search_front(plt: Any, search: dict[str, Any]) -> str:
    """Every search candidate and the Pareto front (select split, cost-model latency)."""
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
    lim = search.get("limits", {}).get("latency_ms")
    if lim:
        ax.axvline(lim, color="tab:orange", ls="--", label="latency limit (5x the teacher)")
    ax.set_xlabel("predicted latency (ms, cost model)")
    ax.set_ylabel("distilled accuracy on the select split (%)")
    ax.set_title("Architecture search")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _png(plt, fig)


def render(results: dict[str, Any]) -> str:
    """The HTML page of a results dict."""
    plt = _pyplot()
    e = html.escape
    rows = results["rows"]
    images = [("Accuracy vs latency, every model", accuracy_vs_latency(plt, rows)),
              ("Search: candidates and Pareto front", search_front(plt, results["search"]))]
    cols = ["model", "stage", "test acc.", "select acc.", "params", "size", "predicted", "p50", "faster", "smaller",
            "verdict"]
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>onnxopt case study</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child{text-align:left}</style>",
        "</head><body><h1>onnxopt case study: VGG teacher to a small student</h1>",
        *[f"<p>{e(line.replace('**', ''))}</p>" for line in summary_lines(results) if line],
        "<table><tr>" + "".join(f"<th>{c}</th>" for c in cols) + "</tr>",
    ]
    for r in rows:
        cells = [r["model"] + (" = final" if r["final"] else ""), r["stage"], f"{r['test_accuracy']:.2f}%",
                 f"{r['select_accuracy']:.2f}%", f"{r['params']:,}", f"{r['file_size'] / 1e3:,.1f} kB",
                 f"{r['predicted_ms']:.3f} ms", f"{r['p50_ms']:.3f} ms", f"{r['speedup']:.1f}x",
                 f"{r['smaller']:.1f}x", "; ".join(v for v in (r["verdict"], r["note"]) if v)]
        parts.append("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in cells) + "</tr>")
    parts.append("</table>")
    for caption, png in images:
        parts.append(f"<h2>{e(caption)}</h2><img alt='{e(caption)}' src='data:image/png;base64,{png}'>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(results: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write the HTML report atomically."""
    out = Path(path)
    write_text(out, render(results))
    return out


def seeds_table(runs: list[dict[str, Any]]) -> str:
    """One row per run (several seeds): the kept model, its stage and the targets, measured."""
    lines = ["| seed | teacher test acc. | kept model (stage) | test acc. | below teacher | faster (95% CI) | "
             "smaller | targets | sha256 | wall time |",
             "|---:|---:|---|---:|---:|---:|---:|---|---|---:|"]
    for r in runs:
        t, f = r["rows"][0], next(x for x in r["rows"] if x["final"])
        lo, hi = f["speedup_ci"]
        met = sum(r["targets"].values())
        lines.append(
            f"| {r['seed']} | {t['test_accuracy']:.2f}% | {r['final']} ({r['final_stage']}) | {f['test_accuracy']:.2f}% | "
            f"{t['test_accuracy'] - f['test_accuracy']:.2f} | {f['speedup']:.1f}x ({lo:.1f}-{hi:.1f}) | "
            f"{f['smaller']:.1f}x | {met}/3 met | `{r['final_sha256'][:12]}` | {r['seconds'] / 60:.1f} min |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Print the per-seed table of several runs: `python examples/case_study_report.py OUT_DIR...`."""
    import json
    import sys

    dirs = argv if argv is not None else sys.argv[1:]
    if not dirs:
        print("usage: case_study_report.py OUT_DIR [OUT_DIR...]  (folders written by case_study.py --out)")
        return 2
    print(seeds_table([json.loads((Path(d) / "results.json").read_text()) for d in dirs]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
