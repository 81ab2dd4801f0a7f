"""`--mode auto`: build CPU-ordered int8 candidates, measure them (brief, then finalists longer), keep the best."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnx import ModelProto

from onnxopt.core import progress
from onnxopt.core.cpu import CpuFeatures
from onnxopt.measure.benchmark import BenchConfig, BenchResult, benchmark, timing_feed
from onnxopt.measure.stats import NOT_SLOWER, RatioCI, latency_ratio
from onnxopt.quantization.config import INT8_MARGIN
from onnxopt.quantization.engine import Candidate, CandidateFailed
from onnxopt.quantization.evaluate import Budget
from onnxopt.quantization.fallback import Built, fallback
from onnxopt.quantization.weight_only import matmul_heavy

if TYPE_CHECKING:
    from onnxopt.quantization.config import QuantizeConfig
    from onnxopt.quantization.session import QuantSession

log = logging.getLogger(__name__)

GROUP_SHARE = 0.5  # file mode: the candidates timed at once in the brief round, as a share of the input's size


def candidate_grid(cpu: CpuFeatures, *, has_calib: bool, config: QuantizeConfig,
                   matmul_heavy: bool = False) -> list[Candidate]:
    """The candidates to try, best first for this CPU (or onnxruntime's whole grid when config.grid='full');
    matmul_heavy adds weight-only MatMulNBits candidates (int4, blocks AUTO_BLOCKS), tried last."""
    grid = _int8_grid(cpu, has_calib=has_calib, config=config)
    if matmul_heavy and (not config.op_types or "MatMul" in config.op_types):
        grid += _weight_only_grid(config)
    return grid


def _weight_only_grid(config: QuantizeConfig) -> list[Candidate]:
    from onnxopt.quantization.weight_only import AUTO_BLOCKS

    common = {"exclude_nodes": config.exclude_nodes, "algorithm": config.algorithm}
    if config.grid == "full":
        return [Candidate("weight-only", bits=b, block_size=k, accuracy_level=a, **common)  # type: ignore[arg-type]
                for b in (4, 8) for k in AUTO_BLOCKS for a in (4, 0)]
    blocks = sorted(AUTO_BLOCKS, reverse=config.objective == "size")  # size: the bigger block is smaller
    return [Candidate("weight-only", bits=4, block_size=k, accuracy_level=4, **common)  # type: ignore[arg-type]
            for k in blocks]


def _int8_grid(cpu: CpuFeatures, *, has_calib: bool, config: QuantizeConfig) -> list[Candidate]:
    common = {"op_types": config.op_types, "exclude_nodes": config.exclude_nodes, "calib_method": config.calib_method}
    if config.grid == "full":
        dyn = [Candidate("dynamic", weight_type=w, per_channel=pc, reduce_range=rr, **common)  # type: ignore[arg-type]
               for w in ("int8", "uint8") for pc in (False, True) for rr in (False, True)]
        st = [Candidate("static", format=f, activation_type=a, per_channel=pc, reduce_range=rr, **common)  # type: ignore[arg-type]
              for f in ("qdq", "qoperator") for a in ("uint8", "int8") for pc in (False, True) for rr in (False, True)]
    else:
        if cpu.is_arm:
            specs = [("qdq", "int8", False, False), ("qdq", "int8", True, False), ("qoperator", "uint8", False, False)]
        elif cpu.vnni:
            specs = [("qdq", "uint8", False, False), ("qdq", "int8", False, False), ("qdq", "uint8", True, False),
                     ("qoperator", "uint8", False, False)]
        else:  # AVX2 without VNNI: U8S8 with 7-bit weights avoids vpmaddubsw saturation
            specs = [("qdq", "uint8", False, True), ("qdq", "uint8", True, True), ("qoperator", "uint8", False, True),
                     ("qdq", "int8", False, False)]
        st = [Candidate("static", format=f, activation_type=a, per_channel=pc, reduce_range=rr, **common)  # type: ignore[arg-type]
              for f, a, pc, rr in specs]
        dyn = [Candidate("dynamic", per_channel=False, **common), Candidate("dynamic", per_channel=True, **common)]  # type: ignore[arg-type]
        if config.objective == "size":
            dyn.reverse()  # per-channel keeps accuracy at the same size
    if not has_calib:
        return dyn
    return dyn + st if config.objective == "size" else st + dyn


def _row(name: str, status: str, **kw: Any) -> dict[str, Any]:
    d: dict[str, Any] = {"name": name, "status": status}
    d.update(kw)
    return d


def _ratio_dict(r: RatioCI) -> dict[str, Any]:
    return {"ratio": r.ratio, "low": r.low, "high": r.high, "significant": r.significant, "describe": r.describe()}


def _bench(sess: QuantSession, models: list[ModelProto | Path], names: list[str], cfg: BenchConfig, feed: Any
           ) -> list[BenchResult]:
    """benchmark() of models (models[0]: the input). When the float model computes what the input
    does (file mode only: QuantSession.float_is_input) it is not timed apart: one session less
    of the model's size, and float gets the input's samples (a ratio of exactly 1)."""
    if "float" in names and sess.float_is_input:
        i = names.index("float")
        res = benchmark(models[:i] + models[i + 1:], cfg, feed=feed, names=names[:i] + names[i + 1:])
        return [*res[:i], replace(res[0], name="float"), *res[i:]]
    return benchmark(models, cfg, feed=feed, names=names)


def _groups(sizes: list[int], budget: float) -> list[list[int]]:
    """Consecutive groups of indices into sizes, each adding up to at most budget (one model at least)."""
    groups: list[list[int]] = [[]]
    total = 0
    for i, n in enumerate(sizes):
        if groups[-1] and total + n > budget:
            groups.append([])
            total = 0
        groups[-1].append(i)
        total += n
    return groups


@dataclass(frozen=True)
class Timed:
    """One timing round: each model's latency ratio to the input and to float, and its median (ms)."""

    vs_input: dict[str, RatioCI]
    vs_float: dict[str, RatioCI]
    p50_ms: dict[str, float]


def _timed(sess: QuantSession, models: list[ModelProto | Path], names: list[str], sizes: list[int],
           cfg: BenchConfig, feed: Any) -> Timed:
    """Time models (the input, float, then the candidates, whose sizes are `sizes`) interleaved. In
    file mode (a big model) the candidates are timed in groups adding up to at most GROUP_SHARE of
    the input's size, each group beside the input and float and its ratios taken within it (the
    input's and float's from the first group), so that fewer sessions are alive at once."""
    groups = [list(range(len(sizes)))]
    if sess.given.path is not None:
        groups = _groups(sizes, GROUP_SHARE * sess.input_size)
    t = Timed({}, {}, {})
    for group in groups:
        idx = [0, 1, *(2 + i for i in group)]
        res = _bench(sess, [models[i] for i in idx], [names[i] for i in idx], cfg, feed)
        for i, r in zip(idx, res):
            if names[i] not in t.p50_ms:
                t.p50_ms[names[i]] = r.stats.p50_ms
                t.vs_float[names[i]] = latency_ratio(r, res[1])
                if i:
                    t.vs_input[names[i]] = latency_ratio(r, res[0])
    return t


def run_auto(sess: QuantSession, config: QuantizeConfig, budget: Budget, cpu: CpuFeatures, bench: BenchConfig
             ) -> tuple[ModelProto, bool, bool, dict[str, Any], ModelProto | None]:
    """Measure the candidates and return (model, quantized, meets_budget, report, runner_up).

    runner_up: when float (or the input) won on latency, the fastest int8 finalist that holds the
    budget (report['runner_up'] describes it), for a caller that shows it measured and rejected.
    """
    from onnxopt.quantization.session import built_entry

    notes: list[str] = []
    float_model = sess.float_path  # constant-folded, basic level: portable; scored and timed from its file
    float_fid = sess.evaluator.score(float_model)
    rows: dict[str, dict[str, Any]] = {}
    built: dict[str, Built] = {}
    order = candidate_grid(cpu, has_calib=sess.source is not None, config=config,
                           matmul_heavy=matmul_heavy(sess.original))
    if sess.source is None:
        notes.append("no calibration data: static candidates skipped (calibrating on noise wrecks accuracy); "
                     "pass --calib-data to try them")
    first_ok: Built | None = None
    queue = list(order)
    while queue:
        cand = queue.pop(0)
        if cand.name in rows:
            continue
        progress.report(f"quantize: building {cand.name} (candidate {len(rows) + 1}, {len(queue)} more queued)")
        try:
            b = sess.build(cand)
        except CandidateFailed as e:
            rows[cand.name] = _row(cand.name, "failed", candidate=cand.to_dict(), reason=str(e))
            continue
        built[cand.name] = b
        rows[cand.name] = built_entry(b)
        rows[cand.name]["meets_budget"] = budget.holds(b.fidelity)
        if first_ok is None and config.objective == "latency" and config.grid == "auto":
            first_ok = b
            queue.extend(_op_type_partials(b, sess))
    feed = timing_feed(sess.original, sess.evaluator.feed, batch=bench.batch, overrides=bench.shape_overrides,
                       seed=bench.seed)
    quick_cfg = replace(bench, warmup=min(bench.warmup, 2), runs=config.quick_runs, duration_s=None)
    names = ["input", "float"] + list(built)
    models: list[ModelProto | Path] = [sess.input_source, float_model, *(b.source for b in built.values())]
    progress.report(f"quantize: timing {len(models)} models briefly ({config.quick_runs} runs each)")
    if sess.float_is_input:
        notes.append("the graph-optimized float model computes what the input does (same nodes and weights): "
                     "timed once, as the input")
    quick = _timed(sess, models, names, [b.nbytes for b in built.values()], quick_cfg, feed).vs_input
    rows["float"] = _row("float", "ok", size=sess.float_size, fidelity=float_fid.to_dict(),
                         note="onnxruntime basic graph optimization (constant folding), no quantization")
    for n, r in quick.items():
        rows[n]["quick"] = _ratio_dict(r)
    # Accuracy fallback for the fastest over-budget candidate that could beat float.
    # The candidate to repair: the fastest for latency; for size the smallest, ties in grid order,
    # so that a size-objective result never depends on timing noise.
    failing_order = [b for b in built.values() if not budget.holds(b.fidelity)]
    if config.objective == "size":
        failing = sorted(failing_order, key=lambda b: b.nbytes)
    else:
        failing = sorted(failing_order, key=lambda b: quick[b.cand.name].ratio)
    passing = [b for b in built.values() if budget.holds(b.fidelity)]
    if failing and (config.objective == "size" or quick[failing[0].cand.name].ratio < quick["float"].ratio):
        base = failing[0]
        fb_built, fb_ok, fb_report = fallback(base, sess.build, sess.evaluator, budget, sess.local_rank)
        rows[base.cand.name]["fallback"] = fb_report
        if fb_built is not base and fb_built.cand.name not in rows:
            built[fb_built.cand.name] = fb_built
            rows[fb_built.cand.name] = built_entry(fb_built)
            rows[fb_built.cand.name]["meets_budget"] = fb_ok
            if fb_ok:
                passing.append(fb_built)
    if config.objective == "size":
        return (*_pick_size(sess, config, budget, float_model, built, passing, rows, notes, bench, feed), None)
    picked = _pick_latency(sess, config, budget, cpu, float_model, built, passing, quick, rows, notes, bench, feed)
    runner_up = picked[3].get("runner_up")
    return (*picked, built[runner_up["name"]].full() if runner_up else None)


def _op_type_partials(b: Built, sess: QuantSession) -> list[Candidate]:
    """Variants quantizing one op type only, when the candidate quantized several op types."""
    if b.cand.op_types:
        return []
    by_name = {n.name: n.op_type for p in sess.variants[:1] for n in p.model.graph.node}
    by_name.update({n.name: n.op_type for n in sess.variants[-1].model.graph.node})
    ops = sorted({by_name[n] for n in b.quantized_nodes if n in by_name})
    if len(ops) < 2:
        return []
    return [replace(b.cand, op_types=(op,)) for op in ops]


def _finish(rows: dict[str, dict[str, Any]], winner: str, why: str, notes: list[str], final: dict[str, RatioCI],
            extra: dict[str, Any]) -> dict[str, Any]:
    for n, r in final.items():
        if n in rows:
            rows[n]["final"] = _ratio_dict(r)
    ordered = ([rows["float"]] if "float" in rows else []) + [r for n, r in rows.items() if n != "float"]
    report = {"candidates": ordered, "winner": winner, "why": why, "notes": notes}
    report.update(extra)
    return report


def _pick_latency(sess: QuantSession, config: QuantizeConfig, budget: Budget, cpu: CpuFeatures, float_model: Path,
                  built: dict[str, Built], passing: list[Built], quick: dict[str, RatioCI], rows: dict[str, dict[str, Any]],
                  notes: list[str], bench: BenchConfig, feed: Any) -> tuple[ModelProto, bool, bool, dict[str, Any]]:
    # Fallback results were not in the quick round: they go to the final round regardless.
    finalists = sorted(passing, key=lambda b: quick[b.cand.name].ratio if b.cand.name in quick else 0.0)
    finalists = finalists[: config.finalists]
    names = ["input", "float"] + [b.cand.name for b in finalists]
    models: list[ModelProto | Path] = [sess.input_source, float_model, *(b.source for b in finalists)]
    extra: dict[str, Any] = {}
    sizes = [b.nbytes for b in finalists]
    for attempt, runs in enumerate((config.final_runs, 2 * config.final_runs)):
        progress.report(f"quantize: timing {len(finalists)} finalist(s) against float and the input ({runs} runs each)")
        timed = _timed(sess, models, names, sizes, replace(bench, runs=runs, duration_s=None), feed)
        final = timed.vs_input
        ok = [n for n in names[1:] if final[n].high <= NOT_SLOWER]
        unproven = _unproven_win(ok, final, timed.vs_float)
        if ok and not unproven:
            break
        if attempt == 0:  # a noisy machine widens the CIs: measure once more, longer
            what = (f"{unproven} looked faster than float but the CI did not show it" if ok
                    else "no finalist was shown to be as fast as the input")
            notes.append(f"{what} in {runs} rounds; measured again with {2 * runs} rounds")
    extra["final_ms"] = timed.p50_ms
    if not passing:
        notes.append(f"no int8 configuration met the budget ({budget.describe()})" if built
                     else "no int8 configuration could be built (see the candidates' reasons)")
    best = min(ok, key=lambda n: final[n].ratio) if ok else "input"
    input_size = sess.input_size
    bigger = best == "float" and final["float"].high > INT8_MARGIN and sess.float_size > input_size
    if bigger:  # a larger file is worth shipping only for a speedup the CI shows
        notes.append(f"the graph-optimized float model is larger than the input ({sess.float_size:,} vs "
                     f"{input_size:,} bytes) and not clearly faster ({final['float'].describe()}): returning the input")
        best = "input"
    if best not in ("float", "input"):
        best = _clearly_faster(best, timed.vs_float, final, "float" in ok, extra, notes)
    if best in ("float", "input") and finalists:
        fastest = min(finalists, key=lambda b: final[b.cand.name].ratio)
        extra["runner_up"] = {"name": fastest.cand.name, **winner_entry(fastest)}
    if best == "input":
        why = ("no int8 configuration was kept and the graph-optimized float model is larger than the input "
               "without being clearly faster: returning the input unchanged" if bigger else
               "neither the graph-optimized float model nor any int8 candidate was shown to be as fast as the "
               f"input (upper end of the latency-ratio CI <= {NOT_SLOWER}): returning the input unchanged")
        rep = _finish(rows, "input", why, notes, final, extra)
        rep["fidelity"] = sess.evaluator.score(sess.input_source).to_dict()
        rep["latency"] = {"ratio": 1.0, "describe": "the input itself"}
        return sess.input_model(), False, True, rep
    if best == "float":
        faster = [n for n in names[2:] if final[n].ratio < final["float"].ratio]
        why = (f"no int8 configuration is clearly faster than float on this CPU ({cpu.summary}); returning the "
               f"float model after graph optimization: {final['float'].describe()} vs the input")
        if faster:
            why += f" (int8 {', '.join(faster)} looked faster but not by the margin, CI upper end <= {INT8_MARGIN})"
        rep = _finish(rows, "float", why, notes, final, extra)
        rep["fidelity"] = rows["float"]["fidelity"]
        rep["latency"] = _ratio_dict(final["float"])
        rep["nodes"] = {"quantized": [], "float": []}
        return sess.float_model(), False, True, rep
    b = built[best]
    why = (f"{best} is the fastest configuration that holds the budget ({budget.describe()}): "
           f"{final[best].describe()} vs the input, {extra['winner_vs_float']['describe']} vs float")
    if "float" not in ok:
        why += (f"; the float model itself was not shown to be as fast as the input "
                f"(CI upper end {final['float'].high:.3f} > {NOT_SLOWER})")
    rep = _finish(rows, best, why, notes + b.notes, final, extra)
    rep.update(winner_entry(b))
    rep["latency"] = _ratio_dict(final[best])
    return b.full(), True, True, rep


def _unproven_win(ok: list[str], final: dict[str, RatioCI], vs_float: dict[str, RatioCI]) -> str:
    """The fastest int8 finalist when it looks faster than float by the margin but its CI does not
    show it (worth measuring longer), else ''."""
    int8 = [n for n in ok if n != "float"]
    if not int8 or "float" not in ok:
        return ""
    best = min(int8, key=lambda n: final[n].ratio)
    return best if vs_float[best].ratio <= INT8_MARGIN < vs_float[best].high else ""


def _clearly_faster(best: str, vs_float: dict[str, RatioCI], final: dict[str, RatioCI], float_ok: bool,
                    extra: dict[str, Any], notes: list[str]) -> str:
    """best when it is clearly faster (INT8_MARGIN) than float (or than the input when float is not
    as fast as the input), else the model to return instead: 'float' or 'input'."""
    extra["winner_vs_float"] = _ratio_dict(vs_float[best])
    vs = vs_float[best] if float_ok else final[best]
    if vs.high <= INT8_MARGIN:
        return best
    ref = "the float model" if float_ok else "the input"
    notes.append(f"{best} was not clearly faster than {ref} ({vs.describe()}; int8 is kept only when the CI "
                 f"upper end is <= {INT8_MARGIN})")
    return "float" if float_ok else "input"


def winner_entry(b: Built) -> dict[str, Any]:
    """The report keys that say what was built: fidelity, nodes, and the exact quantizer configuration
    (quantizer, built_from) that --decisions replays."""
    return {
        "fidelity": b.fidelity.to_dict(),
        "nodes": {"quantized": b.quantized_nodes, "float": b.float_nodes},
        "quantizer": b.cand.to_dict(),
        "built_from": b.variant,
    }


def _pick_size(sess: QuantSession, config: QuantizeConfig, budget: Budget, float_model: Path,
               built: dict[str, Built], passing: list[Built], rows: dict[str, dict[str, Any]],
               notes: list[str], bench: BenchConfig, feed: Any) -> tuple[ModelProto, bool, bool, dict[str, Any]]:
    meets = True
    if passing:
        win = min(passing, key=lambda b: (b.nbytes, b.cand.name))
        why = f"{win.cand.name} is the smallest configuration that holds the budget ({budget.describe()})"
    elif built:
        win = min(built.values(), key=lambda b: budget.shortfall(b.fidelity))
        meets = False
        why = (f"no configuration met the budget ({budget.describe()}); kept the closest one, {win.cand.name} "
               f"(min cosine {win.fidelity.min_cosine:.4f})")
    else:
        why = "no int8 candidate could be built: returning the graph-optimized float model"
        rep = _finish(rows, "float", why, notes, {}, {})
        rep["fidelity"] = rows["float"]["fidelity"]
        return sess.float_model(), False, True, rep
    final_cfg = replace(bench, runs=config.final_runs, duration_s=None)
    res = _bench(sess, [sess.input_source, win.source], ["input", win.cand.name], final_cfg, feed)
    r = latency_ratio(res[1], res[0])
    if r.significant and r.ratio > 1:
        notes.append(f"the smallest model is SLOWER than the input on this CPU: {r.describe()}")
    rep = _finish(rows, win.cand.name, why, notes + win.notes, {win.cand.name: r}, {})
    rep.update(winner_entry(win))
    rep["latency"] = _ratio_dict(r)
    return win.full(), True, meets, rep
