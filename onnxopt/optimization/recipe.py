"""Recipes: an ordered list of registered passes with options, read from and written to TOML.

Importing this module registers the built-in passes (graph, post-processing, quantization,
pruning), so every pass name a recipe can use is known here.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import onnxopt.passes.graph  # noqa: F401  (registers optimize_graph, fold_constants)
import onnxopt.passes.postprocess  # noqa: F401  (registers add_postprocessing)
import onnxopt.passes.transformer  # noqa: F401  (registers fuse_transformer)
import onnxopt.pruning.recipe_pass  # noqa: F401  (registers prune_magnitude, prune_channels)
import onnxopt.quantization.recipe_pass  # noqa: F401  (registers quantize)
from onnxopt.core.errors import InvalidInputError, OnnxoptError
from onnxopt.core.toml import parse_toml, read_toml_text
from onnxopt.passes.base import REGISTRY, Pass, Pipeline


def available_passes() -> dict[str, type]:
    """Registered pass names mapped to their classes."""
    return dict(sorted(REGISTRY.items()))


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
    return recipe_from_dict(parse_toml(text, source), source)


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
    return parse_recipe(read_toml_text(path, "recipe"), str(path))
