"""Genes of a search space: integers on a stepped range, choices, floats; their TOML tables.

Each gene knows its domain (``contains``), draws from it (``sample``) and mutates a value in
a way suited to its type: an integer moves a few steps, a choice resamples another option, a
float gets Gaussian noise. ``when`` (an expression over earlier genes, see
:mod:`onnxopt.nas.expr`) makes a gene conditional; the space evaluates it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from onnxopt.core.errors import InvalidInputError

GeneValue = int | float | str | bool


@dataclass(frozen=True)
class IntGene:
    """An integer gene on ``low, low + step, ..., high``; mutation moves a few steps."""

    name: str
    low: int
    high: int
    step: int = 1
    when: str | None = None

    def __post_init__(self) -> None:
        _check_name(self.name)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (self.low, self.high, self.step)):
            raise InvalidInputError(f"gene {self.name!r}: low, high and step must be integers")
        if self.step <= 0:
            raise InvalidInputError(f"gene {self.name!r}: step must be >= 1, got {self.step}")
        if self.low > self.high:
            raise InvalidInputError(
                f"gene {self.name!r}: low ({self.low}) > high ({self.high}); swap them"
            )
        if (self.high - self.low) % self.step:
            raise InvalidInputError(
                f"gene {self.name!r}: high - low ({self.high - self.low}) is not a multiple of step "
                f"{self.step}; set high to {self.low + (self.high - self.low) // self.step * self.step}"
            )

    @property
    def size(self) -> int:
        """Number of values in the domain."""
        return (self.high - self.low) // self.step + 1

    def values(self) -> list[int]:
        """Every value of the domain, ascending."""
        return list(range(self.low, self.high + 1, self.step))

    def contains(self, value: Any) -> bool:
        """True when value lies in the domain."""
        return bool(
            isinstance(value, int | np.integer)
            and not isinstance(value, bool)
            and self.low <= value <= self.high
            and (value - self.low) % self.step == 0
        )

    def sample(self, rng: np.random.Generator) -> int:
        """A uniform draw from the domain."""
        return int(self.low + self.step * rng.integers(0, self.size))

    def mutate(self, value: int, rng: np.random.Generator) -> int:
        """Move by +-k steps (k geometric, mostly 1), reflected at the bounds; never a no-op."""
        if self.size == 1:
            return self.low
        idx = (value - self.low) // self.step
        k = int(min(rng.geometric(0.5), self.size - 1))
        sign = 1 if rng.random() < 0.5 else -1
        new = idx + sign * k
        if new < 0 or new >= self.size:
            new = idx - sign * k
        new = min(max(new, 0), self.size - 1)
        if new == idx:
            new = idx + 1 if idx + 1 < self.size else idx - 1
        return int(self.low + self.step * new)


@dataclass(frozen=True)
class ChoiceGene:
    """A categorical gene; mutation resamples another option."""

    name: str
    options: tuple[GeneValue, ...]
    when: str | None = None

    def __post_init__(self) -> None:
        _check_name(self.name)
        if not isinstance(self.options, tuple):
            object.__setattr__(self, "options", tuple(self.options))
        if not self.options:
            raise InvalidInputError(f"gene {self.name!r}: options is empty; list at least one")
        keys = [json.dumps(o) for o in self.options]
        if len(set(keys)) != len(keys):
            raise InvalidInputError(f"gene {self.name!r}: options contain duplicates")
        for o in self.options:
            if not isinstance(o, int | float | str | bool):
                raise InvalidInputError(
                    f"gene {self.name!r}: option {o!r} must be a number, string or boolean"
                )

    @property
    def size(self) -> int:
        """Number of options."""
        return len(self.options)

    def values(self) -> list[GeneValue]:
        """Every option."""
        return list(self.options)

    def contains(self, value: Any) -> bool:
        """True when value is one of the options (type-exact for booleans)."""
        return any(type(value) is type(o) and value == o for o in self.options)

    def sample(self, rng: np.random.Generator) -> GeneValue:
        """A uniform draw among the options."""
        return self.options[int(rng.integers(0, len(self.options)))]

    def mutate(self, value: GeneValue, rng: np.random.Generator) -> GeneValue:
        """Another option, uniformly (the same one only when there is a single option)."""
        others = [o for o in self.options if not (type(o) is type(value) and o == value)]
        if not others:
            return value
        return others[int(rng.integers(0, len(others)))]


@dataclass(frozen=True)
class FloatGene:
    """A real-valued gene on [low, high] (log scale optional); mutation is Gaussian."""

    name: str
    low: float
    high: float
    log: bool = False
    sigma: float = 0.1  # mutation scale as a fraction of the (log) range
    when: str | None = None

    def __post_init__(self) -> None:
        _check_name(self.name)
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise InvalidInputError(f"gene {self.name!r}: low and high must be finite")
        if self.low >= self.high:
            raise InvalidInputError(
                f"gene {self.name!r}: low ({self.low}) must be < high ({self.high})"
            )
        if self.log and self.low <= 0:
            raise InvalidInputError(f"gene {self.name!r}: log = true needs low > 0")
        if not 0 < self.sigma <= 1:
            raise InvalidInputError(f"gene {self.name!r}: sigma must be in (0, 1]")

    @property
    def size(self) -> float:
        """Infinite: a continuous domain."""
        return math.inf

    def values(self) -> list[float]:
        """The two bounds (a continuous domain cannot be listed)."""
        return [self.low, self.high]

    def contains(self, value: Any) -> bool:
        """True when value is a real number in [low, high]."""
        return isinstance(value, float | int) and not isinstance(value, bool) and self.low <= value <= self.high

    def _to(self, v: float) -> float:
        return math.log(v) if self.log else v

    def _from(self, u: float) -> float:
        return math.exp(u) if self.log else u

    def sample(self, rng: np.random.Generator) -> float:
        """A uniform draw (uniform in log space when log = true)."""
        u = rng.uniform(self._to(self.low), self._to(self.high))
        return float(min(max(self._from(u), self.low), self.high))

    def mutate(self, value: float, rng: np.random.Generator) -> float:
        """Gaussian step of sigma * range, clipped to the bounds."""
        lo, hi = self._to(self.low), self._to(self.high)
        u = self._to(float(value)) + rng.normal(0.0, self.sigma * (hi - lo))
        return float(min(max(self._from(min(max(u, lo), hi)), self.low), self.high))


Gene = IntGene | ChoiceGene | FloatGene


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not name.isidentifier():
        raise InvalidInputError(
            f"gene name {name!r} must be an identifier (letters, digits, underscores)"
        )


def gene_to_dict(g: Gene) -> dict[str, Any]:
    """The TOML table of a gene (inverse of gene_from_dict), with its name."""
    if isinstance(g, IntGene):
        d: dict[str, Any] = {"type": "int", "low": g.low, "high": g.high, "step": g.step}
    elif isinstance(g, ChoiceGene):
        d = {"type": "choice", "options": list(g.options)}
    else:
        d = {"type": "float", "low": g.low, "high": g.high, "log": g.log, "sigma": g.sigma}
    d["name"] = g.name
    if g.when is not None:
        d["when"] = g.when
    return d


_GENE_KEYS = {
    "int": {"type", "low", "high", "step", "when"},
    "choice": {"type", "options", "when"},
    "float": {"type", "low", "high", "log", "sigma", "when"},
}


def gene_from_dict(name: str, spec: Mapping[str, Any]) -> Gene:
    """Build a gene from a TOML table ({type = "int", low, high, step} etc.)."""
    if not isinstance(spec, Mapping):
        raise InvalidInputError(f"gene {name!r}: expected a table like {{type = \"int\", low = 1, high = 4}}")
    kind = spec.get("type")
    if kind is None:
        kind = "choice" if "options" in spec else ("float" if isinstance(spec.get("low"), float) else "int")
    if kind not in _GENE_KEYS:
        raise InvalidInputError(f"gene {name!r}: type must be int, choice or float, got {kind!r}")
    extra = sorted(set(spec) - _GENE_KEYS[kind])
    if extra:
        raise InvalidInputError(
            f"gene {name!r}: unknown key(s) {', '.join(extra)} for a {kind} gene "
            f"(allowed: {', '.join(sorted(_GENE_KEYS[kind]))})"
        )
    try:
        if kind == "int":
            return IntGene(name, spec["low"], spec["high"], spec.get("step", 1), spec.get("when"))
        if kind == "choice":
            opts = spec["options"]
            if not isinstance(opts, list | tuple):
                raise InvalidInputError(f"gene {name!r}: options must be a list")
            return ChoiceGene(name, tuple(opts), spec.get("when"))
        return FloatGene(
            name, float(spec["low"]), float(spec["high"]), bool(spec.get("log", False)),
            float(spec.get("sigma", 0.1)), spec.get("when"),
        )
    except KeyError as e:
        raise InvalidInputError(f"gene {name!r}: missing key {e.args[0]!r} for a {kind} gene") from e
