"""Run a recipe on a model, verify and benchmark every stage, decide what to keep, apply gates.

plan() makes the run's decisions once (recipe, never-slower, model family); run_plan() does the
work; optimize() is the two in one call. Every stage that changes numbers must hold the fidelity
floor (OptimizeConfig.floor); the decisions taken are recorded (optimization.decisions) and a
recorded set can be replayed: the same passes, pinned, nothing measured.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from onnx import ModelProto, StringStringEntryProto

from onnxopt.core import progress as progress_channel
from onnxopt.core.errors import GateFailedError
from onnxopt.core.external import (
    LARGE,
    byte_size,
    initializers_only,
    loaded_sha256,
    loaded_size,
    same_computation,
    uses_external,
)
from onnxopt.core.feeds import Feed, feed_samples, first_batch, synthesize_feed
from onnxopt.core.model import (
    batch_axes,
    copy_model,
    load_model,
    model_family,
    prune_opset_imports,
    save_model,
)
from onnxopt.optimization.decide import (
    check_gates,
    decide_stages,
    mark_gate_failed,
    never_slower,
    repair_warnings,
    worth_remeasuring,
)
from onnxopt.optimization.decisions import (
    DECISIONS_KEY,
    Decisions,
    check_replayable,
    model_sha256,
    record,
    replay_specs,
)
from onnxopt.optimization.recipe import PassSpec, Recipe
from onnxopt.optimization.store import KEEP_BYTES, StageStore, load_full
from onnxopt.optimization.types import (
    GATE_FAILED_KEY,
    RECIPE_KEY,
    OptimizeConfig,
    OptimizeResult,
    Plan,
    Stage,
)
from onnxopt.passes.base import PassContext, PipelineResult, StageResult, model_has_weights

log = logging.getLogger(__name__)

TWIN_BYTES = LARGE  # stages at least this big that compute what an earlier stage does are timed once (_twins)

STAGE_LABELS = {
    "optimize_graph": "graph-optimized",
    "fold_constants": "constants-folded",
    "prune_magnitude": "magnitude-pruned",
    "prune_channels": "channel-pruned",
    "quantize": "quantized",
    "add_postprocessing": "post-processed",
}


def default_recipe(model: ModelProto, objective: str = "latency") -> Recipe:
    """The recipe used without --recipe: graph optimization, then int8 quantization in auto mode.

    Auto mode is `onnxopt quantize --mode auto`: candidates ordered for this CPU (static ones
    calibrated on --calib-data, or on the --data inputs), measured briefly then the finalists
    longer, per-op-type and per-node partial quantization, returning nodes to float to hold the
    fidelity floor. With objective latency the winner is kept only when optimize measures it
    clearly faster too; with objective size the smallest model that holds the floor is kept.
    """
    return _family_recipe(model_family(model), objective)


def _family_recipe(family: str, objective: str) -> Recipe:
    passes = [PassSpec("optimize_graph", {}), PassSpec("quantize", {"mode": "auto"})]
    if family == "transformer":  # onnxruntime's transformer fusions, then int8 (quantization.transformer)
        passes[0] = PassSpec("fuse_transformer", {})
    return Recipe(tuple(passes), description=f"default recipe for a {family} model (objective {objective})")


def plan(model: ModelProto, recipe: Recipe | None = None, config: OptimizeConfig | None = None) -> Plan:
    """Decide, once and before any work, what optimize() runs.

    recipe None: the default recipe for the model's family. config.never_slower None becomes
    explicit: on for the default recipe with objective latency, off for a given recipe (whose
    output bytes then never depend on timing).
    """
    cfg = config or OptimizeConfig()
    family = model_family(model)
    if cfg.never_slower is None:
        cfg = replace(cfg, never_slower=recipe is None and cfg.objective == "latency")
    return Plan(recipe or _family_recipe(family, cfg.objective), cfg, family)


def stage_label(pass_name: str, report: dict[str, Any]) -> str:
    """A human name for the stage a pass produced, e.g. 'quantized (int8 static)'."""
    label = STAGE_LABELS.get(pass_name, pass_name)
    if pass_name == "quantize" and report.get("mode") == "weight-only":
        label += f" (int{(report.get('quantizer') or {}).get('bits', 4)} weight-only)"
    elif pass_name == "quantize" and report.get("mode") and report["mode"] != "skipped":
        label += f" (int8 {report['mode']})"
    return label


def _unique(name: str, seen: set[str]) -> str:
    out, i = name, 2
    while out in seen:
        out, i = f"{name} #{i}", i + 1
    seen.add(out)
    return out


def _eval_feed(
    model: ModelProto, val: tuple[Feed, np.ndarray | None] | None, calib: Any, config: OptimizeConfig,
    family: str = "",
) -> tuple[Feed, np.ndarray | None, str]:
    """The verification inputs: --data, else the first calibration samples (as `quantize` does:
    real inputs, which int8 calibrated on them handles), else synthetic random inputs."""
    from onnxopt.quantization.config import EVAL_SAMPLES

    axes = batch_axes(model)
    if val is not None:
        feed, labels = val
        n = feed_samples(feed, axes)
        return feed, labels, f"{n} samples from --data" + (" with labels" if labels is not None else "")
    if calib is not None:
        feed = calib.head(EVAL_SAMPLES) if hasattr(calib, "head") else first_batch(calib, EVAL_SAMPLES, axes)
        n = feed_samples(feed, axes)
        return feed, None, f"{n} samples from --calib-data (no --data: pass it for held-out inputs and labels)"
    if family == "transformer":  # token ids shaped like text (core.tokens); random ids would mislead
        from onnxopt.core.tokens import token_feed

        n = max(config.synthetic_samples, config.batch)
        feed = token_feed(model, samples=n, overrides=config.shape_overrides, seed=config.seed)
        return feed, None, f"{n} synthetic text-like samples (seed {config.seed}); pass --data for real inputs"
    feed = synthesize_feed(model, batch=max(config.synthetic_samples, config.batch),
                           overrides=config.shape_overrides, seed=config.seed)
    n = feed_samples(feed, axes)
    return feed, None, f"{n} synthetic random samples (seed {config.seed}); pass --data for real inputs"


def optimize(
    model: ModelProto | str | os.PathLike[str],
    recipe: Recipe | None = None,
    config: OptimizeConfig | None = None,
    *,
    val: tuple[Feed, np.ndarray | None] | None = None,
    calib: Any = None,
    progress: Callable[[str], None] | None = None,
    decisions: Decisions | None = None,
) -> OptimizeResult:
    """Run the recipe (default: chosen for the model), verify each stage against the input,
    benchmark all stages interleaved, keep measured candidates only when clearly faster, reject
    stages below the fidelity floor, and check the gates on the final model:
    run_plan(model, plan(model, recipe, config), ...). decisions: replay them (see run_plan).
    model: a proto, or a model file (see run_plan: the run then holds the input's graph only)."""
    graph = model if isinstance(model, ModelProto) else load_model(model, load_external_data=False)
    decided = plan(graph, recipe, config)
    del graph  # an inline model's weights: not held through the run
    return run_plan(model, decided, val=val, calib=calib, progress=progress, decisions=decisions)


def run_plan(
    model: ModelProto | str | os.PathLike[str],
    decided: Plan,
    *,
    val: tuple[Feed, np.ndarray | None] | None = None,
    calib: Any = None,
    progress: Callable[[str], None] | None = None,
    decisions: Decisions | None = None,
) -> OptimizeResult:
    """optimize() with its decisions made beforehand by plan() (the CLI shows the recipe first).

    decisions: a record of an earlier run on the same model, recipe, objective and floor
    (InvalidInputError otherwise); its kept passes run pinned to the recorded settings and
    nothing is benchmarked, so the output is the recorded run's, byte for byte.
    model: a proto (which the caller holds, so the run may too), or the path of a model file: it is
    then loaded once (core.model.load_model: weights, nodes named), hashed for the decisions record
    and written to the work directory, and the run holds its graph only from there (the first pass
    reloads it): a big input is not in memory next to the models the later passes work on.
    Raises MissingLabelsError when --max-accuracy-drop is set and val has no labels.
    """
    from onnxopt.measure.benchmark import feed_shapes, timing_feed
    from onnxopt.measure.fidelity import require_labels
    from onnxopt.passes.base import Pipeline

    cfg, rec = decided.config, decided.recipe
    t_start = time.perf_counter()
    say = progress or progress_channel.report  # the caller's callback, else whoever listens (core.progress)
    warnings: list[str] = []
    if cfg.gates.max_accuracy_drop is not None:
        require_labels(val[1] if val is not None else None)
    calib = _calibration(rec, calib, val, warnings)
    source = None if isinstance(model, ModelProto) else Path(model)
    graph = model if isinstance(model, ModelProto) else load_model(model, load_external_data=False)
    feed, labels, data_desc = _eval_feed(graph, val, calib, cfg, decided.family)
    timed = timing_feed(graph, feed, batch=cfg.batch, overrides=cfg.shape_overrides, seed=cfg.seed)
    if val is not None and cfg.shape_overrides:
        warnings.append("--shape not used: latency is measured on the --data samples, at their shape")
    floor = cfg.floor(has_labels=labels is not None)
    if decided.family == "transformer":  # dynamic int8's activation scale spans the batch: verify at the deployed one
        cfg = replace(cfg, eval_batch=cfg.batch)
    pipeline = rec.pipeline()
    if decisions is not None:
        cfg = replace(cfg, benchmark=False, never_slower=False)
        pipeline = Pipeline([spec.build() for spec in replay_specs(decisions, rec)])
    context = PassContext(
        calib=calib,
        val=val[0] if val is not None else None,
        labels=labels,
        seed=cfg.seed,
        objective=cfg.objective,
        family=decided.family,
        bench=_bench_config(cfg),
        floor=floor,
    )
    with StageStore() as store:  # every stage's model in a file; removed at the end, failed or not
        t0 = time.perf_counter()
        if source is None:
            kept, sha, size, stored = graph, model_sha256(graph), graph.ByteSize(), None
        else:
            del graph  # an inline model's weights: the store's copy is what the run uses
            kept, sha, size, stored = _put_input(store, source)
        if decisions is not None:
            check_replayable(decisions, sha, rec, cfg.objective, floor)
            say(f"replaying recorded decisions: {pipeline!r}, nothing measured")
        say(f"running {pipeline!r}")
        result = pipeline.run(kept, context, on_stage=lambda s: say(f"{s.pass_name}: done in {s.wall_s:.2f} s"),
                              store=store.put, stored=stored)
        timings = {"passes": time.perf_counter() - t0}
        measured = _measure(_stages(kept, size, result, warnings), (feed, timed), labels, cfg, say, timings)
        stages = _decide(measured, result.stages, cfg, floor, timed, say, timings, warnings)
        final_stage = [s for s in stages if s.kept and (s.modified or s.pass_name is None)][-1]
        made = decisions or record(sha, rec, cfg.objective, floor, stages, final_stage.name)
        final_model = _with_metadata(_final_model(final_stage, model), rec, made)
    stages = [replace(s, path=None) for s in stages]  # the files are gone
    final_stage = next(s for s in stages if s.name == final_stage.name)
    gates = check_gates(cfg.gates, final_stage, stages[0], byte_size(final_model), made.measured if decisions else None)
    timings["total"] = time.perf_counter() - t_start
    return OptimizeResult(
        model=final_model,
        stages=tuple(stages),
        final=final_stage.name,
        gates=gates,
        recipe=rec,
        warnings=tuple(warnings),
        timings=timings,
        data=data_desc,
        config=cfg,
        timed_shapes=feed_shapes(timed),
        decisions=made,
        replayed=decisions is not None,
    )


def _decide(
    measured: list[Stage],
    stage_results: tuple[StageResult, ...],
    cfg: OptimizeConfig,
    floor: Any,
    feed: Feed,
    say: Callable[[str], None],
    timings: dict[str, float],
    warnings: list[str],
) -> list[Stage]:
    """Keep or reject every measured stage (floor, margin, never-slower), appending one warning
    line per rejection or repair. A candidate that looked clearly faster but whose interval did
    not show it is benchmarked once more, twice as long, before the decision is final."""
    stages, decide_warnings = decide_stages(measured, stage_results, cfg, floor)
    if cfg.benchmark and worth_remeasuring(stages, cfg):
        longer = replace(cfg, bench_runs=2 * cfg.bench_runs, bench_seconds=2 * (cfg.bench_seconds or 1.0))
        say("a stage looked faster but the interval did not show it: benchmarking again, twice as long")
        stages, decide_warnings = decide_stages(_benchmark(measured, feed, longer, say, timings), stage_results, cfg, floor)
    warnings.extend(decide_warnings)
    if cfg.never_slower:
        stages, guard_warnings = never_slower(stages)
        warnings.extend(guard_warnings)
    warnings.extend(repair_warnings(stages))
    return stages


def _put_input(store: StageStore, source: Path) -> tuple[ModelProto, str, int, tuple[Path, Callable[[], ModelProto]]]:
    """Hash the model file as loaded (core.model.load_model, as the CLI always did) and write it
    into the store as the input stage: (what the store kept of it, its model_sha256, its size, (its
    file, how Pipeline.run loads it again for the first pass)). Only the kept proto (the graph, for
    a big model) outlives this call. A model above KEEP_BYTES with its weights in external data
    is not loaded whole: hash and size are computed from its graph and files tensor by tensor
    (core.external.loaded_sha256: the same hash; protobuf cannot serialize a model above 2 GB)."""
    graph = load_model(source, load_external_data=False)
    if uses_external(graph) and initializers_only(graph) and loaded_size(graph, source.parent) > KEEP_BYTES:
        sha, size = loaded_sha256(graph, source.parent), loaded_size(graph, source.parent)
        path, kept = store.put_graph(graph, source.parent, "input")
        return kept, sha, size, (path, lambda: load_model(source))
    del graph
    full = load_model(source)
    sha, size = model_sha256(full), byte_size(full)
    path, kept = store.put(full, "input")
    return kept, sha, size, (path, lambda: load_model(source))


def _final_model(final: Stage, model: ModelProto | str | os.PathLike[str]) -> ModelProto:
    """The output model before its metadata: the final stage's file, or the input (a fresh copy,
    loaded again from its file when the run was given a path) when no stage was kept."""
    if final.pass_name is not None:
        assert final.path is not None
        return load_full(final.path)
    return copy_model(model) if isinstance(model, ModelProto) else load_model(model)


def _with_weights(stage: Stage) -> ModelProto:
    """The stage's model with its weights (loaded from its file when the run kept its graph only)."""
    if model_has_weights(stage.model) or stage.path is None:
        return stage.model
    return load_full(stage.path)


def _bench_config(cfg: OptimizeConfig) -> Any:
    """The benchmark settings of the run (also what quantization's auto mode measures with)."""
    from onnxopt.core.runtime import bench_session
    from onnxopt.measure.benchmark import BenchConfig

    return BenchConfig(
        session=bench_session(cfg.threads), warmup=cfg.warmup, runs=cfg.bench_runs, duration_s=cfg.bench_seconds,
        seed=cfg.seed, batch=cfg.batch, shape_overrides=cfg.shape_overrides,
    )


def _calibration(
    recipe: Recipe, calib: Any, val: tuple[Feed, np.ndarray | None] | None, warnings: list[str]
) -> Any:
    """The calibration data the passes get: the given data, else the --data inputs when a quantize
    pass calibrates (static, or auto for its static candidates); raises when a static pass has nothing."""
    from onnxopt.quantization.api import require_calibration
    from onnxopt.quantization.recipe_pass import QuantizePass

    if calib is not None:
        return calib
    quant = [p for p in recipe.pipeline(check=False).passes if isinstance(p, QuantizePass)]
    if not any(p.calibrates for p in quant):
        return None
    if val is not None:
        warnings.append("no --calib-data: calibrating int8 on the --data inputs")
        return val[0]
    for p in quant:
        require_calibration(p.mode, None)
    return None


def _stages(model: ModelProto, size: int, run: PipelineResult, warnings: list[str]) -> list[Stage]:
    """The input model's stage (model: what the run holds of it; size: its serialized size), then
    one per pass (with a warning for a skipped quantization)."""
    seen: set[str] = set()
    stages = [Stage(_unique("original", seen), None, {}, False, model, size, 0.0, {}, path=run.input_path)]
    stages.extend(_stage_from(sr, seen) for sr in run.stages)
    for s in stages:
        if s.pass_name == "quantize" and not s.modified and s.report.get("reason"):
            warnings.append(f"int8 quantization skipped: {s.report['reason']}")
    return stages


def _measure(
    stages: list[Stage],
    feeds: tuple[Feed, Feed],
    labels: np.ndarray | None,
    cfg: OptimizeConfig,
    say: Callable[[str], None],
    timings: dict[str, float],
) -> list[Stage]:
    """The stages with their fidelity to the input (on the first feed) and their latency (on the
    second, timing_feed) attached, as the config asks."""
    feed, timed = feeds
    measured = [s for s in stages if s.modified or s.pass_name is None]
    t0 = time.perf_counter()
    if cfg.verify:
        say("verifying every stage against the input model")
        fids = _verify(measured[0], measured[1:], feed, labels, cfg.eval_batch)
        by_name = dict(zip([s.name for s in measured[1:]], fids))
        stages = [replace(s, fidelity=by_name[s.name]) if s.name in by_name else s for s in stages]
    timings["verify"] = time.perf_counter() - t0
    return _benchmark(stages, timed, cfg, say, timings) if cfg.benchmark else stages


def _benchmark(
    stages: list[Stage], feed: Feed, cfg: OptimizeConfig, say: Callable[[str], None], timings: dict[str, float]
) -> list[Stage]:
    """The stages with their latency (every stage that changed the model, interleaved) attached."""
    measured = [s for s in stages if s.modified or s.pass_name is None]
    t0 = time.perf_counter()
    twins = _twins(measured)
    say(f"benchmarking {len(measured) - len(twins)} models interleaved ({cfg.bench_runs} runs each)")
    for i, j in twins.items():
        say(f"{measured[i].name} computes what {measured[j].name} does (same nodes and weights): timed once, as it")
    bench_by_name = _bench(measured, feed, cfg, twins)
    timings["benchmark"] = timings.get("benchmark", 0.0) + time.perf_counter() - t0
    return [replace(s, bench=bench_by_name.get(s.name)) for s in stages]


def _stage_from(sr: StageResult, seen: set[str]) -> Stage:
    r = sr.result
    note = "" if r.modified else "no change"
    if not r.modified and r.report.get("reason"):
        note = f"no change: {r.report['reason']}"
    return Stage(
        name=_unique(stage_label(sr.pass_name, r.report), seen),
        pass_name=sr.pass_name,
        options=sr.options,
        modified=r.modified,
        model=r.model,
        size_bytes=sr.size_bytes if sr.size_bytes is not None else byte_size(r.model),
        wall_s=sr.wall_s,
        report={**r.report, "keep_if_faster": r.keep_if_faster, "changes_outputs": r.changes_outputs},
        note=note,
        path=sr.path,
    )


def _verify(
    reference: Stage, stages: list[Stage], feed: Feed, labels: np.ndarray | None, batch: int
) -> list[Any]:
    """FidelityReports of each stage vs the reference stage (run once; re-derived after a pass
    that changes the outputs by design, by applying that pass to the reference model too).
    Sessions load the stages from their files (Stage.source)."""
    from onnxopt.core.model import graph_outputs
    from onnxopt.measure.fidelity import FidelityReport, accuracy_of, output_fidelity, run_batched
    from onnxopt.optimization.recipe import make_pass

    ref = reference.model
    ref_out = run_batched(reference.source, feed, batch)
    if any(s.report.get("changes_outputs") and s.pass_name is not None for s in stages):
        ref = _with_weights(reference)  # the reference is transformed below
    acc_ref = accuracy_of(ref_out[0], labels) if labels is not None else None
    reports = []
    for stage in stages:
        if stage.report.get("changes_outputs") and stage.pass_name is not None:
            ref = make_pass(stage.pass_name, stage.options)(ref, PassContext()).model
            ref_out = run_batched(ref, feed, batch)
            acc_ref = accuracy_of(ref_out[0], labels) if labels is not None else None
        specs = graph_outputs(ref)
        out = run_batched(stage.source, feed, batch)
        fids = tuple(output_fidelity(s.name, r, c, s) for s, r, c in zip(specs, ref_out, out))
        acc = accuracy_of(out[0], labels) if labels is not None else None
        reports.append(FidelityReport(fids, int(ref_out[0].shape[0]) if ref_out[0].ndim else 1, acc_ref, acc))
    return reports


def _twins(measured: list[Stage]) -> dict[int, int]:
    """{i: j}: measured[i], a stage of TWIN_BYTES or more in a file, computes what the earlier
    measured[j] does (core.external.same_computation: same nodes, same weights, e.g. a graph
    optimization that changed nothing that runs). Such a stage is timed once, as its twin: one
    session of the model's size less, and no noise between two equal models."""
    out: dict[int, int] = {}
    for i, s in enumerate(measured):
        if s.path is None or s.size_bytes < TWIN_BYTES:
            continue
        for j in range(i):
            t = measured[j]
            if j not in out and t.path is not None and same_computation(t.path, s.path):
                out[i] = j
                break
    return out


def _bench(measured: list[Stage], timed: Feed, cfg: OptimizeConfig, twins: dict[int, int] | None = None
           ) -> dict[str, Any]:
    """Every measured stage timed side by side on the same feed (timing_feed: the deployment shape);
    twins (see _twins) get their twin's result."""
    from onnxopt.measure.benchmark import benchmark

    twins = twins or {}
    bcfg = replace(_bench_config(cfg), batch=feed_samples(timed, batch_axes(measured[0].model)))
    alone = [s for i, s in enumerate(measured) if i not in twins]
    results = benchmark([s.source for s in alone], bcfg, feed=timed, names=[s.name for s in alone])
    by_name = {s.name: r for s, r in zip(alone, results)}
    for i, j in twins.items():
        by_name[measured[i].name] = replace(by_name[measured[j].name], name=measured[i].name)
    return by_name


def _with_metadata(m: ModelProto, recipe: Recipe, decisions: Decisions) -> ModelProto:
    """The model (changed in place: a fresh copy) with the recipe and the decisions recorded in
    metadata_props, unused opset imports dropped (onnxruntime adds every domain it has
    registered, which varies by process)."""
    prune_opset_imports(m)
    entries = [p for p in m.metadata_props if p.key not in (RECIPE_KEY, GATE_FAILED_KEY, DECISIONS_KEY)]
    del m.metadata_props[:]
    m.metadata_props.extend(entries)
    m.metadata_props.append(StringStringEntryProto(key=RECIPE_KEY, value=recipe.to_toml()))
    m.metadata_props.append(StringStringEntryProto(key=DECISIONS_KEY, value=decisions.to_json()))
    return m


def load_data(
    model: ModelProto,
    data: str | os.PathLike[str] | None = None,
    calib_data: str | os.PathLike[str] | None = None,
) -> tuple[tuple[Feed, np.ndarray | None] | None, Any]:
    """(val, calib) for optimize() from their paths: labelled validation data (.npz) and
    calibration data (.npz, a folder of arrays or of images); None where no path is given."""
    from onnxopt.measure.fidelity import load_eval_data
    from onnxopt.quantization.calibration import open_calibration

    val = load_eval_data(model, data) if data is not None else None
    calib = open_calibration(model, calib_data) if calib_data is not None else None
    return val, calib


def save_result(
    result: OptimizeResult,
    output: str | os.PathLike[str],
    *,
    input_path: str | os.PathLike[str] | None = None,
    write_on_gate_failure: bool = True,
) -> Path | None:
    """Write the result model atomically; marked when a gate failed, or not written if asked."""
    model = result.model
    if not result.gates_passed:
        if not write_on_gate_failure:
            return None
        model = mark_gate_failed(model, result.failed_gates)
    return save_model(model, output, input_path=input_path)


def default_output(model_path: str | os.PathLike[str]) -> Path:
    """MODEL.opt.onnx beside the input."""
    p = Path(model_path)
    stem = p.name[: -len(".onnx")] if p.name.endswith(".onnx") else p.name
    return p.with_name(f"{stem}.opt.onnx")


def gate_error(result: OptimizeResult, written: Path | None) -> GateFailedError:
    """The error a run whose gates failed ends with: the gates, their values, and what became of the output."""
    names = ", ".join(g.gate for g in result.failed_gates)
    where = (
        f"output written to {written} but marked (metadata onnxopt.gate_failed)"
        if written
        else "output not written (--no-output-on-fail)"
    )
    details = "; ".join(g.describe() for g in result.failed_gates)
    return GateFailedError(f"gate failed: {names}: {details}; {where}")
