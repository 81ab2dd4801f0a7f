"""fp32 baseline of the large model (threads 1 vs 2), harness stability, and an A/A check."""

from __future__ import annotations

import statistics

from common import Context, Row, result_metrics, rows_vs_reference

ORDER = 10
TITLE = "fp32 baseline: large model (ResNet-18 style, 1x3x224x224)"
STABILITY_TARGET_PCT = 3.0


def run(ctx: Context) -> list[Row]:
    """Thread sweep, stability of repeated measurements, and two copies of one model side by side."""
    large = ctx.large_model()
    section = "fp32"
    rows: list[Row] = []

    # 1. threads 1 and 2, interleaved in the same rounds: thread-2 vs thread-1 ratio with CI.
    sweep = ctx.bench([large], ["resnet18 fp32"], threads=[1, 2])
    rows += rows_vs_reference(section, sweep, reference=sweep[0])

    # 2. stability: the same model measured 3 times; spread of the three medians.
    #    a) one after the other, a fresh session each (exposed to drift of the machine);
    #    b) three sessions interleaved in the same rounds (what side-by-side comparisons rely on).
    seq = [ctx.bench([large], [f"repeat {i + 1}"], runs=max(10, ctx.runs // 2))[0].stats.p50_ms for i in range(3)]
    inter = [r.stats.p50_ms for r in ctx.bench([large] * 3, ["copy 1", "copy 2", "copy 3"])]
    for kind, p50s in (("sequential", seq), ("interleaved", inter)):
        med = statistics.median(p50s)
        spread = 100 * (max(p50s) - min(p50s)) / med
        ctx.extras.setdefault("harness_spread_pct", {})[kind] = spread
        ctx.extras.setdefault("harness_p50s_ms", {})[kind] = p50s
        ok = spread < STABILITY_TARGET_PCT
        rows.append(
            Row(
                section="harness",
                name=f"stability: 3 {kind} repeats, {ctx.threads} threads",
                metrics={"p50 ms": med, "spread %": spread, "p50s ms": " / ".join(f"{p:.2f}" for p in p50s)},
                note=f"target < {STABILITY_TARGET_PCT:g}%: {'ok' if ok else 'EXCEEDED (noisy machine?)'}",
            )
        )

    # 3. A/A: two copies of one model, interleaved; the ratio should be ~1.0 and not significant.
    a, b = ctx.bench([large, large], ["resnet18 A", "resnet18 A'"])
    (aa,) = rows_vs_reference("harness", [b], reference=a)
    ok = not aa.ratio.significant if aa.ratio else False
    rows.append(
        Row(
            section="harness",
            name=f"A/A: same model twice, {ctx.threads} threads",
            metrics=result_metrics(b),
            ratio=aa.ratio,
            reference=a.label,
            note="ok (CI contains 1.0)" if ok else "CI excludes 1.0: harness bias or a noisy machine",
        )
    )
    return rows
