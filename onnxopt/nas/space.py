"""Search space declaration for the genetic search: genes, constraints, TOML loading, validation.

A genome is a plain ``dict`` mapping gene names to values. Genes are integers on a stepped
range, choices among a list of options, or floats on an interval. A gene may be conditional
(``when = "depth >= 3"``): when its condition is false it is inactive, and its value does not
count when genomes are compared (the canonical key stores ``None`` for it). Constraints are
boolean expressions over gene values (``"width_2 >= width_1"``) or, from Python, any
predicate ``genome -> bool``; genomes that violate them are repaired by resampling the
offending draw, and rejected when repair fails.
"""

from __future__ import annotations

import ast
import functools
import json
import math
import operator
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onnxopt.core.errors import InvalidInputError

Genome = dict[str, Any]
GeneValue = int | float | str | bool

# How many random draws are tried before a space is declared contradictory.
_FEASIBILITY_PROBES = 4000
_REPAIR_TRIES = 200


def _plain(value: Any) -> Any:
    """Convert numpy scalars to Python scalars (genomes must be JSON-serializable)."""
    return value.item() if isinstance(value, np.generic) else value


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


# --- a small, safe expression language for `when` and constraints -------------------------

_BINOPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_CMPOPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
}
_FUNCS: dict[str, Callable[..., Any]] = {"min": min, "max": max, "abs": abs}


@dataclass(frozen=True)
class Expression:
    """A boolean/arithmetic expression over gene names (no attribute access, no calls but min/max/abs)."""

    source: str
    names: frozenset[str] = field(default_factory=frozenset)

    @staticmethod
    def parse(source: str, what: str) -> Expression:
        """Parse and check an expression; InvalidInputError names what it belongs to."""
        try:
            tree = ast.parse(source, mode="eval")
        except SyntaxError as e:
            raise InvalidInputError(f"{what}: cannot parse {source!r}: {e.msg}") from e
        names: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Name):
                if node.id not in _FUNCS and node.id not in ("True", "False"):
                    names.add(node.id)
            elif isinstance(node, ast.Call):
                if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCS:
                    raise InvalidInputError(f"{what}: only min(), max(), abs() may be called in {source!r}")
            elif not isinstance(
                node,
                ast.Expression | ast.BoolOp | ast.BinOp | ast.UnaryOp | ast.Compare | ast.Constant
                | ast.Tuple | ast.List | ast.Load | ast.And | ast.Or | ast.Not | ast.USub | ast.UAdd
                | ast.IfExp | ast.operator | ast.cmpop,
            ):
                raise InvalidInputError(f"{what}: {type(node).__name__} not allowed in {source!r}")
        return Expression(source, frozenset(names))

    def __call__(self, genome: Mapping[str, Any]) -> Any:
        """Evaluate against a genome (inactive genes are None)."""
        return _eval(_parsed(self.source), genome)


@functools.lru_cache(maxsize=1024)
def _parsed(source: str) -> ast.AST:
    return ast.parse(source, mode="eval").body


def _eval(node: ast.AST, env: Mapping[str, Any]) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        if node.id in ("True", "False"):
            return node.id == "True"
        return env.get(node.id)
    if isinstance(node, ast.Tuple | ast.List):
        return tuple(_eval(e, env) for e in node.elts)
    if isinstance(node, ast.BoolOp):
        vals = (_eval(v, env) for v in node.values)
        return all(vals) if isinstance(node.op, ast.And) else any(vals)
    if isinstance(node, ast.UnaryOp):
        v = _eval(node.operand, env)
        if isinstance(node.op, ast.Not):
            return not v
        return -v if isinstance(node.op, ast.USub) else +v
    if isinstance(node, ast.BinOp):
        return _BINOPS[type(node.op)](_eval(node.left, env), _eval(node.right, env))
    if isinstance(node, ast.Compare):
        left = _eval(node.left, env)
        for op, comp in zip(node.ops, node.comparators):
            right = _eval(comp, env)
            if (left is None or right is None) and not isinstance(op, ast.Eq | ast.NotEq):
                return False
            if not _CMPOPS[type(op)](left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.IfExp):
        return _eval(node.body, env) if _eval(node.test, env) else _eval(node.orelse, env)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        return _FUNCS[node.func.id](*(_eval(a, env) for a in node.args))
    raise InvalidInputError(f"cannot evaluate {ast.dump(node)}")


# --- the space ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchSpace:
    """Genes plus constraints; samples, canonicalizes, repairs and validates genomes."""

    genes: tuple[Gene, ...]
    constraints: tuple[str, ...] = ()
    predicate: Callable[[Genome], bool] | None = None  # a user predicate (Python API only)
    settings: Mapping[str, Any] = field(default_factory=dict)  # extra TOML tables, e.g. [train]

    def __post_init__(self) -> None:
        if not isinstance(self.genes, tuple):
            object.__setattr__(self, "genes", tuple(self.genes))
        if not isinstance(self.constraints, tuple):
            object.__setattr__(self, "constraints", tuple(self.constraints))
        if not self.genes:
            raise InvalidInputError(
                "the search space has no genes; declare at least one under [genes.<name>]"
            )
        names = [g.name for g in self.genes]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise InvalidInputError(f"search space declares gene(s) twice: {', '.join(dup)}")
        known = set(names)
        order = {n: i for i, n in enumerate(names)}
        whens: dict[str, Expression] = {}
        for g in self.genes:
            if g.when is None:
                continue
            expr = Expression.parse(g.when, f"gene {g.name!r} when")
            unknown = sorted(expr.names - known)
            if unknown:
                raise InvalidInputError(
                    f"gene {g.name!r}: when = {g.when!r} uses unknown gene(s) {', '.join(unknown)}"
                )
            later = sorted(n for n in expr.names if order[n] >= order[g.name])
            if later:
                raise InvalidInputError(
                    f"gene {g.name!r}: when = {g.when!r} must only use genes declared before it "
                    f"(move {', '.join(later)} above {g.name!r})"
                )
            whens[g.name] = expr
        exprs = []
        for c in self.constraints:
            expr = Expression.parse(c, "constraint")
            unknown = sorted(expr.names - known)
            if unknown:
                raise InvalidInputError(
                    f"constraint {c!r} uses unknown gene(s) {', '.join(unknown)}; genes are: {', '.join(names)}"
                )
            exprs.append(expr)
        object.__setattr__(self, "_whens", whens)
        object.__setattr__(self, "_exprs", tuple(exprs))

    # -- basic properties
    @property
    def names(self) -> tuple[str, ...]:
        """Gene names in declaration order."""
        return tuple(g.name for g in self.genes)

    def gene(self, name: str) -> Gene:
        """The gene called name."""
        for g in self.genes:
            if g.name == name:
                return g
        raise KeyError(name)

    @property
    def cardinality(self) -> float:
        """Upper bound on the number of distinct genomes (inf with float genes)."""
        n = 1.0
        for g in self.genes:
            n *= float(g.size)
        return n

    # -- genomes
    def active(self, genome: Mapping[str, Any]) -> dict[str, bool]:
        """Which genes are active for this genome."""
        env: dict[str, Any] = {}
        act: dict[str, bool] = {}
        whens: dict[str, Expression] = self._whens  # type: ignore[attr-defined]
        for g in self.genes:
            on = bool(whens[g.name](env)) if g.name in whens else True
            act[g.name] = on
            env[g.name] = genome.get(g.name) if on else None
        return act

    def canonical(self, genome: Mapping[str, Any]) -> Genome:
        """The genome with inactive genes set to None (equal phenotypes compare equal)."""
        act = self.active(genome)
        return {g.name: (_plain(genome.get(g.name)) if act[g.name] else None) for g in self.genes}

    def key(self, genome: Mapping[str, Any]) -> str:
        """A canonical string key (JSON) used for duplicate detection and the fitness cache."""
        return json.dumps(self.canonical(genome), sort_keys=False, separators=(",", ":"))

    def violations(self, genome: Mapping[str, Any]) -> list[str]:
        """The constraints (and domain checks) this genome breaks; empty when valid."""
        problems = []
        act = self.active(genome)
        for g in self.genes:
            if act[g.name] and not g.contains(genome.get(g.name)):
                problems.append(f"{g.name}={genome.get(g.name)!r} outside its domain")
        canon = self.canonical(genome)
        for expr in self._exprs:  # type: ignore[attr-defined]
            try:
                ok = bool(expr(canon))
            except Exception as e:  # e.g. division by zero in a user expression
                ok = False
                problems.append(f"{expr.source}: {type(e).__name__}: {e}")
                continue
            if not ok:
                problems.append(expr.source)
        if self.predicate is not None:
            try:
                if not self.predicate(dict(canon)):
                    problems.append("predicate")
            except Exception as e:
                problems.append(f"predicate raised {type(e).__name__}: {e}")
        return problems

    def is_valid(self, genome: Mapping[str, Any]) -> bool:
        """True when the genome lies in every domain and satisfies every constraint."""
        return not self.violations(genome)

    def sample(self, rng: np.random.Generator) -> Genome:
        """A genome drawn uniformly gene by gene (not checked against constraints)."""
        return {g.name: g.sample(rng) for g in self.genes}

    def sample_valid(self, rng: np.random.Generator, tries: int = _REPAIR_TRIES) -> Genome | None:
        """A genome satisfying the constraints (rejection sampling), or None after `tries` draws."""
        for _ in range(tries):
            g = self.sample(rng)
            if self.is_valid(g):
                return g
        return None

    def repair(self, genome: Genome, rng: np.random.Generator, tries: int = _REPAIR_TRIES) -> Genome | None:
        """Make a genome valid by resampling genes named in broken constraints; None if that fails."""
        if self.is_valid(genome):
            return genome
        exprs: tuple[Expression, ...] = self._exprs  # type: ignore[attr-defined]
        g = dict(genome)
        for _ in range(tries):
            act = self.active(g)
            for gene in self.genes:
                if act[gene.name] and not gene.contains(g.get(gene.name)):
                    g[gene.name] = gene.sample(rng)
            canon = self.canonical(g)
            broken = [e for e in exprs if not _safe_true(e, canon)]
            if not broken and (self.predicate is None or _safe_pred(self.predicate, canon)):
                return g
            pool = sorted({n for e in broken for n in e.names}) or list(self.names)
            name = pool[int(rng.integers(0, len(pool)))]
            g[name] = self.gene(name).sample(rng)
        return None

    def iter_all(self, limit: int = 100_000) -> Iterator[Genome]:
        """Every genome of a finite space (up to `limit`), in declaration order."""
        if self.cardinality > limit:
            raise InvalidInputError(f"space has {self.cardinality:.3g} genomes; too many to enumerate")
        import itertools

        for combo in itertools.product(*(g.values() for g in self.genes)):
            yield dict(zip(self.names, combo))

    def check_feasible(self, seed: int = 0) -> None:
        """Raise InvalidInputError when no genome satisfies the constraints (contradictory space)."""
        if self.cardinality <= 20_000:
            if any(self.is_valid(g) for g in self.iter_all()):
                return
        else:
            rng = np.random.default_rng(seed)
            for _ in range(_FEASIBILITY_PROBES):
                if self.is_valid(self.sample(rng)):
                    return
        rules = list(self.constraints) + (["predicate"] if self.predicate is not None else [])
        raise InvalidInputError(
            "the search space is contradictory: no genome satisfies the constraints "
            f"({'; '.join(rules) or 'none'}); relax a constraint or widen a gene's range"
        )

    def fingerprint(self) -> str:
        """A JSON description of genes and constraints (checkpoints refuse a different space)."""
        return json.dumps(
            {"genes": [_gene_dict(g) for g in self.genes], "constraints": list(self.constraints)},
            sort_keys=True,
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable description."""
        return json.loads(self.fingerprint())


def _safe_true(expr: Expression, genome: Mapping[str, Any]) -> bool:
    try:
        return bool(expr(genome))
    except Exception:
        return False


def _safe_pred(pred: Callable[[Genome], bool], genome: Genome) -> bool:
    try:
        return bool(pred(dict(genome)))
    except Exception:
        return False


def _gene_dict(g: Gene) -> dict[str, Any]:
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


def space_from_dict(data: Mapping[str, Any], source: str = "space") -> SearchSpace:
    """A SearchSpace from a parsed TOML document: [genes.<name>] tables + constraints = [...]."""
    genes_tbl = data.get("genes")
    if not genes_tbl:
        raise InvalidInputError(
            f"{source}: no genes; declare them as [genes.<name>] tables "
            "(see examples/search_space.toml)"
        )
    if not isinstance(genes_tbl, Mapping):
        raise InvalidInputError(f"{source}: 'genes' must be a table of [genes.<name>] tables")
    constraints = data.get("constraints", [])
    if not isinstance(constraints, list) or not all(isinstance(c, str) for c in constraints):
        raise InvalidInputError(f"{source}: constraints must be a list of strings")
    unknown = sorted(set(data) - {"genes", "constraints", "train", "search"})
    if unknown:
        raise InvalidInputError(
            f"{source}: unknown top-level key(s) {', '.join(unknown)} "
            "(allowed: genes, constraints, train, search)"
        )
    try:
        genes = tuple(gene_from_dict(n, s) for n, s in genes_tbl.items())
        settings = {k: dict(v) for k, v in data.items() if k in ("train", "search")}
        return SearchSpace(genes, tuple(constraints), settings=settings)
    except InvalidInputError as e:
        raise InvalidInputError(f"{source}: {e}") from e


def load_space(path: str | os.PathLike[str]) -> SearchSpace:
    """Load a search space from a TOML file, validate it, and check it is not contradictory."""
    p = Path(path)
    if not p.exists():
        raise InvalidInputError(f"{p}: no such search space file")
    if p.is_dir():
        raise InvalidInputError(f"{p}: is a directory; expected a .toml search space")
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ImportError as e:
            raise InvalidInputError("reading TOML needs Python 3.11 or `pip install tomli`") from e
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise InvalidInputError(f"{p}: not valid TOML: {e}") from e
    space = space_from_dict(data, str(p))
    try:
        space.check_feasible()
    except InvalidInputError as e:
        raise InvalidInputError(f"{p}: {e}") from e
    return space


def genomes_equal(space: SearchSpace, a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """True when two genomes have the same canonical form."""
    return space.key(a) == space.key(b)


def describe_genome(genome: Mapping[str, Any], names: Sequence[str] | None = None) -> str:
    """A compact one-line rendering: 'depth=2 width_1=16 act=relu'."""
    keys = names if names is not None else list(genome)
    return " ".join(f"{k}={genome[k]}" for k in keys if genome.get(k) is not None)
