"""Search space declaration for the genetic search: genes, constraints, TOML loading, validation.

A genome is a plain ``dict`` mapping gene names to values. Genes (:mod:`onnxopt.nas.genes`) are
integers on a stepped range, choices among a list of options, or floats on an interval. A gene
may be conditional (``when = "depth >= 3"``): when its condition is false it is inactive, and
its value does not count when genomes are compared (the canonical key stores ``None`` for it).
Constraints are boolean expressions over gene values (``"width_2 >= width_1"``, see
:mod:`onnxopt.nas.expr`) or, from Python, any predicate ``genome -> bool``; genomes that
violate them are repaired by resampling the offending draw, and rejected when repair fails.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onnxopt.core.errors import InvalidInputError
from onnxopt.core.toml import parse_toml, read_toml_text
from onnxopt.nas.expr import Expression
from onnxopt.nas.genes import (
    ChoiceGene,
    FloatGene,
    Gene,
    GeneValue,
    IntGene,
    gene_from_dict,
    gene_to_dict,
)

# The genes are re-exported: `from onnxopt.nas.space import IntGene, SearchSpace` is the
# documented import (README, onnxopt.__init__).
__all__ = [
    "ChoiceGene", "FloatGene", "Gene", "GeneValue", "Genome", "IntGene", "SearchSpace",
    "describe_genome", "gene_from_dict", "load_space", "space_from_dict",
]

Genome = dict[str, Any]

# How many random draws are tried before a space is declared contradictory.
_FEASIBILITY_PROBES = 4000
_REPAIR_TRIES = 200


def _plain(value: Any) -> Any:
    """Convert numpy scalars to Python scalars (genomes must be JSON-serializable)."""
    return value.item() if isinstance(value, np.generic) else value



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
            {"genes": [gene_to_dict(g) for g in self.genes], "constraints": list(self.constraints)},
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
    data = parse_toml(read_toml_text(p, "search space"), str(p))
    space = space_from_dict(data, str(p))
    try:
        space.check_feasible()
    except InvalidInputError as e:
        raise InvalidInputError(f"{p}: {e}") from e
    return space


def describe_genome(genome: Mapping[str, Any], names: Sequence[str] | None = None) -> str:
    """A compact one-line rendering: 'depth=2 width_1=16 act=relu'."""
    keys = names if names is not None else list(genome)
    return " ".join(f"{k}={genome[k]}" for k in keys if genome.get(k) is not None)
