"""Int8 for transformer encoders: per-channel dynamic int8 on the weight MatMuls, sensitive ones in float.

What is quantized: the MatMuls whose B is a constant weight (MatMulConstBOnly), per-channel
symmetric int8 weights, activations quantized per run (dynamic); and the embedding tables
(Gathers of a float [V, H] initializer), stored in int8 with one scale per row when the model
with only them in int8 holds the floor (quantization.sensitivity; in the Candidate as op type
"Gather"). The activation x activation products of attention (Q K^T, A V, inside
com.microsoft.Attention after fusion) stay float. On x86 without VNNI the weights use
reduce_range (7 bits) so that the u8 x s8 pair sums of vpmaddubsw cannot saturate int16.

One engine for the family: optimize's quantize stage calls quantize_transformer, and
`onnxopt quantize --mode auto` on a transformer-family model calls quantize_transformer_auto
(the same search, then the int8 model timed against the input and kept by INT8_MARGIN).

The fidelity floor is held per sample: every sample's output cosine vs the float model must be
>= budget.min_cosine (the project floor takes the mean over samples; a text encoder serves one
sentence at a time, so the worst sentence is what matters). Samples run one at a time (batch 1,
the deployment batch): a dynamic activation scale spans the whole batch, so fidelity measured on
a batch of 16 is not the fidelity of one sentence.

The search is fast: quantization.sensitivity ranks every MatMul by its relative int8 error on the
float model's own activations in one inference pass; then the smallest k such that the model
with the k most sensitive MatMuls in float holds the floor is found by bisection over k, each
step one int8 model (a rewrite of the node list into com.microsoft.DynamicQuantizeMatMul, the op
onnxruntime runs quantize_dynamic's output as; no quantizer run, no files) scored end to end on
the search samples. The result is scored on every sample; if it misses the floor on samples the
search did not see, more nodes go back to float (k grows by half). The configuration is a
quantization.engine.Candidate (recorded for --decisions: a replay rebuilds exactly that model).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from onnx import ModelProto

from onnxopt.core.errors import InvalidInputError
from onnxopt.core.feeds import Feed, feed_samples, first_batch
from onnxopt.core.model import batch_axes, copy_model, graph_outputs
from onnxopt.measure.fidelity import (
    FidelityReport,
    accuracy_of,
    first_samples,
    output_fidelity,
    run_batched,
)
from onnxopt.quantization.evaluate import Budget

log = logging.getLogger(__name__)

SEARCH_SAMPLES = 16  # samples each bisection step is scored on
FINAL_SAMPLES = 64  # samples the result is checked on (at most)
SYNTHETIC_SAMPLES = 16  # text-like samples synthesized without --data
SENSITIVITY_SAMPLES = 2  # samples the one-pass sensitivity ranking runs
MAX_REBUILDS = 2  # extra steps when the result misses the floor on samples the search did not see


def outputs_at(model: ModelProto, feed: Feed, batch: int) -> list[np.ndarray]:
    """The model's outputs over the feed, run `batch` samples at a time (no custom-op library unless needed)."""
    from onnxopt.core.runtime import SessionConfig, lean_session

    return run_batched(model, feed, batch, session=lean_session(model, SessionConfig(allow_spinning=False)))


def sample_cosines(ref: list[np.ndarray], out: list[np.ndarray]) -> np.ndarray:
    """Per-sample cosine of the flattened outputs (the lowest over the model's float outputs)."""
    per_output = []
    for r, o in zip(ref, out):
        if not np.issubdtype(r.dtype, np.floating) or r.ndim == 0:
            continue
        a = r.reshape(r.shape[0], -1).astype(np.float64)
        b = o.reshape(o.shape[0], -1).astype(np.float64)
        na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            cos = np.where((na == 0) & (nb == 0), 1.0, np.einsum("ij,ij->i", a, b) / (na * nb))
        per_output.append(np.nan_to_num(np.clip(cos, -1.0, 1.0), nan=0.0))
    if not per_output:
        return np.ones(1)
    return np.min(np.stack(per_output), axis=0)


@dataclass(frozen=True)
class Score:
    """Fidelity of a candidate: the project's FidelityReport plus the per-sample cosines."""

    fidelity: FidelityReport
    cosines: np.ndarray

    def holds(self, budget: Budget) -> bool:
        """budget holds, with its cosine limit applied to every sample."""
        floor = budget.min_cosine if budget.checks_cosine else None
        return budget.holds(self.fidelity) and (floor is None or float(self.cosines.min()) >= floor)


class SampleScorer:
    """Scores candidates against the float model on a feed, sample by sample at `batch`."""

    def __init__(self, reference: ModelProto, feed: Feed, labels: np.ndarray | None, batch: int) -> None:
        self.feed, self.labels, self.batch = feed, labels, batch
        self.samples = feed_samples(feed, batch_axes(reference))
        self._specs = graph_outputs(reference)
        self._ref = outputs_at(reference, feed, batch)
        self._acc = accuracy_of(self._ref[0], labels) if labels is not None else None

    def subset(self, n: int) -> SampleScorer:
        """The scorer over the first n samples (the reference outputs reused)."""
        sub = object.__new__(SampleScorer)
        sub.feed = first_batch(self.feed, n, None)
        sub.labels = self.labels[:n] if self.labels is not None else None
        sub.batch, sub.samples, sub._specs = self.batch, min(n, self.samples), self._specs
        sub._ref = first_samples(self._ref, n, self.samples)
        sub._acc = accuracy_of(sub._ref[0], sub.labels) if sub.labels is not None else None
        return sub

    def score(self, candidate: ModelProto) -> Score:
        """Fidelity of a candidate with the reference's inputs and outputs."""
        out = outputs_at(candidate, self.feed, self.batch)
        fids = tuple(output_fidelity(s.name, r, c, s) for s, r, c in zip(self._specs, self._ref, out))
        acc = accuracy_of(out[0], self.labels) if self.labels is not None else None
        return Score(FidelityReport(fids, self.samples, self._acc, acc), sample_cosines(self._ref, out))


def eval_feed(model: ModelProto, val: tuple[Feed, np.ndarray | None] | None, calib: Any, *,
              samples: int, overrides: Any, seed: int) -> tuple[Feed, np.ndarray | None, str]:
    """(inputs, labels, where they came from): --data, else calibration samples, else text-like
    synthetic token ids (core.tokens; raises asking for --data when none can be made)."""
    from onnxopt.core.tokens import token_feed

    if val is not None:
        return val[0], val[1], "validation data"
    if isinstance(calib, dict):
        return first_batch(calib, FINAL_SAMPLES, batch_axes(model)), None, "calibration data"
    if calib is not None and hasattr(calib, "head"):
        return calib.head(FINAL_SAMPLES), None, "calibration data"
    feed = token_feed(model, samples=samples, overrides=overrides, seed=seed)
    return feed, None, f"{samples} synthetic text-like samples (core.tokens: [CLS] Zipf word ids [SEP], mask of ones)"


def _candidate(config: Any, cpu: Any) -> Any:
    """The quantizer configuration: dynamic, int8 per-channel weights on MatMul; reduce_range on
    x86 without VNNI (config's own settings when the user chose dynamic mode explicitly)."""
    from onnxopt.quantization.engine import Candidate

    if config.mode == "dynamic":
        return Candidate("dynamic", weight_type=config.weight_type, per_channel=config.per_channel,
                         reduce_range=config.reduce_range, op_types=config.op_types or ("MatMul",),
                         exclude_nodes=config.exclude_nodes)
    reduce_range = not cpu.vnni and not cpu.is_arm
    return Candidate("dynamic", weight_type="int8", per_channel=True, reduce_range=reduce_range,
                     op_types=("MatMul",), exclude_nodes=config.exclude_nodes)


Scored = dict[tuple[int, bool], tuple[ModelProto, Score]]  # (float MatMuls, int8 embeddings) -> model, score


def search_float_nodes(model: ModelProto, ranked: list[str], scorer: SampleScorer, budget: Budget,
                       reduce_range: bool, steps: list[dict[str, Any]], scored: Scored | None = None,
                       embeddings: bool = False) -> tuple[int, bool]:
    """(k, embeddings): the smallest k such that the int8 model with ranked[:k] in float holds the
    budget (bisection over k, assuming more float nodes never hurt), and whether the embedding
    tables stay int8 (asked for, and the model with only them in int8 holds the budget); steps
    gets one row per evaluation, scored (when given) every model built and its score."""
    from onnxopt.quantization.sensitivity import emulated_model

    def holds(k: int, emb: bool) -> bool:
        t0 = time.perf_counter()
        q = emulated_model(model, ranked[k:], reduce_range=reduce_range, embeddings=emb)
        s = scorer.score(q)
        if scored is not None:
            scored[(k, emb)] = (q, s)
        ok = s.holds(budget)
        steps.append({"float_nodes": k, "int8_embeddings": emb, "min_sample_cosine": float(s.cosines.min()),
                      "meets_budget": ok, "accuracy_drop": s.fidelity.accuracy_drop,
                      "seconds": round(time.perf_counter() - t0, 2)})
        return ok

    if holds(0, embeddings):
        return 0, embeddings
    if embeddings and ranked and not holds(len(ranked), True):
        embeddings = False  # the int8 tables alone miss the floor: they stay float
    lo, hi = 0, len(ranked)  # holds(lo) is False; hi (every MatMul in float) holds
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if holds(mid, embeddings):
            hi = mid
        else:
            lo = mid
    return hi, embeddings


def quantize_transformer(
    model: ModelProto,
    config: Any,
    *,
    val: tuple[Feed, np.ndarray | None] | None = None,
    calib: Any = None,
    budget: Budget | None = None,
    batch: int = 1,
    overrides: Any = None,
    synthetic_samples: int = SYNTHETIC_SAMPLES,
) -> Any:
    """Quantize a transformer encoder (module docstring); returns a quantization.result.QuantizeResult.

    config: a QuantizeConfig (mode auto: search; mode dynamic: exactly its configuration, scored).
    budget: the fidelity floor (default: config's, else cosine >= 0.99), each sample must hold it.
    batch: the deployment batch fidelity is measured at.
    """
    from onnxopt.core.cpu import detect_cpu
    from onnxopt.quantization.auto import winner_entry
    from onnxopt.quantization.config import DEFAULT_AUTO_COSINE, _config_dict
    from onnxopt.quantization.engine import model_size, quant_ops_in
    from onnxopt.quantization.result import QuantizeResult, int8_floor
    from onnxopt.quantization.sensitivity import (
        embedding_gathers,
        local_errors,
        name_nodes,
        rank,
        weight_matmuls,
    )

    t_start = time.perf_counter()
    already = quant_ops_in(model)
    if already and not config.force:
        raise InvalidInputError("the model is already quantized: nothing to do; pass --force to quantize anyway")
    budget = budget if budget is not None and budget.active else config.budget
    if not budget.active:
        budget = Budget(min_cosine=DEFAULT_AUTO_COSINE)
    cpu = detect_cpu()
    original = model  # never modified: read only
    work = name_nodes(model)
    feed, labels, source = eval_feed(work, val, calib, samples=synthetic_samples, overrides=overrides, seed=config.seed)
    labels = labels[:FINAL_SAMPLES] if labels is not None else None
    scorer = SampleScorer(original, first_batch(feed, FINAL_SAMPLES, batch_axes(original)), labels, batch)
    search = scorer.subset(min(SEARCH_SAMPLES, scorer.samples))
    cand = _candidate(config, cpu)
    nodes = [n for n in weight_matmuls(work) if n.node not in cand.exclude_nodes]
    if not nodes:
        raise InvalidInputError("no MatMul with a constant weight to quantize: the model has nothing int8 would speed up")
    report: dict[str, Any] = {"engine": "transformer", "notes": [], "search": []}
    if val is None and calib is None:
        report["notes"].append("no calibration or validation data: fidelity measured on synthetic text-like token ids")
    scored: Scored = {}  # the search's models, when scored on every sample
    t0 = time.perf_counter()
    if config.mode == "auto":
        errors = local_errors(work, first_batch(feed, SENSITIVITY_SAMPLES, batch_axes(work)), nodes,
                              reduce_range=cand.reduce_range, batch=batch)
        ranked = [n for n, _ in rank(errors)]
        report["sensitivity"] = [{"node": n, "relative_error": round(e, 8)} for n, e in rank(errors)]
        tables = bool(embedding_gathers(work))
        k, tables = search_float_nodes(work, ranked, search, budget, cand.reduce_range, report["search"],
                                       scored if search.samples == scorer.samples else None, embeddings=tables)
        if tables:
            cand = replace(cand, op_types=(*cand.op_types, "Gather"))
    else:
        ranked, k = [], 0
    report["search_seconds"] = round(time.perf_counter() - t0, 2)
    built, score, k = _build_holding(work, cand, ranked, k, scorer, budget, report, scored)
    meets = score.holds(budget)
    cand = built.cand
    entry = winner_entry(built)
    per_sample = [round(float(c), 6) for c in score.cosines]
    size_before, size_after = model_size(original), model_size(built.model)  # ByteSize: ~0.3 s on 90 MB
    report.update(entry)
    report.update({
        "winner": cand.name,
        "candidates": [{"name": cand.name, "candidate": cand.to_dict(), "status": "ok", "size": size_after,
                        "fidelity": score.fidelity.to_dict(), "meets_budget": meets}],
        "why": _why(cand, k, len(nodes), score, budget, meets, config.mode),
        "per_sample_cosine": per_sample,
        "timed": {"batch": batch, "samples": scorer.samples, "source": source},
        "mode": "dynamic", "objective": config.objective, "config": _config_dict(config), "cpu": cpu.to_dict(),
        "budget": budget.describe() + " (every sample)", "meets_budget": meets, "quantized": True,
        "fidelity_data": {"source": source, "samples": scorer.samples, "labels": labels is not None},
        "calibration": None, "size_before": size_before, "size_after": size_after,
        "size_ratio": size_after / max(1, size_before), "int8_floor": int8_floor(original),
        "seconds": round(time.perf_counter() - t_start, 2),
    })
    return QuantizeResult(built.model, True, meets, report)


def _build_holding(work: ModelProto, cand: Any, ranked: list[str], k: int, scorer: SampleScorer, budget: Budget,
                   report: dict[str, Any], scored: Scored) -> tuple[Any, Score, int]:
    """The int8 model with ranked[:k] (and the configuration's excluded nodes) in float, scored on
    every sample; while it misses the budget (and the search was ours to make), more nodes go back
    to float (k grows by half)."""
    from onnxopt.quantization.fallback import Built
    from onnxopt.quantization.sensitivity import embedding_gathers, emulated_model, weight_matmuls

    names = [n.node for n in weight_matmuls(work)]
    tables = "Gather" in cand.op_types
    lookups = [e.node for e in embedding_gathers(work)] if tables else []
    for attempt in range(MAX_REBUILDS + 1):
        c = cand.with_excluded(ranked[:k]) if k else cand
        t0 = time.perf_counter()
        int8 = [n for n in names if n not in c.exclude_nodes]
        if (k, tables) in scored:  # the search scored this very model on every sample already
            q, score = scored[(k, tables)]
        else:
            q = emulated_model(work, int8, reduce_range=c.reduce_range, embeddings=tables)
            score = scorer.score(q)
            report["search"].append({"float_nodes": k, "final": True, "samples": scorer.samples,
                                     "min_sample_cosine": float(score.cosines.min()),
                                     "meets_budget": score.holds(budget), "seconds": round(time.perf_counter() - t0, 2)})
        ok = score.holds(budget)
        left = [{"node": n, "op": "MatMul", "reason": "kept in float (excluded or returned to float for accuracy)"}
                for n in names if n in c.exclude_nodes]
        built = Built(c, q, int8 + lookups, left, score.fidelity, "fused" if _fused(work) else "input")
        if ok or not ranked or k >= len(ranked) - 1 or attempt == MAX_REBUILDS:
            return built, score, k
        k = min(len(ranked) - 1, k + max(1, k // 2))
        report["notes"].append(f"missed the floor on all {scorer.samples} samples; {k} nodes returned to float")
    raise AssertionError("unreachable")


def _fused(model: ModelProto) -> bool:
    return any(n.domain == "com.microsoft" and n.op_type == "Attention" for n in model.graph.node)


def _why(cand: Any, k: int, n: int, score: Score, budget: Budget, meets: bool, mode: str) -> str:
    worst = float(score.cosines.min())
    if mode == "dynamic":
        head = f"{cand.name} as asked"
    elif k == 0:
        head = f"{cand.name}: every weight MatMul ({n}) in int8 holds the floor"
    else:
        head = f"{cand.name}: {n - k} of {n} weight MatMuls in int8, the {k} most sensitive kept in float"
    if "Gather" in cand.op_types:
        head += "; embedding tables in int8 (one scale per row)"
    tail = f"lowest per-sample cosine {worst:.4f} ({budget.describe()} on every sample)"
    return f"{head}; {tail}" + ("" if meets else ": the floor is NOT met")


def quantize_transformer_auto(model: ModelProto, config: Any, *, calib: Any = None,
                              val: tuple[Feed, np.ndarray | None] | None = None, bench: Any = None,
                              budget: Budget | None = None) -> Any:
    """`onnxopt quantize --mode auto` on a transformer encoder: quantize_transformer (the engine
    optimize uses), then the int8 model timed against the input, interleaved at the deployment
    batch; under objective latency it is kept only when clearly faster (the CI upper end of
    int8 / input <= INT8_MARGIN, quantize --mode auto's rule), else the input is returned and the
    int8 model is the runner-up. Returns a quantization.result.QuantizeResult."""
    from onnxopt.core import progress
    from onnxopt.measure.benchmark import BenchConfig, benchmark, feed_shapes, timing_feed
    from onnxopt.measure.stats import latency_ratio
    from onnxopt.quantization.auto import _ratio_dict
    from onnxopt.quantization.calibration import check_samples
    from onnxopt.quantization.config import INT8_MARGIN
    from onnxopt.quantization.result import QuantizeResult

    t0 = time.perf_counter()
    if val is not None:
        check_samples(model, val[0], "validation data")
    bench = bench or BenchConfig()
    progress.report("quantize: transformer encoder: ranking MatMul sensitivity, searching the float set")
    result = quantize_transformer(model, config, val=val, calib=calib, budget=budget, batch=bench.batch,
                                  overrides=bench.shape_overrides)
    rep = dict(result.report)
    feed, _, _ = eval_feed(model, val, calib, samples=1, overrides=bench.shape_overrides, seed=config.seed)
    timed = timing_feed(model, feed, batch=bench.batch, overrides=bench.shape_overrides, seed=bench.seed)
    name = rep["winner"]
    for runs in (config.final_runs, 2 * config.final_runs):
        progress.report(f"quantize: timing {name} against the input ({runs} runs each)")
        res = benchmark([model, result.model], replace(bench, runs=runs, duration_s=None), feed=timed,
                        names=["input", name])
        ratio = latency_ratio(res[1], res[0])
        if ratio.high <= INT8_MARGIN or ratio.low > INT8_MARGIN:  # shown either way: no second round
            break
        rep["notes"].append(f"{name} vs the input was unclear in {runs} rounds ({ratio.describe()}); measured again "
                            f"with {2 * runs} rounds")
    rep["candidates"][0]["final"] = _ratio_dict(ratio)
    rep.update({"latency": _ratio_dict(ratio), "final_ms": {"input": res[0].stats.p50_ms, name: res[1].stats.p50_ms},
                "timed_shapes": {k: list(v) for k, v in feed_shapes(timed).items()}, "mode": "auto",
                "seconds": round(time.perf_counter() - t0, 2)})
    if config.objective == "size" or ratio.high <= INT8_MARGIN:
        rep["why"] += f"; {ratio.describe()} vs the input"
        return QuantizeResult(result.model, True, result.meets_budget, rep)
    rep["notes"].append(f"{name} was not clearly faster than the input ({ratio.describe()}; int8 is kept only when "
                        f"the CI upper end is <= {INT8_MARGIN}): returning the input unchanged")
    rep["runner_up"] = {"name": name, **{k: rep[k] for k in ("fidelity", "nodes", "quantizer", "built_from")}}
    acc = rep["fidelity"]["accuracy_reference"]
    rep.update({"winner": "input", "quantized": False, "meets_budget": True, "size_after": rep["size_before"],
                "size_ratio": 1.0, "latency": {"ratio": 1.0, "describe": "the input itself"},
                "why": f"no int8 configuration is clearly faster than the input here: {rep['why']}",
                "nodes": {"quantized": [], "float": []},
                "fidelity": {"outputs": [], "samples": rep["fidelity"]["samples"], "accuracy_reference": acc,
                             "accuracy_candidate": acc, "accuracy_drop": 0.0 if acc is not None else None,
                             "min_cosine": 1.0}})
    return QuantizeResult(copy_model(model), False, True, rep, runner_up=result.model)
