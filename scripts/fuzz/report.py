"""The summary printed after a fuzz run: cases per command and damage, failures, signatures."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from scripts.fuzz.checks import CATEGORIES, Failure, first_error, judge, kind_class
from scripts.fuzz.runner import Outcome

FAMILY_ORDER = ("valid", "model", "data", "option", "files")


@dataclass(frozen=True)
class Signature:
    """Failures sharing one cause, with the first case that showed it."""

    category: str
    signature: str
    cases: int
    example: Outcome


def judged(outcomes: Sequence[Outcome]) -> list[tuple[Outcome, list[Failure]]]:
    return [(o, judge(o)) for o in outcomes]


def signatures(results: Sequence[tuple[Outcome, list[Failure]]]) -> list[Signature]:
    """Distinct failure signatures, most frequent first (ties: category order)."""
    count: Counter[tuple[str, str]] = Counter()
    first: dict[tuple[str, str], Outcome] = {}
    for o, failures in results:
        for f in failures:
            key = (f.category, f.signature)
            count[key] += 1
            # The example: the least damaged case (a valid one shows the damage is not the cause).
            if key not in first or _rank(o) < _rank(first[key]):
                first[key] = o
    keys = sorted(count, key=lambda k: (-count[k], CATEGORIES.index(k[0]), k[1]))
    return [Signature(k[0], k[1], count[k], first[k]) for k in keys]


def _rank(o: Outcome) -> int:
    return FAMILY_ORDER.index(o.case.family)


def _kind_group(kind: str) -> str:
    """Coarse mutation kind for the table: proto:dims, bytes:flip, data:nan, option:--runs, ..."""
    k = kind_class(kind)
    k = k.split("@", 1)[0]
    return k.split("(", 1)[0]


def _table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    cells = [list(map(str, header)), *[list(map(str, r)) for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return [title, fmt.format(*cells[0]), *(fmt.format(*r) for r in cells[1:]), ""]


def summary(results: Sequence[tuple[Outcome, list[Failure]]], *, seed: int | str, top: int = 40) -> str:
    """The whole report as text."""
    lines = [f"onnxopt fuzz: {len(results)} cases (seed {seed}), "
             f"{sum(1 for _, f in results if f)} failing, "
             f"{sum(o.secs for o, _ in results):.0f} s in cases", ""]  # fmt: skip
    by_cmd: dict[str, Counter[str]] = defaultdict(Counter)
    for o, f in results:
        row = by_cmd[o.case.command]
        row[o.case.family] += 1
        row["total"] += 1
        row["failing"] += bool(f)
        row["secs"] += round(o.secs * 1000)
    header = ["command", *FAMILY_ORDER, "total", "failing", "mean s"]
    rows = [[cmd, *(c[f] for f in FAMILY_ORDER), c["total"], c["failing"], f"{c['secs'] / 1000 / c['total']:.2f}"]
            for cmd, c in sorted(by_cmd.items())]  # fmt: skip
    lines += _table("Cases per command and damage family", header, rows)
    by_kind: dict[str, Counter[str]] = defaultdict(Counter)
    for o, f in results:
        k = by_kind[f"{o.case.family:<7}{_kind_group(o.case.kind)}"]
        k["cases"] += 1
        k["failing"] += bool(f)
    rows = [[k, c["cases"], c["failing"]] for k, c in sorted(by_kind.items())]
    lines += _table("Cases per mutation kind", ["family kind", "cases", "failing"], rows)
    sigs = signatures(results)
    cat_cases = Counter(f.category for _, fs in results for f in {x.category: x for x in fs}.values())
    cat_sigs = Counter(s.category for s in sigs)
    rows = [[c, cat_cases[c], cat_sigs[c]] for c in CATEGORIES]
    lines += _table("Failures by category", ["category", "cases", "signatures"], rows)
    if sigs:
        lines.append(f"Failure signatures ({len(sigs)}; top {min(top, len(sigs))}; example = first case, run from its folder)")
        for s in sigs[:top]:
            ex = s.example
            lines.append(f"{s.cases:5d}  {s.category:<14} {s.signature}")
            lines.append(f"       case {ex.case.index} [{ex.case.base}, {ex.case.kind}]: {ex.case.command_line()}")
            msg = first_error(ex)
            if msg and s.category != "traceback":
                lines.append(f"       says: {msg}")
    return "\n".join(lines)
