"""Int8 quantization with onnxruntime: dynamic, static (calibrated), or auto (measure and pick), accuracy-aware."""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import ModelProto

from onnxopt.benchmark import BenchConfig, benchmark, latency_ratio
from onnxopt.calibration import CalibrationSource, check_samples, fixed_batch, from_feed
from onnxopt.cpu import detect_cpu
from onnxopt.errors import InvalidInputError, UnsupportedModelError
from onnxopt.feeds import Feed, synthesize_feed
from onnxopt.model import copy_model, op_histogram
from onnxopt.quantize_engine import (
    Candidate,
    CandidateFailed,
    Prepared,
    build,
    check_opset,
    check_runs,
    model_size,
    node_changes,
    prepare,
    quant_ops_in,
    require_min_opset,
)
from onnxopt.quantize_eval import Budget, Evaluator
from onnxopt.quantize_fallback import Built, fallback

log = logging.getLogger(__name__)

MODES = ("auto", "dynamic", "static")
FORMATS = ("qdq", "qoperator")
QTYPES = ("int8", "uint8")
CALIB_METHODS = ("minmax", "entropy", "percentile")
OBJECTIVES = ("latency", "size")
EVAL_SAMPLES = 256  # fidelity samples taken from the calibration data when no validation data is given
DEFAULT_AUTO_COSINE = 0.99  # the accuracy guard of --mode auto when no budget is given


def _choice(name: str, value: str, options: tuple[str, ...]) -> None:
    if value not in options:
        raise InvalidInputError(f"{name} {value!r}: choose one of {', '.join(options)}")


@dataclass(frozen=True)
class QuantizeConfig:
    """What to quantize and how; `mode="auto"` measures candidates and keeps the best for the objective."""

    mode: str = "auto"  # auto | dynamic | static
    format: str = "qdq"  # qdq | qoperator (static)
    per_channel: bool = False
    reduce_range: bool = False
    weight_type: str = "int8"
    activation_type: str = "int8"
    calib_method: str = "minmax"
    calib_samples: int = 200
    op_types: tuple[str, ...] = ()
    exclude_nodes: tuple[str, ...] = ()
    objective: str = "latency"  # latency | size
    max_accuracy_drop: float | None = None
    min_cosine: float | None = None
    force: bool = False
    seed: int = 0
    grid: str = "auto"  # auto: a CPU-ordered shortlist | full: onnxruntime's whole quantizer grid
    quick_runs: int = 10  # auto: timed rounds per candidate in the first, brief benchmark
    final_runs: int = 30  # auto: timed rounds for the finalists
    finalists: int = 3  # auto: int8 candidates benchmarked longer (plus the float model)

    def __post_init__(self) -> None:
        _choice("--mode", self.mode, MODES)
        _choice("--format", self.format, FORMATS)
        _choice("--weight-type", self.weight_type, QTYPES)
        _choice("--activation-type", self.activation_type, QTYPES)
        _choice("--calib-method", self.calib_method, CALIB_METHODS)
        _choice("--objective", self.objective, OBJECTIVES)
        _choice("grid", self.grid, ("auto", "full"))
        if self.mode == "static" and self.activation_type == "int8" and self.weight_type == "uint8":
            raise InvalidInputError(
                "onnxruntime does not support int8 activations with uint8 weights: use --weight-type int8 "
                "or --activation-type uint8"
            )
        if self.calib_samples < 1:
            raise InvalidInputError(f"--calib-samples {self.calib_samples}: must be >= 1 (200 is a good default)")
        if self.max_accuracy_drop is not None and self.max_accuracy_drop < 0:
            raise InvalidInputError(f"--max-accuracy-drop {self.max_accuracy_drop}: must be >= 0 percentage points")
        if self.min_cosine is not None and not 0 < self.min_cosine <= 1:
            raise InvalidInputError(f"--min-cosine {self.min_cosine}: must be in (0, 1], e.g. 0.99")
        if self.quick_runs < 2 or self.final_runs < 2 or self.finalists < 1:
            raise InvalidInputError("quick_runs and final_runs must be >= 2 and finalists >= 1")

    @property
    def budget(self) -> Budget:
        """The accuracy budget given by the user (may be empty)."""
        return Budget(self.max_accuracy_drop, self.min_cosine)

    def candidate(self) -> Candidate:
        """The single quantizer configuration of mode dynamic/static."""
        return Candidate(
            mode=self.mode,
            format=self.format if self.mode == "static" else "qdq",
            activation_type=self.activation_type,
            weight_type=self.weight_type,
            per_channel=self.per_channel,
            reduce_range=self.reduce_range,
            op_types=self.op_types,
            exclude_nodes=self.exclude_nodes,
            calib_method=self.calib_method,
        )


@dataclass(frozen=True)
class QuantizeResult:
    """The model to keep, whether it holds int8 nodes, whether the budget holds, and the report."""

    model: ModelProto
    quantized: bool
    meets_budget: bool
    report: dict[str, Any]  # JSON-serializable


class QuantSession:
    """Shared state of one quantize() call: prepared models, evaluator, work directory, notes."""

    def __init__(self, original: ModelProto, variants: list[Prepared], source: CalibrationSource | None,
                 evaluator: Evaluator, workdir: Path, notes: list[str]) -> None:
        self.original = original
        self.variants = variants
        self.source = source
        self.evaluator = evaluator
        self.workdir = workdir
        self.notes = notes
        self._hist_before = quant_ops_in(original)

    def build(self, cand: Candidate, evaluator: Evaluator | None = None) -> Built:
        """Quantize, load, run and score one candidate, falling back to the folded model on failure."""
        ev = evaluator or self.evaluator
        reasons: list[str] = []
        for prep in self.variants:
            cand_p = _map_excluded(cand, prep.model)
            try:
                t0 = time.perf_counter()
                q = build(prep, cand_p, self.workdir, self.source)
                log.debug("built %s on %s in %.2f s", cand.name, prep.variant, time.perf_counter() - t0)
                check_runs(q, ev.feed)
                quantized, left = node_changes(prep.model, q, cand_p)
                if quant_ops_in(q) == self._hist_before or not quantized:
                    raise CandidateFailed(_nothing_quantized_reason(prep.model, cand, left))
                fid = ev.score(q)
                log.debug("%s scored in %.2f s (total)", cand.name, time.perf_counter() - t0)
            except CandidateFailed as e:
                reasons.append(f"{prep.variant} model: {e}")
                log.info("%s on the %s model failed: %s", cand.name, prep.variant, e)
                continue
            notes = [f"{r}; retried on the {prep.variant} model" for r in reasons]
            return Built(cand, q, quantized, left, fid, prep.variant, notes)
        if len({r.split(": ", 1)[-1] for r in reasons}) == 1:
            raise CandidateFailed(reasons[0].split(": ", 1)[-1])
        raise CandidateFailed("; ".join(reasons))


def _map_excluded(cand: Candidate, model: ModelProto) -> Candidate:
    """Also exclude nodes onnxruntime's optimizer derived from an excluded node (named '<node>/<Fusion>')."""
    if not cand.exclude_nodes:
        return cand
    extra = [n.name for n in model.graph.node for e in cand.exclude_nodes if n.name.startswith(e + "/")]
    return cand.with_excluded(extra) if extra else cand


def _check_node_names(model: ModelProto, names: tuple[str, ...]) -> None:
    known = {n.name for n in model.graph.node}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise InvalidInputError(
            f"--exclude-nodes: no node named {', '.join(map(repr, unknown))} in the model; "
            "list node names with `onnxopt inspect --json` or Netron"
        )


def _nothing_quantized_reason(model: ModelProto, cand: Candidate, left: list[dict[str, str]]) -> str:
    hist = op_histogram(model)
    if any(op in hist for op in ("If", "Loop", "Scan")):
        return ("nothing was quantized: the compute ops sit inside If/Loop/Scan subgraphs, which "
                f"onnxruntime's {cand.mode} {cand.format if cand.mode == 'static' else ''} quantizer did not touch").replace("  ", " ")
    if left:
        first = left[0]
        return f"nothing was quantized ({len(left)} compute node(s) left in float, e.g. {first['node']}: {first['reason']})"
    return "nothing was quantized: the model has no node type onnxruntime's quantizer handles"


def _eval_data(model: ModelProto, source: CalibrationSource | None, val: tuple[Feed, np.ndarray | None] | None,
               seed: int, notes: list[str]) -> tuple[Feed, np.ndarray | None, str]:
    if val is not None:
        feed, labels = val
        check_samples(model, feed, "validation data")
        return feed, labels, "validation data"
    if source is not None:
        return source.head(EVAL_SAMPLES), None, "calibration data"
    notes.append("no calibration or validation data: fidelity measured on synthetic random inputs only")
    return synthesize_feed(model, batch=fixed_batch(model) or 8, seed=seed), None, "synthetic inputs"


def _as_source(model: ModelProto, calib: Feed | CalibrationSource | None, config: QuantizeConfig) -> CalibrationSource | None:
    if calib is None:
        return None
    if isinstance(calib, CalibrationSource):
        return calib.limited(config.calib_samples)
    src = from_feed(model, calib, samples=config.calib_samples, description="calibration data")
    for k, v in calib.items():
        if np.issubdtype(v.dtype, np.floating) and not np.isfinite(v).all():
            raise InvalidInputError(f"calibration data input {k!r} contains NaN or Inf; clean the data")
    return src


def quantize(
    model: ModelProto,
    config: QuantizeConfig | None = None,
    calib: Feed | CalibrationSource | None = None,
    val: tuple[Feed, np.ndarray | None] | None = None,
    bench: BenchConfig | None = None,
) -> QuantizeResult:
    """Quantize a model with onnxruntime; the input is never modified.

    calib: calibration inputs (a feed or a streaming CalibrationSource) for static quantization.
    val: (inputs, labels or None) to measure fidelity / accuracy; defaults to calibration inputs.
    bench: benchmark settings (auto mode always measures; other modes measure only when given).
    """
    cfg = config or QuantizeConfig()
    t0 = time.perf_counter()
    already = quant_ops_in(model)
    if already and not cfg.force:
        ops = ", ".join(f"{k} x{v}" for k, v in list(already.items())[:4])
        raise InvalidInputError(f"the model is already quantized (found {ops}): nothing to do; pass --force to quantize anyway")
    budget = cfg.budget
    if cfg.max_accuracy_drop is not None and (val is None or val[1] is None):
        raise InvalidInputError(
            "--max-accuracy-drop needs labelled validation data (--data with a 'labels' array); "
            "without labels use --min-cosine"
        )
    if cfg.mode == "static" and calib is None:
        raise InvalidInputError("--mode static needs calibration data: pass --calib-data (an .npz or a folder)")
    _check_node_names(model, cfg.exclude_nodes)
    require_min_opset(model)
    notes: list[str] = []
    cpu = detect_cpu()
    original = copy_model(model)
    source = _as_source(original, calib, cfg)
    feed, labels, eval_source = _eval_data(original, source, val, cfg.seed, notes)
    evaluator = Evaluator(original, feed, labels, eval_source)
    needs_pc_qdq = cfg.mode == "static" and cfg.per_channel and cfg.format == "qdq"
    with tempfile.TemporaryDirectory(prefix="onnxopt-quantize-") as tmp:
        wd = Path(tmp)
        start = check_opset(original, needs_per_channel_qdq=needs_pc_qdq)
        if start is not original:
            notes.append("upgraded the model to opset 13 (per-channel QDQ needs it)")
        variants = prepare(start, wd, notes)
        sess = QuantSession(original, variants, source, evaluator, wd, notes)
        if cfg.mode == "auto":
            from onnxopt.quantize_auto import run_auto

            if not budget.active:
                budget = Budget(min_cosine=DEFAULT_AUTO_COSINE)
                notes.append(f"no accuracy budget given: auto mode requires output cosine >= {DEFAULT_AUTO_COSINE}")
            result_model, quantized, meets, auto_report = run_auto(sess, cfg, budget, cpu, bench or BenchConfig())
            report = auto_report
        else:
            result_model, quantized, meets, report = _run_single(sess, cfg, budget, bench)
    report.update({
        "mode": cfg.mode,
        "objective": cfg.objective,
        "config": _config_dict(cfg),
        "cpu": cpu.to_dict(),
        "budget": budget.describe(),
        "meets_budget": meets,
        "quantized": quantized,
        "fidelity_data": {"source": eval_source, "samples": evaluator.samples, "labels": labels is not None},
        "calibration": None if source is None else {"source": source.description, "samples": source.samples,
                                                     "method": cfg.calib_method},
        "size_before": model_size(original),
        "size_after": model_size(result_model),
        "size_ratio": model_size(result_model) / max(1, model_size(original)),
        "int8_floor": int8_floor(original),
        "notes": notes + report.get("notes", []),
        "seconds": round(time.perf_counter() - t0, 2),
    })
    return QuantizeResult(result_model, quantized, meets, report)


def int8_floor(model: ModelProto) -> int:
    """Bytes of the model with every float32 initializer at a quarter of its size, the rest as it was."""
    f32 = sum(
        int(np.prod(t.dims)) * 4 for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT
    )
    return int(model_size(model) - 0.75 * f32)


def _config_dict(cfg: QuantizeConfig) -> dict[str, Any]:
    d = asdict(cfg)
    d["op_types"] = list(cfg.op_types)
    d["exclude_nodes"] = list(cfg.exclude_nodes)
    return d


def built_entry(b: Built) -> dict[str, Any]:
    """The report row of a built candidate: config, size, fidelity, nodes."""
    return {
        "name": b.cand.name,
        "candidate": b.cand.to_dict(),
        "status": "ok",
        "size": model_size(b.model),
        "fidelity": b.fidelity.to_dict(),
        "quantized_nodes": b.quantized_nodes,
        "float_nodes": b.float_nodes,
        "built_from": b.variant,
        "notes": b.notes,
    }


def _run_single(sess: QuantSession, cfg: QuantizeConfig, budget: Budget, bench: BenchConfig | None
                ) -> tuple[ModelProto, bool, bool, dict[str, Any]]:
    cand = cfg.candidate()
    try:
        built = sess.build(cand)
    except CandidateFailed as e:
        raise UnsupportedModelError(f"{cand.name}: {e}") from e
    report: dict[str, Any] = {"candidates": [built_entry(built)]}
    meets = True
    if budget.active:
        built, meets, fb = fallback(built, sess.build, sess.evaluator, budget)
        report["fallback"] = fb
    report["winner"] = built.cand.name
    report["nodes"] = {"quantized": built.quantized_nodes, "float": built.float_nodes}
    report["fidelity"] = built.fidelity.to_dict()
    report["why"] = (f"{cfg.mode} quantization as asked" + ("" if meets else f"; the budget ({budget.describe()}) "
                     "is NOT met: kept the closest configuration found"))
    report["notes"] = list(built.notes)
    if bench is not None:
        res = benchmark([sess.original, built.model], bench, names=["input", built.cand.name])
        ratio = latency_ratio(res[1], res[0])
        report["latency"] = {"input_ms": res[0].stats.p50_ms, "quantized_ms": res[1].stats.p50_ms,
                             "ratio": ratio.to_dict(), "describe": ratio.describe()}
        if ratio.significant and ratio.ratio > 1:
            report["notes"].append(f"the quantized model is SLOWER than the input on this CPU: {ratio.describe()}")
    return built.model, True, meets, report
