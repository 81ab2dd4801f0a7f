"""`onnxopt optimize`: default recipe on every bench model, channel pruning and --objective size on the large one."""

from __future__ import annotations

import time

from common import Context, Row, result_metrics, rows_vs_reference

from onnxopt.core.model import load_model
from onnxopt.measure.fidelity import load_eval_data
from onnxopt.optimization.recipe import Recipe, parse_recipe
from onnxopt.optimization.run import optimize
from onnxopt.optimization.types import OptimizeConfig, OptimizeResult

ORDER = 50
TITLE = "onnxopt optimize: default recipe (never slower), channel pruning (>= 1.5x), objective size (<= 0.3x file)"
NEVER_SLOWER_HIGH = 1.02
PRUNE_TARGET = 1.5
SIZE_TARGET = 0.3
PRUNE_RATIOS = (0.3, 0.4)


def _prune_recipe(ratio: float) -> Recipe:
    return parse_recipe(
        f'description = "graph optimization + {ratio:.0%} channel pruning"\n'
        f'[[passes]]\nname = "optimize_graph"\n[[passes]]\nname = "prune_channels"\nratio = {ratio}\n'
    )


def _config(ctx: Context, **kw: object) -> OptimizeConfig:
    return OptimizeConfig(bench_runs=ctx.runs, warmup=ctx.warmup, threads=ctx.threads, **kw)  # type: ignore[arg-type]


def _default_row(name: str, r: OptimizeResult) -> Row:
    """The default recipe's final model vs its input, measured inside optimize() (interleaved)."""
    final, original = r.final_stage, r.stages[0]
    metrics: dict[str, float | str] = {
        "p50 ms": final.bench.stats.p50_ms if final.bench else float("nan"),
        "size ratio": final.size_bytes / original.size_bytes,
        "optimize s": r.timings["total"],
        "final": final.name,
    }
    if final.fidelity is not None:
        metrics["cosine"] = final.fidelity.min_cosine
        if final.fidelity.accuracy_drop is not None:
            metrics["acc drop pts"] = final.fidelity.accuracy_drop
    ratio = final.ratio if final is not original else None
    high = ratio.high if ratio is not None else 1.0
    verdict = "ok" if high <= NEVER_SLOWER_HIGH else "MISSED"
    note = f"never slower (CI high <= {NEVER_SLOWER_HIGH}): {verdict}"
    if final is original:
        note += "; the input model was kept"
    for s in r.stages:
        if s.modified and not s.kept and s.ratio is not None:
            note += f"; rejected {s.name} ({s.ratio.ratio:.2f}x the input's latency)"
    return Row("optimize", f"{name}: default recipe", metrics, ratio, f"{name} input", note)


def run(ctx: Context) -> list[Row]:
    """Default recipe on the digits CNN and the large model; pruning and size recipes side by side."""
    rows: list[Row] = []
    digits = load_model(ctx.digits_model)
    val = load_eval_data(digits, ctx.digits_val)
    calib, _ = load_eval_data(digits, ctx.digits_calib)
    t0 = time.perf_counter()
    r = optimize(digits, None, _config(ctx), val=val, calib=calib)
    ctx.log(f"digits default recipe in {time.perf_counter() - t0:.1f} s: final {r.final}")
    rows.append(_default_row("digits CNN", r))

    # The accuracy effect of channel pruning on real labelled data (no fine-tuning).
    for ratio in PRUNE_RATIOS:
        p = optimize(digits, _prune_recipe(ratio), _config(ctx), val=val)
        st = p.final_stage
        f = st.fidelity
        rows.append(
            Row(
                "optimize",
                f"digits CNN channel-pruned {ratio:.0%}",
                {
                    "p50 ms": st.bench.stats.p50_ms if st.bench else float("nan"),
                    "size ratio": st.size_bytes / p.stages[0].size_bytes,
                    "cosine": f.min_cosine if f else float("nan"),
                    "acc drop pts": f.accuracy_drop if f and f.accuracy_drop is not None else float("nan"),
                },
                st.ratio if st is not p.stages[0] else None,
                "digits CNN input",
                "accuracy effect of pruning without fine-tuning (360 labelled val samples)",
            )
        )

    large_path = ctx.large_model()
    large = load_model(large_path)
    t0 = time.perf_counter()
    r = optimize(large, None, _config(ctx))
    ctx.log(f"large default recipe in {time.perf_counter() - t0:.1f} s: final {r.final}")
    rows.append(_default_row("resnet18", r))

    # Opt-in recipes on the large model; verified inside optimize(), measured together below.
    pruned = [optimize(large, _prune_recipe(r), _config(ctx, benchmark=False)) for r in PRUNE_RATIOS]
    size = optimize(large, None, _config(ctx, objective="size", benchmark=False))
    times = ", ".join(f"{p.timings['total']:.1f} s" for p in pruned)
    ctx.log(f"pruned: {times}; size objective: {size.timings['total']:.1f} s")
    results = ctx.bench(
        [large, *(p.model for p in pruned), size.model],
        ["resnet18 fp32", *(f"resnet18 channel-pruned {r:.0%}" for r in PRUNE_RATIOS), "resnet18 --objective size"],
    )
    side = rows_vs_reference("optimize", results, reference=results[0], label_threads=False)
    base = large.ByteSize()
    rows.append(side[0])
    for row, res, opt in zip(side[1:], results[1:], (*pruned, size)):
        fid = opt.final_stage.fidelity
        metrics = {**result_metrics(res), "size ratio": opt.model.ByteSize() / base, "optimize s": opt.timings["total"]}
        if fid is not None:
            metrics["cosine"] = fid.min_cosine
        if opt is not size:
            ok = row.ratio is not None and row.ratio.speedup >= PRUNE_TARGET
            note = f"target >= {PRUNE_TARGET}x faster: {'ok' if ok else 'MISSED'}; accuracy effect: cosine vs fp32 on synthetic inputs"
        else:
            ok = opt.model.ByteSize() / base <= SIZE_TARGET
            note = f"target file <= {SIZE_TARGET}x: {'ok' if ok else 'MISSED'} ({opt.final})"
        rows.append(Row(row.section, row.name, metrics, row.ratio, row.reference, note))
    return rows
