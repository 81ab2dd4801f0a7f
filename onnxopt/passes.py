"""Pass protocol, PassResult, Pipeline (checked after each pass), pass registry, TOML recipes."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np
from onnx import ModelProto

from onnxopt.errors import InvalidInputError, OnnxoptError, PassError
from onnxopt.feeds import Feed

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the tomli backport has the same API
    import tomli as tomllib  # type: ignore[no-redef]

log = logging.getLogger(__name__)

OBJECTIVES = ("latency", "size")


@dataclass(frozen=True)
class PassContext:
    """What passes may need besides the model: data, seed, objective, benchmark settings."""

    calib: Any = None  # Feed | onnxopt.calibration.CalibrationSource | None
    val: Feed | None = None
    labels: np.ndarray | None = None
    seed: int = 0
    objective: str = "latency"
    bench: Any = None  # onnxopt.benchmark.BenchConfig | None (typed loosely: imported lazily)

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
    """One pass as run by a Pipeline: its result and wall time."""

    pass_name: str
    options: dict[str, Any]
    result: PassResult
    wall_s: float


@dataclass(frozen=True)
class PipelineResult:
    """All stages of a pipeline run; `model` is the last stage's model (or the input)."""

    input_model: ModelProto
    stages: tuple[StageResult, ...]

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
    ) -> PipelineResult:
        """Run every pass on the model in turn; the input model is never modified."""
        ctx = context or PassContext()
        done: list[str] = []
        stages: list[StageResult] = []
        current = model
        for p in self.passes:
            start = time.perf_counter()
            try:
                result = p(current, ctx)
                if not isinstance(result, PassResult):
                    raise TypeError(f"returned {type(result).__name__}, not PassResult")
                if self.check and result.modified:
                    check_model(result.model)
            except Exception as e:
                reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise PassError(f"{p.name} failed after passes [{', '.join(done)}]: {reason}") from e
            wall = time.perf_counter() - start
            log.info("pass %s: modified=%s in %.2f s", p.name, result.modified, wall)
            stage = StageResult(p.name, pass_options(p), result, wall)
            stages.append(stage)
            if on_stage is not None:
                on_stage(stage)
            done.append(p.name)
            current = result.model
        return PipelineResult(model, tuple(stages))


def check_model(model: ModelProto) -> None:
    """ONNX checker plus an onnxruntime session (optimizer off; custom ops only when used)."""
    import onnx

    from onnxopt.benchmark import needs_custom_ops
    from onnxopt.errors import InvalidModelError
    from onnxopt.runtime import create_session

    if model.ByteSize() < 2**31 - 2**20:
        try:
            onnx.checker.check_model(model)
        except Exception as e:
            raise InvalidModelError(f"the result fails the ONNX checker: {e}") from e
    create_session(model, opt_level="disable", intra_op_threads=1, custom_ops=needs_custom_ops(model))


# ---------------------------------------------------------------- registry

_REGISTRY: dict[str, type] = {}
P = TypeVar("P", bound=type)


def register_pass(cls: P) -> P:
    """Class decorator: register a frozen-dataclass pass under its `name` class attribute."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__name__} needs a class attribute `name`")
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls.__name__} must be a dataclass (its fields are the recipe options)")
    _REGISTRY[name] = cls
    return cls


def _load_builtin_passes() -> None:
    # graph_opt and the adapters register themselves on import; they import heavy code lazily.
    import onnxopt.graph_opt  # noqa: F401
    import onnxopt.pass_adapters  # noqa: F401
    import onnxopt.postprocess  # noqa: F401


def available_passes() -> dict[str, type]:
    """Registered pass names mapped to their classes."""
    _load_builtin_passes()
    return dict(sorted(_REGISTRY.items()))


def pass_option_names(name: str) -> tuple[str, ...]:
    """The recipe option names a pass accepts."""
    cls = _pass_class(name)
    return tuple(f.name for f in dataclasses.fields(cls) if f.init)


def _pass_class(name: str) -> type:
    passes = available_passes()
    if name not in passes:
        raise InvalidInputError(
            f"unknown pass {name!r}; valid passes: {', '.join(passes)}"
        )
    return passes[name]


def make_pass(name: str, options: Mapping[str, Any] | None = None, *, where: str = "") -> Pass:
    """Build a registered pass from recipe options, with clear errors for names and types."""
    prefix = f"{where}: " if where else ""
    try:
        cls = _pass_class(name)
    except InvalidInputError as e:
        raise InvalidInputError(f"{prefix}{e}") from None
    opts = dict(options or {})
    valid = pass_option_names(name)
    unknown = sorted(set(opts) - set(valid))
    if unknown:
        raise InvalidInputError(
            f"{prefix}pass {name!r} has no option {unknown[0]!r}; valid options: {', '.join(valid) or '(none)'}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {k: _coerce(v, hints.get(k, Any), f"{prefix}pass {name!r} option {k!r}") for k, v in opts.items()}
    try:
        inst = cls(**kwargs)
    except OnnxoptError as e:
        raise InvalidInputError(f"{prefix}pass {name!r}: {e}") from e
    return typing.cast(Pass, inst)


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


def _coerce(value: Any, hint: Any, what: str) -> Any:
    """Check a TOML value against a field type hint; lists become tuples."""
    if hint is Any:
        return value
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, what)
            except InvalidInputError as e:
                errors.append(str(e))
        raise InvalidInputError(errors[0] if errors else f"{what}: unexpected value {value!r}")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise InvalidInputError(f"{what}: expected a list, got {value!r}")
        args = typing.get_args(hint)
        item = args[0] if args else Any
        return tuple(_coerce(v, item, what) for v in value)
    if hint is bool:
        if not isinstance(value, bool):
            raise InvalidInputError(f"{what}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidInputError(f"{what}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidInputError(f"{what}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise InvalidInputError(f"{what}: expected a string, got {value!r}")
        return value
    return value


# ---------------------------------------------------------------- recipes

RECIPE_KEYS = ("description", "passes")


@dataclass(frozen=True)
class PassSpec:
    """One entry of a recipe: a registered pass name and its options."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)

    def build(self) -> Pass:
        """The pass instance."""
        return make_pass(self.name, self.options)


@dataclass(frozen=True)
class Recipe:
    """An ordered list of passes (what `--recipe file.toml` holds)."""

    passes: tuple[PassSpec, ...]
    description: str = ""

    def __post_init__(self) -> None:
        if not self.passes:
            raise InvalidInputError("a recipe needs at least one [[passes]] entry")
        for i, spec in enumerate(self.passes):
            make_pass(spec.name, spec.options, where=f"passes[{i}]")

    def pipeline(self, *, check: bool = True) -> Pipeline:
        """The Pipeline that runs this recipe."""
        return Pipeline([s.build() for s in self.passes], check=check)

    def to_toml(self) -> str:
        """The recipe as TOML text (loadable with load_recipe)."""
        lines: list[str] = []
        if self.description:
            lines.append(f"description = {_toml_value(self.description)}")
            lines.append("")
        for spec in self.passes:
            lines.append("[[passes]]")
            lines.append(f"name = {_toml_value(spec.name)}")
            for k, v in spec.options.items():
                lines.append(f"{k} = {_toml_value(v)}")
            lines.append("")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict."""
        return {
            "description": self.description,
            "passes": [{"name": s.name, **_jsonable(s.options)} for s in self.passes],
        }


def _jsonable(options: Mapping[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()}


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        escaped = v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise InvalidInputError(f"cannot write {v!r} to TOML")


def parse_recipe(text: str, source: str = "recipe") -> Recipe:
    """Parse recipe TOML text; errors name the line/column, unknown passes and options."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise InvalidInputError(f"{source}: not valid TOML: {e}") from e
    return recipe_from_dict(data, source)


def recipe_from_dict(data: Mapping[str, Any], source: str = "recipe") -> Recipe:
    """A Recipe from already-parsed TOML ({'passes': [{'name': ..., option: ...}, ...]})."""
    unknown = sorted(set(data) - set(RECIPE_KEYS))
    if unknown:
        raise InvalidInputError(
            f"{source}: unknown key {unknown[0]!r}; valid top-level keys: {', '.join(RECIPE_KEYS)} "
            "(each pass is a [[passes]] table with a name)"
        )
    entries = data.get("passes")
    if not isinstance(entries, list) or not entries:
        raise InvalidInputError(
            f"{source}: no passes; add [[passes]] tables, e.g. [[passes]] name = \"optimize_graph\""
        )
    specs: list[PassSpec] = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise InvalidInputError(f"{source}: passes[{i}] must be a table with a name")
        opts = dict(entry)
        name = opts.pop("name", None)
        if not isinstance(name, str):
            raise InvalidInputError(
                f"{source}: passes[{i}] has no name; valid passes: {', '.join(available_passes())}"
            )
        where = f"{source}: passes[{i}]"
        make_pass(name, opts, where=where)  # validate here to name the source in the message
        specs.append(PassSpec(name, opts))
    description = data.get("description", "")
    if not isinstance(description, str):
        raise InvalidInputError(f"{source}: description must be a string")
    return Recipe(tuple(specs), description)


def load_recipe(path: str | os.PathLike[str]) -> Recipe:
    """Load a recipe from a TOML file."""
    p = Path(path)
    if not p.exists():
        raise InvalidInputError(f"{p}: no such recipe file")
    if p.is_dir():
        raise InvalidInputError(f"{p}: is a directory; expected a .toml recipe")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidInputError(f"{p}: cannot read recipe: {e}") from e
    return parse_recipe(text, str(p))
