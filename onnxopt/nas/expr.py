"""A small, safe expression language for conditional genes (``when``) and constraints.

Expressions are Python syntax restricted to literals, gene names, arithmetic, comparisons,
``and``/``or``/``not``, ``x if c else y``, tuples/lists (for ``in``) and calls of ``min``,
``max`` and ``abs``: no attribute access, no other calls, so a search space file cannot run
code. An inactive gene's value is None and an ordering comparison with None is false, so a
constraint on a conditional gene names its condition: ``"depth < 3 or width_3 >= width_2"``.
"""

from __future__ import annotations

import ast
import functools
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from onnxopt.core.errors import InvalidInputError

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
