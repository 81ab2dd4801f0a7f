"""Int8 quantization with onnxruntime: dynamic, static (calibrated), or auto (measure and pick), accuracy-aware."""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from onnx import ModelProto

from onnxopt.core.cpu import detect_cpu
from onnxopt.core.errors import InvalidInputError, UnsupportedModelError
from onnxopt.core.external import (
    LARGE,
    byte_size,
    field_len,
    graph_byte_size,
    initializers_only,
    loaded_size,
    uses_external,
    write_external,
)
from onnxopt.core.feeds import Feed, synthesize_feed
from onnxopt.core.model import copy_model, default_opset, fixed_batch, load_model, model_family
from onnxopt.core.names import unnamed_count, with_node_names
from onnxopt.measure.benchmark import BenchConfig, benchmark, feed_shapes, timing_feed
from onnxopt.measure.fidelity import require_labels
from onnxopt.measure.stats import latency_ratio
from onnxopt.quantization.auto import run_auto, winner_entry
from onnxopt.quantization.calibration import (
    CalibrationSource,
    check_samples,
    from_feed,
)
from onnxopt.quantization.config import (
    DEFAULT_AUTO_COSINE,
    EVAL_SAMPLES,
    QuantizeConfig,
    _config_dict,
)
from onnxopt.quantization.engine import (
    PER_CHANNEL_QDQ_OPSET,
    CandidateFailed,
    check_opset,
    model_size,
    prepare,
    quant_ops_in,
)
from onnxopt.quantization.evaluate import Budget, Evaluator
from onnxopt.quantization.fallback import fallback
from onnxopt.quantization.result import QuantizeResult, int8_floor
from onnxopt.quantization.session import InputModel, QuantSession, built_entry
from onnxopt.quantization.weight_only import require_algorithm

log = logging.getLogger(__name__)

# Models of this serialized size or more are quantized in file mode (see _open_input): held as
# their graph only, every session and onnxruntime's quantizer reading the weights from a file.
FROM_FILE_BYTES = LARGE


def _check_node_names(models: list[ModelProto], names: tuple[str, ...]) -> None:
    """Every excluded node must exist in the model or in a prepared copy of it (whose names --decisions
    may have recorded)."""
    known = {n.name for m in models for n in m.graph.node}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise InvalidInputError(
            f"--exclude-nodes: no node named {', '.join(map(repr, unknown))} in the model; "
            "list node names with `onnxopt inspect --json` or Netron"
        )


def _eval_data(model: ModelProto, source: CalibrationSource | None, val: tuple[Feed, np.ndarray | None] | None,
               seed: int, notes: list[str], bench: BenchConfig | None = None) -> tuple[Feed, np.ndarray | None, str]:
    if val is not None:
        feed, labels = val
        check_samples(model, feed, "validation data")
        return feed, labels, "validation data"
    if source is not None:
        return source.head(EVAL_SAMPLES), None, "calibration data"
    overrides, batch = (bench.shape_overrides, bench.batch) if bench is not None else (None, 1)
    samples = fixed_batch(model) or max(8, batch)
    if model_family(model) == "transformer":  # random ids mislead the check (core.tokens): text-like ones
        from onnxopt.core.tokens import token_feed

        notes.append("no calibration or validation data: fidelity measured on synthetic text-like token ids only")
        return token_feed(model, samples=samples, overrides=overrides, seed=seed), None, "synthetic text-like inputs"
    notes.append("no calibration or validation data: fidelity measured on synthetic random inputs only")
    feed = synthesize_feed(model, batch=samples, overrides=overrides, seed=seed)
    return feed, None, "synthetic inputs"


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


def require_calibration(mode: str, calib: object) -> None:
    """Raise InvalidInputError when static quantization has no calibration data (the one place this is decided)."""
    if mode == "static" and calib is None:
        raise InvalidInputError("static quantization needs calibration data: pass --calib-data (an .npz or a folder)")


def quantize(
    model: ModelProto | str | os.PathLike[str],
    config: QuantizeConfig | None = None,
    calib: Feed | CalibrationSource | None = None,
    val: tuple[Feed, np.ndarray | None] | None = None,
    bench: BenchConfig | None = None,
    *,
    graph_optimized: bool = False,
    budget: Budget | None = None,
) -> QuantizeResult:
    """Quantize a model with onnxruntime; the input is never modified.

    model: a proto, or the path of a model file (loaded as core.model.load_model does; a big
    model with external data is then never held with its weights: see _open_input).
    calib: calibration inputs (a feed or a streaming CalibrationSource) for static quantization.
    val: (inputs, labels or None) to measure fidelity / accuracy; defaults to calibration inputs.
    bench: benchmark settings (auto mode always measures; other modes measure only when given).
    graph_optimized: the model already went through onnxruntime's basic graph optimization
    (an optimize_graph pass), so quantization does not run it a second time.
    budget: the accuracy budget to hold instead of config's (optimize's fidelity floor); the
    accuracy-drop limit needs labels in val.
    """
    cfg = config or QuantizeConfig()
    t0 = time.perf_counter()
    given = model if isinstance(model, ModelProto) else load_model(model, load_external_data=False, name_nodes=False)
    already = quant_ops_in(given)
    if already and not cfg.force:
        ops = ", ".join(f"{k} x{v}" for k, v in list(already.items())[:4])
        raise InvalidInputError(f"the model is already quantized (found {ops}): nothing to do; pass --force to quantize anyway")
    budget = budget if budget is not None else cfg.budget
    if budget.max_accuracy_drop is not None:
        require_labels(val[1] if val is not None else None)
    require_calibration(cfg.mode, calib)
    if cfg.mode == "weight-only":
        require_algorithm(cfg.algorithm)
    if cfg.mode == "auto" and model_family(given) == "transformer":  # optimize's engine for text encoders
        from onnxopt.quantization.transformer import quantize_transformer_auto

        full = given if isinstance(model, ModelProto) else load_model(model)
        del given
        return quantize_transformer_auto(full, cfg, calib=calib, val=val, bench=bench, budget=budget)
    notes: list[str] = []
    cpu = detect_cpu()
    with tempfile.TemporaryDirectory(prefix="onnxopt-quantize-") as tmp:
        wd = Path(tmp)
        inp = _open_input(model, given, wd, notes, in_place=not graph_optimized or _scratch_file(model))
        del given  # an input loaded here: only what inp holds of it stays
        original = inp.graph  # never modified below
        source = _as_source(original, calib, cfg)
        feed, labels, eval_source = _eval_data(original, source, val, cfg.seed, notes, bench)
        evaluator = Evaluator(original, feed, labels, eval_source, run_from=inp.source)
        needs_pc_qdq = cfg.mode == "static" and cfg.per_channel and cfg.format == "qdq"
        start = check_opset(original, needs_per_channel_qdq=needs_pc_qdq, feed=feed, notes=notes)
        variants = prepare(start, wd, notes, graph_optimized=graph_optimized and start is original, path=inp.path)
        _check_node_names([original] + [v.model for v in variants], cfg.exclude_nodes)
        sess = QuantSession(original, variants, source, evaluator, wd, notes, inp)
        if not budget.active:  # the fidelity floor holds in every mode; lowering it is explicit
            budget = Budget(min_cosine=DEFAULT_AUTO_COSINE)
            notes.append(f"no accuracy budget given: output cosine >= {DEFAULT_AUTO_COSINE} per sample is required "
                         "(lower it explicitly with --min-cosine)")
        if cfg.mode == "auto":
            result_model, quantized, meets, report, runner_up = run_auto(sess, cfg, budget, cpu, bench or BenchConfig())
        else:
            runner_up = None
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
        "size_before": inp.size,
        "size_after": model_size(result_model),
        "size_ratio": model_size(result_model) / max(1, inp.size),
        "int8_floor": int8_floor(original) + inp.size - model_size(original),  # linear in the size
        "timed_shapes": _timed_shapes(original, feed, bench),
        "notes": notes + report.get("notes", []),
        "seconds": round(time.perf_counter() - t0, 2),
    })
    return QuantizeResult(result_model, quantized, meets, report, runner_up)


def _scratch_file(model: ModelProto | str | os.PathLike[str]) -> bool:
    """True for a stage file of optimize's work directory (optimization.store), which onnxruntime's
    quantizer may write beside (its shape inference writes `<name>-inferred.onnx` next to the
    model it reads); never for a user's file."""
    from onnxopt.optimization.store import PREFIX

    return not isinstance(model, ModelProto) and Path(model).parent.name.startswith(PREFIX)


def _open_input(model: ModelProto | str | os.PathLike[str], given: ModelProto, workdir: Path,
                notes: list[str], *, in_place: bool = True) -> InputModel:
    """The input as quantize() works on it: held whole (nodes named: a copy only when some were
    unnamed, with a note), or, for a model of FROM_FILE_BYTES or more at opset >= 13, in file
    mode (external data, if any, in the main graph's initializers only: core.external.initializers_only):
    its graph only, sessions and the quantizer reading its weights from a file. That file is
    the input's own when its weights are in external data and every node is named (and in_place:
    with graph_optimized the quantizer reads it as its float model, so a user's file is copied);
    otherwise the named model is written into the work directory (tensor by tensor,
    core.external.write_external).
    given: model itself, or the graph loaded from its path (onnx's loader: the weights of a model
    without external data are in it)."""
    path = None if isinstance(model, ModelProto) else Path(model)
    external = path is not None and uses_external(given)
    named = with_node_names(given) if external else given  # a graph: a cheap copy
    size = loaded_size(named, path.parent) if external and path is not None else byte_size(given)
    if size < FROM_FILE_BYTES or default_opset(given) < PER_CHANNEL_QDQ_OPSET or not initializers_only(given):
        if path is None:
            original = with_node_names(given)
            if original is not given:
                notes.append(f"{unnamed_count(given)} unnamed node(s) given stable names: <op type>_<position>_<hash>")
            return InputModel.in_memory(original)
        return InputModel.in_memory(load_model(path))  # as the CLI always loaded it (nodes named)
    if path is None:
        n = unnamed_count(given)
        if n:
            notes.append(f"{n} unnamed node(s) given stable names: <op type>_<position>_<hash>")
    if external and path is not None and named is given and in_place:  # sessions and the quantizer read it
        start = path
    else:
        start = workdir / "input.onnx"
        write_external(named, start, base_dir=path.parent if external and path is not None else None)
    graph = load_model(start, load_external_data=False)  # names the nodes of a model written unnamed
    if start != path:
        start.write_bytes(graph.SerializeToString())  # the graph only: its weights stay in the data file
    if not external:
        size += _graph_growth(given, graph)
    if path is not None:
        return InputModel(graph, start, size, start, lambda: load_model(path))
    return InputModel(graph, start, size, start, lambda: _named_copy(given))


def _graph_growth(model: ModelProto, named: ModelProto) -> int:
    """How many bytes naming the nodes adds to model's serialization (named: its graph only, named;
    the names sit in the graph, so only the graph field's length grows)."""
    bare = ModelProto()
    bare.graph.node.extend(model.graph.node)
    now = ModelProto()
    now.graph.node.extend(named.graph.node)
    g = graph_byte_size(model.graph)
    grown = g + now.graph.ByteSize() - bare.graph.ByteSize()
    return field_len(grown) - field_len(g)


def _named_copy(model: ModelProto) -> ModelProto:
    named = with_node_names(model)
    return named if named is not model else copy_model(model)


def _timed_shapes(model: ModelProto, feed: Feed, bench: BenchConfig | None) -> dict[str, list[int]] | None:
    """The input shapes latency was measured at (as auto mode times: timing_feed of the fidelity
    feed), None without a benchmark."""
    if bench is None:
        return None
    timed = timing_feed(model, feed, batch=bench.batch, overrides=bench.shape_overrides, seed=bench.seed)
    return {k: list(v) for k, v in feed_shapes(timed).items()}


def _run_single(sess: QuantSession, cfg: QuantizeConfig, budget: Budget, bench: BenchConfig | None
                ) -> tuple[ModelProto, bool, bool, dict[str, Any]]:
    cand = cfg.candidate()
    try:
        built = sess.build(cand)
    except CandidateFailed as e:
        raise UnsupportedModelError(f"{cand.name}: {e}") from e
    report: dict[str, Any] = {"candidates": [built_entry(built)]}
    meets = True
    if budget.checks_cosine or budget.max_accuracy_drop is not None:  # not when the user turned the floor off
        built, meets, fb = fallback(built, sess.build, sess.evaluator, budget, sess.local_rank)
        report["fallback"] = fb
    report["winner"] = built.cand.name
    report.update(winner_entry(built))
    report["why"] = (f"{cfg.mode} quantization as asked" + ("" if meets else f"; the budget ({budget.describe()}) "
                     "is NOT met: kept the closest configuration found"))
    report["notes"] = list(built.notes)
    if bench is not None:
        timed = timing_feed(sess.original, sess.evaluator.feed, batch=bench.batch, overrides=bench.shape_overrides,
                            seed=bench.seed)
        res = benchmark([sess.input_source, built.source], bench, feed=timed, names=["input", built.cand.name])
        ratio = latency_ratio(res[1], res[0])
        report["latency"] = {"input_ms": res[0].stats.p50_ms, "quantized_ms": res[1].stats.p50_ms,
                             "ratio": ratio.to_dict(), "describe": ratio.describe()}
        if ratio.significant and ratio.ratio > 1:
            report["notes"].append(f"the quantized model is SLOWER than the input on this CPU: {ratio.describe()}")
    return built.full(), True, meets, report
