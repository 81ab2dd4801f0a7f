"""Pass protocol, PassContext, PassResult, Pipeline (checked after each pass) and the pass registry."""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np
from onnx import ModelProto

from onnxopt.core.errors import InvalidInputError, PassError
from onnxopt.core.external import byte_size, load_external
from onnxopt.core.feeds import Feed
from onnxopt.core.names import with_node_names

log = logging.getLogger(__name__)

OBJECTIVES = ("latency", "size")


@dataclass(frozen=True)
class PassContext:
    """What passes may need besides the model: data, seed, objective, benchmark settings."""

    calib: Any = None  # Feed | onnxopt.quantization.calibration.CalibrationSource | None
    val: Feed | None = None
    labels: np.ndarray | None = None
    seed: int = 0
    objective: str = "latency"
    bench: Any = None  # onnxopt.measure.benchmark.BenchConfig | None (typed loosely: imported lazily)
    prior: tuple[str, ...] = ()  # names of the passes that ran before this one (set by Pipeline.run)
    family: str | None = None  # the input model's core.model.model_family, when the caller computed it once
    floor: Any = None  # quantization.evaluate.Budget every number-changing stage must hold (set by optimize)
    # Set by Pipeline.run for a pass whose class sets reads_file = True, when the store kept the model's
    # graph only: the file the model is in (the model handed to the pass is then that graph).
    model_path: Path | None = None

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise InvalidInputError(
                f"unknown objective {self.objective!r}; choose one of {', '.join(OBJECTIVES)}"
            )


@dataclass(frozen=True)
class PassResult:
    """The output of a pass: a new model, whether it changed, and a JSON-serializable report.

    keep_if_faster: the pass produced a candidate that the caller should keep only when it is
    measured to be faster (used by auto-mode quantization; optimize() decides after benchmarking).
    changes_outputs: the outputs differ by design (post-processing); verification then compares
    against the input model with the same pass applied.
    """

    model: ModelProto
    modified: bool
    report: dict[str, Any] = field(default_factory=dict)
    keep_if_faster: bool = False
    changes_outputs: bool = False


@runtime_checkable
class Pass(Protocol):
    """A model transform: never mutates its input; returns a PassResult."""

    name: typing.ClassVar[str]

    def __call__(self, model: ModelProto, context: PassContext) -> PassResult: ...


@dataclass(frozen=True)
class StageResult:
    """One pass as run by a Pipeline: its result and wall time.

    With a `store` given to Pipeline.run, the model lives in the file at `path` and
    result.model holds what the store returned (the graph only, weights in the file);
    size_bytes is the model's serialized size, taken before it was stored.
    """

    pass_name: str
    options: dict[str, Any]
    result: PassResult
    wall_s: float
    path: Path | None = None
    size_bytes: int | None = None


# Store: write a model to a file, return (its path, the proto to keep: e.g. its graph only); see Pipeline.run.
Store = Callable[[ModelProto, str], tuple[Path, ModelProto]]


@dataclass(frozen=True)
class PipelineResult:
    """All stages of a pipeline run; `model` is the last stage's model (or the input).

    input_path: the input as stored, when Pipeline.run was given a `store`.
    """

    input_model: ModelProto
    stages: tuple[StageResult, ...]
    input_path: Path | None = None

    @property
    def model(self) -> ModelProto:
        """The model after the last pass."""
        return self.stages[-1].result.model if self.stages else self.input_model


class Pipeline:
    """Runs passes in order; validates the model after each; wraps failures as PassError."""

    def __init__(self, passes: Sequence[Pass], *, check: bool = True) -> None:
        self.passes = tuple(passes)
        self.check = check

    def __repr__(self) -> str:
        return f"Pipeline([{', '.join(p.name for p in self.passes)}])"

    def run(
        self,
        model: ModelProto,
        context: PassContext | None = None,
        *,
        on_stage: Callable[[StageResult], None] | None = None,
        store: Store | None = None,
        stored: tuple[Path, Callable[[], ModelProto]] | None = None,
    ) -> PipelineResult:
        """Run every pass on the model in turn; the input model is never modified.

        store: keep each stage's model in a file rather than in memory (optimize() gives one that
        writes into its work directory): the input and every model a pass changed are written
        once, the model is checked from its file, and only the full model the next pass works on
        stays in memory; each StageResult then holds the path and the proto the store returned.
        stored: the input is in the store already, (its file, a function that loads it with its
        weights and named nodes); `model` is then what the store kept of it (its graph only when
        big). The first pass gets the loaded model, which no one else holds: it is freed as soon
        as that pass is done (a caller holding the full input would keep it through every pass).
        A pass whose class sets `reads_file = True` gets, when the store kept the graph only, that
        graph and context.model_path (the file): no full model is held while it runs; a later
        pass that needs the weights loads them from the file again.
        """
        ctx = context or PassContext()
        done: list[str] = []
        stages: list[StageResult] = []
        reload: Callable[[], ModelProto] | None = None  # loads the model `last` holds, with its weights
        if stored is not None and store is not None:
            last: tuple[Path, ModelProto] | None = (stored[0], model)
            current, reload = model, stored[1]
        else:
            current = with_node_names(model)  # passes identify nodes by name; names are optional in ONNX
            last = store(current, "input") if store is not None else None
            reload = functools.partial(load_external, last[0]) if last is not None else None
        input_path = last[0] if last is not None else None
        for i, p in enumerate(self.passes):
            start = time.perf_counter()
            path, size = None, None
            pctx = dataclasses.replace(ctx, prior=tuple(done))
            try:
                if last is not None and getattr(p, "reads_file", False) and not model_has_weights(last[1]):
                    current, pctx = last[1], dataclasses.replace(pctx, model_path=last[0])
                elif not model_has_weights(current) and reload is not None:
                    current = reload()
                result = p(current, pctx)
                if not isinstance(result, PassResult):
                    raise TypeError(f"returned {type(result).__name__}, not PassResult")
                current = result.model  # the pass's input is not held while its output is stored and checked
                if store is not None and last is not None:
                    size = byte_size(result.model)
                    if result.modified:
                        last = store(result.model, f"{i + 1}-{p.name}")
                        reload = functools.partial(load_external, last[0])
                    path = last[0]
                if self.check and result.modified:
                    check_model(path if path is not None else result.model)
            except Exception as e:
                reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise PassError(f"{p.name} failed after passes [{', '.join(done)}]: {reason}") from e
            wall = time.perf_counter() - start
            log.info("pass %s: modified=%s in %.2f s", p.name, result.modified, wall)
            if last is not None:  # keep what the store returned (the graph only: the weights are in the file)
                result = dataclasses.replace(result, model=last[1])
            stage = StageResult(p.name, pass_options(p), result, wall, path, size)
            stages.append(stage)
            if on_stage is not None:
                on_stage(stage)
            done.append(p.name)
        return PipelineResult(model, tuple(stages), input_path)


def model_has_weights(model: ModelProto) -> bool:
    """False for a proto whose initializers point into external data (a store's graph-only proto)."""
    from onnx import TensorProto

    return not any(t.data_location == TensorProto.EXTERNAL for t in model.graph.initializer)


def check_model(model: ModelProto | Path) -> None:
    """ONNX checker plus an onnxruntime session (optimizer off; custom ops only when used).

    A path is checked from its file (weights in external data are not loaded into Python)."""
    import onnx

    from onnxopt.core.errors import InvalidModelError
    from onnxopt.core.runtime import create_session, needs_custom_ops

    if isinstance(model, Path):
        graph = onnx.load(str(model), load_external_data=False)
        checked: ModelProto | str | None = str(model)
    else:
        graph = model
        checked = model if byte_size(model) < 2**31 - 2**20 else None
    if checked is not None:
        try:
            onnx.checker.check_model(checked)
        except Exception as e:
            raise InvalidModelError(f"the result fails the ONNX checker: {e}") from e
    create_session(model, opt_level="disable", intra_op_threads=1, custom_ops=needs_custom_ops(graph), prepack=False)


# ---------------------------------------------------------------- registry

REGISTRY: dict[str, type] = {}
P = TypeVar("P", bound=type)


def register_pass(cls: P) -> P:
    """Class decorator: register a frozen-dataclass pass under its `name` class attribute."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__name__} needs a class attribute `name`")
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls.__name__} must be a dataclass (its fields are the recipe options)")
    REGISTRY[name] = cls
    return cls


def pass_options(p: Pass) -> dict[str, Any]:
    """The options of a pass instance that differ from its defaults (for recipes and reports)."""
    if not dataclasses.is_dataclass(p):
        return {}
    out: dict[str, Any] = {}
    for f in dataclasses.fields(p):
        value = getattr(p, f.name)
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        if value != default:
            out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


C = TypeVar("C", bound="ConfigPass")


class ConfigPass:
    """Base of passes whose recipe options are the fields of a config dataclass.

    Subclasses are made by `config_pass`, so each option is declared once, on the config.
    """

    name: typing.ClassVar[str]
    config_class: typing.ClassVar[type]

    def __post_init__(self) -> None:
        self.config()  # validate the options now: a recipe error names the pass before any work

    def config(self, **from_context: Any) -> Any:
        """The config dataclass built from this pass's options plus values taken from the context."""
        options = {f.name: getattr(self, f.name) for f in dataclasses.fields(typing.cast(Any, self))}
        return self.config_class(**options, **from_context)


def config_pass(base: type[C], config_class: type, *, name: str, skip: tuple[str, ...] = ()) -> type[C]:
    """A frozen dataclass subclass of `base` whose fields are `config_class`'s fields minus `skip`.

    Skipped fields are not recipe options: the pass takes them from the PassContext (objective,
    seed) or leaves them at their defaults.
    """
    hints = typing.get_type_hints(config_class)
    fields: list[tuple[str, Any, Any]] = []
    for f in dataclasses.fields(config_class):
        if f.name in skip or not f.init:
            continue
        if f.default_factory is not dataclasses.MISSING:
            fields.append((f.name, hints[f.name], field(default_factory=f.default_factory)))
        else:
            fields.append((f.name, hints[f.name], field(default=f.default)))
    cls = dataclasses.make_dataclass(
        base.__name__.lstrip("_"),
        fields,
        bases=(base,),
        frozen=True,
        namespace={"name": name, "config_class": config_class, "__doc__": base.__doc__,
                   "__module__": base.__module__},
    )
    return typing.cast(type[C], register_pass(cls))
