"""Run an architecture search end to end: check, search, re-measure, gate, write (`onnxopt search`).

:func:`run_search` checks every input before the (long) search starts, trains and scores the
candidates of a TOML search space with the shipped evaluator (accuracy on the validation split
and p50 latency, both in onnxruntime), then re-measures the chosen models -- the best one, or
the whole Pareto front -- together with an optional baseline, interleaved on a quiet machine.
Under a latency budget that no candidate met, nothing is written and the result carries the
gate error (the CLI turns it into exit code 3); otherwise the chosen model is written to the
output path (and the front beside it as ``<stem>.front<i>.onnx``).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from onnxopt.core.errors import InvalidInputError, OnnxoptError
from onnxopt.core.files import Outputs
from onnxopt.nas.engine import search
from onnxopt.nas.evaluate import (
    Data,
    EvalConfig,
    evaluator_for,
    load_split,
    remeasure,
    teacher_logits_for,
)
from onnxopt.nas.ranking import pareto_front
from onnxopt.nas.space import describe_genome, load_space
from onnxopt.nas.types import GenerationStats, Objective, Record, SearchConfig, SearchResult

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class SearchRunConfig:
    """Settings of run_search (the options of `onnxopt search`)."""

    framework: str = "torch"  # torch | keras: where candidates are built and trained
    generations: int = 6
    population: int = 8
    elite: int = 2
    max_latency_ms: float | None = None  # latency budget (p50): best accuracy under it
    pareto: bool = False  # accuracy vs latency front instead of a single best model
    workers: int = 1  # parallel evaluations in local processes
    dask_address: str | None = None  # evaluate on this Dask scheduler instead
    resume: bool = False  # continue the checkpoint in the work directory
    epochs: int | None = None  # training epochs per candidate (None: the space's [train] or 15)
    max_minutes: float | None = None  # wall-clock budget (stops after a generation)
    remeasure_runs: int = 300  # timed runs per chosen model when re-measured
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_latency_ms is not None and self.pareto:
            raise InvalidInputError("--max-latency-ms and --pareto exclude each other; choose one objective")
        if self.max_latency_ms is not None and self.max_latency_ms <= 0:
            raise InvalidInputError(f"--max-latency-ms must be > 0, got {self.max_latency_ms}")
        if self.remeasure_runs < 5:
            raise InvalidInputError(f"--remeasure-runs must be >= 5, got {self.remeasure_runs}")
        if self.framework not in ("torch", "keras"):
            raise InvalidInputError(f"framework {self.framework!r} unknown; choose one of torch, keras")

    def search_config(self) -> SearchConfig:
        """The genetic search's settings: maximize accuracy, minimize latency (or a limit on it)."""
        return SearchConfig(
            population=self.population, generations=self.generations, elite=self.elite,
            seed=self.seed, pareto=self.pareto,
            objectives=(Objective("accuracy"), Objective("latency_ms", maximize=False)),
            limits={"latency_ms": self.max_latency_ms} if self.max_latency_ms is not None else {},
        )


@dataclass(frozen=True)
class ChosenModel:
    """A model the search chose (the best, or a member of the front), re-measured after the search."""

    name: str  # "best" or "front<i>"
    genome: dict[str, Any]  # canonical: inactive genes are None
    accuracy: float  # percent on the validation split, in onnxruntime
    latency_ms_search: float  # p50 measured during the search
    latency_ms: float  # p50 re-measured together with the other chosen models
    params: int
    size_bytes: int
    candidate: str  # the candidate's file in the work directory
    speedup: float | None = None  # vs the baseline (None without one), with its 95% CI
    ci_low: float | None = None
    ci_high: float | None = None
    significant: bool | None = None
    accuracy_delta: float | None = None  # accuracy points vs the baseline
    file: str | None = None  # where it was written (None: not written)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict (the rows of `onnxopt search --json`)."""
        d: dict[str, Any] = {
            "name": self.name, "genome": self.genome, "accuracy": self.accuracy,
            "latency_ms_search": self.latency_ms_search, "latency_ms": self.latency_ms,
            "params": self.params, "size_bytes": self.size_bytes,
        }
        if self.speedup is not None:
            d |= {"speedup": self.speedup, "ci_low": self.ci_low, "ci_high": self.ci_high,
                  "significant": self.significant, "accuracy_delta": self.accuracy_delta}
        if self.file is not None:
            d["file"] = self.file
        return d


@dataclass(frozen=True)
class Baseline:
    """The model the search result is compared with: accuracy on the validation split, p50 latency."""

    path: str
    accuracy: float
    latency_ms: float

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict."""
        return {"path": self.path, "accuracy": self.accuracy, "latency_ms": self.latency_ms}


@dataclass(frozen=True)
class SearchRunResult:
    """Outcome of run_search: the search, the chosen models, what was written, the gate verdict."""

    search: SearchResult
    models: tuple[ChosenModel, ...]
    baseline: Baseline | None
    written: tuple[str, ...]
    log: Path  # JSON lines, one evaluated genome per line
    workdir: Path  # candidates and the checkpoint
    train: EvalConfig
    framework: str
    gene_names: tuple[str, ...]  # declaration order of the space's genes
    gate_error: str | None = None  # the latency budget was not met: nothing written

    @property
    def gates_passed(self) -> bool:
        """False when a latency budget was set and no candidate met it."""
        return self.gate_error is None

    def to_dict(self) -> dict[str, Any]:
        """The JSON summary printed by `onnxopt search --json`."""
        return {
            "evaluations": self.search.evaluations,
            "failed": sum(not r.ok for r in self.search.records),
            "feasible": self.search.feasible,
            "models": [m.to_dict() for m in self.models],
            "baseline": self.baseline.to_dict() if self.baseline is not None else None,
            "written": list(self.written),
            "log": str(self.log),
            "workdir": str(self.workdir),
            "history": [h.to_dict() for h in self.search.history],
            "train": self.train.to_dict(),
            "framework": self.framework,
        }


DEFAULT_RUN_CONFIG = SearchRunConfig()  # frozen: safe as a shared default argument


def run_search(
    space: PathLike,
    train: PathLike,
    val: PathLike,
    output: PathLike,
    config: SearchRunConfig = DEFAULT_RUN_CONFIG,
    *,
    teacher: PathLike | None = None,
    baseline: PathLike | None = None,
    workdir: PathLike | None = None,
    log_path: PathLike | None = None,
    plot_path: PathLike | None = None,
    progress: Callable[[GenerationStats], None] | None = None,
    outputs: Outputs | None = None,
) -> SearchRunResult:
    """Search the space (TOML file) on the train/val splits (.npz with labels); write the result.

    teacher: ONNX model whose logits candidates are distilled from. baseline: ONNX model the
    result is compared with. workdir: candidates and checkpoint (default ``<output>.search/``);
    log_path: JSON-lines log (default ``<workdir>/search.jsonl``); plot_path: accuracy vs
    latency plot (needs matplotlib). progress is called after each generation. Raises
    InvalidInputError before any training when an input is unusable, OnnxoptError when every
    candidate failed; a missed latency budget is reported in ``gate_error``, not raised.
    outputs: stage the model(s) and the plot there (the caller commits them) instead of writing
    them directly. Nothing is created before every input has been checked.
    """
    out = Path(output)
    _check_output(out, {"--baseline": baseline, "--teacher": teacher, "--data": train, "--val": val})
    space_obj = load_space(space)
    _check_framework(space_obj.names, config.framework)
    train_data, val_data = load_split(train), load_split(val)
    search_cfg = config.search_config()
    eval_cfg = EvalConfig.from_settings(space_obj.settings.get("train", {}), epochs=config.epochs, seed=config.seed)
    if plot_path is not None:
        from onnxopt.measure.plots import require_matplotlib

        require_matplotlib()  # fail now, not after the search, when matplotlib is missing
    base_acc = _accuracy(baseline, val_data, val) if baseline is not None else None
    t_logits = teacher_logits_for(teacher, train_data[0]) if teacher is not None else None
    work = Path(workdir) if workdir is not None else out.with_name(out.name + ".search")
    models_dir = work / "models"
    evaluator = evaluator_for(config.framework)(  # checks the data; creates nothing
        train_data, val_data, eval_cfg, teacher_logits=t_logits, workdir=models_dir
    )
    space_obj.check_feasible(config.seed)  # a contradictory space fails before the work dir exists
    client = _dask_client(config.dask_address) if config.dask_address is not None else None
    try:
        models_dir.mkdir(parents=True, exist_ok=True)
        log_file = Path(log_path) if log_path is not None else work / "search.jsonl"
        executor = client.get_executor() if client is not None else None
        result = _logged_search(space_obj, evaluator, search_cfg, config, executor, work, log_file, progress)
    finally:
        if client is not None:
            client.close()
    if result.best is None:
        first = next((r.error for r in result.records if r.error), "no candidate evaluated")
        raise OnnxoptError(f"every candidate failed; first error: {first} (log: {log_file})")
    chosen = list(result.front) if config.pareto else [result.best]
    models, base = _remeasure(chosen, space_obj.canonical, baseline, base_acc, eval_cfg, config)
    gate_error = _latency_gate(result, space_obj.canonical, config.max_latency_ms, out)
    written: tuple[str, ...] = ()
    if gate_error is None:
        models, written = _write(models, out, config.pareto, outputs)
    if plot_path is not None:
        _plot(result, config.pareto, outputs.path(plot_path) if outputs is not None else plot_path, base)
    return SearchRunResult(
        result, tuple(models), base, written, log_file, work, eval_cfg, config.framework,
        space_obj.names, gate_error,
    )


def front_path(output: Path, i: int) -> Path:
    """Where member i of a Pareto front is written: ``<stem>.front<i>.onnx`` beside the output."""
    return output.with_name(f"{output.stem}.front{i}{output.suffix or '.onnx'}")


def _check_output(output: Path, inputs: Mapping[str, PathLike | None]) -> None:
    """The output is an .onnx file that is none of the inputs (named by their CLI option)."""
    from onnxopt.core.model import same_file

    if output.suffix != ".onnx":
        raise InvalidInputError(f"{output}: the output must be an .onnx file")
    for what, p in inputs.items():
        if p is not None and same_file(output, p):
            raise InvalidInputError(f"{output}: is also the {what} file; choose another output path")


def _check_framework(gene_names: tuple[str, ...], framework: str) -> None:
    """The builder understands every gene, and the framework is installed (fail before training)."""
    from onnxopt.frameworks.torch_genome import check_genes

    check_genes(gene_names)  # the Keras builder understands the same genes
    if framework == "keras":
        from onnxopt.frameworks import require_keras

        require_keras()  # fail now, not in every candidate, when Keras is missing


def _accuracy(model_path: PathLike, val: Data, val_path: PathLike) -> float:
    """Accuracy (%) of an ONNX model on the validation split, in onnxruntime."""
    from onnxopt.core.feeds import model_feed_from_npz
    from onnxopt.core.model import load_model
    from onnxopt.measure.fidelity import accuracy

    proto = load_model(model_path)
    return accuracy(proto, model_feed_from_npz(proto, {"input": val[0]}, str(val_path)), val[1])


def _dask_client(address: str) -> Any:
    """A connected distributed.Client (InvalidInputError when dask is missing or unreachable)."""
    try:
        from distributed import Client
    except ImportError as e:
        raise InvalidInputError("--dask needs dask: pip install 'dask[distributed]'") from e
    try:
        return Client(address, timeout=30)
    except Exception as e:
        raise InvalidInputError(f"--dask {address}: cannot connect: {e}") from e


def _logged_search(
    space: Any,
    evaluator: Any,
    search_cfg: SearchConfig,
    config: SearchRunConfig,
    executor: Any,
    work: Path,
    log_file: Path,
    progress: Callable[[GenerationStats], None] | None,
) -> SearchResult:
    """The genetic search, checkpointed in work, every record appended to log_file as JSON."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "a" if config.resume else "w", encoding="utf-8") as lf:

        def on_record(r: Record) -> None:
            lf.write(json.dumps(r.to_dict()) + "\n")
            lf.flush()

        return search(
            space, evaluator, search_cfg, executor=executor, workers=config.workers,
            checkpoint=work / "checkpoint.json", resume=config.resume, on_record=on_record,
            progress=progress, max_seconds=config.max_minutes * 60 if config.max_minutes is not None else None,
        )


def _remeasure(
    chosen: list[Record],
    canonical: Callable[[Mapping[str, Any]], dict[str, Any]],
    baseline: PathLike | None,
    base_acc: float | None,
    eval_cfg: EvalConfig,
    config: SearchRunConfig,
) -> tuple[list[ChosenModel], Baseline | None]:
    """Re-measure the chosen models (and the baseline) together, interleaved, on a quiet machine."""
    paths = {("best" if not config.pareto else f"front{i}"): r.metrics["model_path"]  # type: ignore[index]
             for i, r in enumerate(chosen)}
    if baseline is not None:
        paths["baseline"] = str(baseline)
    lat = remeasure(paths, latency_threads=eval_cfg.latency_threads, batch=eval_cfg.batch, seed=config.seed,
                    runs=config.remeasure_runs, reference="baseline" if baseline is not None else None)
    models = []
    for name, r in zip(paths, chosen):
        m = r.metrics or {}
        vs: dict[str, Any] = {}
        if baseline is not None:
            vs = {k: lat[name][k] for k in ("speedup", "ci_low", "ci_high", "significant")}
            vs["accuracy_delta"] = m["accuracy"] - (base_acc or 0.0)
        models.append(ChosenModel(
            name=name, genome=canonical(r.genome), accuracy=m["accuracy"],
            latency_ms_search=m["latency_ms"], latency_ms=lat[name]["p50_ms"], params=int(m["params"]),
            size_bytes=int(m["size_bytes"]), candidate=str(m["model_path"]), **vs,
        ))
    base = None
    if baseline is not None:
        base = Baseline(str(baseline), base_acc or 0.0, lat["baseline"]["p50_ms"])
    return models, base


def _latency_gate(
    result: SearchResult,
    canonical: Callable[[Mapping[str, Any]], dict[str, Any]],
    max_latency_ms: float | None,
    output: Path,
) -> str | None:
    """The error when a latency budget was set and no candidate met it (None: the gate passed)."""
    best = result.best
    if max_latency_ms is None or result.feasible or best is None:
        return None
    return (
        f"no candidate met --max-latency-ms {max_latency_ms}: the closest is {describe_genome(canonical(best.genome))} "
        f"at {best.value('latency_ms'):.4f} ms, {best.value('accuracy'):.2f}% "
        f"(kept at {best.metrics['model_path']}; not written to {output})"  # type: ignore[index]
    )


def _write(
    models: list[ChosenModel], output: Path, pareto: bool, outputs: Outputs | None = None
) -> tuple[list[ChosenModel], tuple[str, ...]]:
    """Write (or stage in outputs) the first model to output and the front beside it; the models
    with their files."""
    from onnxopt.core.model import load_model, save_model

    if outputs is not None:
        outputs.model(output, load_model(models[0].candidate))
    else:
        save_model(load_model(models[0].candidate), output)
    written = [str(output)]
    if not pareto:
        return [replace(models[0], file=str(output))], tuple(written)
    out = []
    for i, m in enumerate(models):
        p = front_path(output, i)
        if outputs is not None:
            outputs.data(p, Path(m.candidate).read_bytes())
        else:
            shutil.copyfile(m.candidate, p)
        out.append(replace(m, file=str(p)))
        written.append(str(p))
    return out, tuple(written)


def _plot(result: SearchResult, pareto: bool, path: PathLike, base: Baseline | None) -> None:
    """Accuracy vs latency of every candidate, the front highlighted, the baseline as a star."""
    from onnxopt.nas.plot import plot_front

    base_pt = {"accuracy": base.accuracy, "latency_ms": base.latency_ms} if base is not None else None
    front = result.front if pareto else pareto_front(result.records, result.config)
    plot_front(result.records, front, path, baseline=base_pt)
