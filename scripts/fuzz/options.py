"""Bad option values per command, and whether the command must refuse them as a usage error.

Each `Opt` names a numeric option, its documented valid range and the command modes it applies
to. `bad_value` draws a value (nan, inf, negative, zero, huge, not a number) and says whether
it must be refused with exit 2: non-numbers, NaN/Inf and values outside the range must; an
in-range value (e.g. a huge gate threshold) has no expectation. Huge values are never drawn for
options that scale the work done (runs, seconds, samples), since honouring them is a hang
the user asked for, not a bug.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scripts.fuzz.chooser import Chooser

INF = math.inf
USAGE = "usage"


@dataclass(frozen=True)
class Opt:
    """A numeric option: flag, int or float, valid range [low, high] (open ends optional)."""

    flag: str
    kind: str  # "int" | "float"
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    huge: bool = True  # may a huge value be drawn?
    modes: frozenset[str] = frozenset()  # empty: applies in every mode
    checked: bool = True  # False: no range is documented, only crash/traceback checks apply


def _o(flag: str, kind: str, low: float | None = None, high: float | None = None, **kw: object) -> Opt:
    return Opt(flag, kind, low, high, **kw)  # type: ignore[arg-type]


GATES_ACC = _o("--max-accuracy-drop", "float", 0, 100, modes=frozenset({"labels"}))
GATE_COS = _o("--min-cosine", "float", 0, 1, low_open=True)
GATE_SPEED = _o("--min-speedup", "float", 0, None, low_open=True, modes=frozenset({"latency"}))
THREADS = _o("--threads", "int", 0, None, huge=False)
SEED = _o("--seed", "int", checked=False)

OPTIONS: dict[str, tuple[Opt, ...]] = {
    "optimize": (
        GATES_ACC, GATE_COS, _o("--min-speedup", "float", 0, None, low_open=True),
        _o("--max-size-mb", "float", 0, None, low_open=True),
        _o("--max-latency-ms", "float", 0, None, low_open=True),
        _o("--bench-runs", "int", 2, None, huge=False),
        _o("--bench-seconds", "float", 0, None, low_open=True, huge=False),
        THREADS, SEED,
    ),
    "quantize": (
        _o("--calib-samples", "int", 1, None, modes=frozenset({"static", "auto"})),
        GATES_ACC, GATE_COS,
        _o("--runs", "int", 1, None, huge=False, modes=frozenset({"auto"})),
        _o("--threads", "int", 0, None, huge=False, modes=frozenset({"auto"})),
    ),
    "prune": (
        _o("--sparsity", "float", 0, 1, modes=frozenset({"magnitude"})),
        _o("--threshold", "float", 0, None, modes=frozenset({"magnitude"})),
        _o("--min-elements", "int", 0, None, modes=frozenset({"magnitude"})),
        _o("--ratio", "float", 0, 1, modes=frozenset({"channels"})),
        _o("--min-channels", "int", 1, None, modes=frozenset({"channels"})),
        _o("--round-to", "int", 1, None, modes=frozenset({"channels"})),
    ),
    "bench": (
        _o("--runs", "int", 1, None, huge=False),
        _o("--warmup", "int", 0, None, huge=False),
        _o("--duration", "float", 0, None, huge=False),
        _o("--batch", "int", 1, None, huge=False),
        _o("--inter-threads", "int", 0, None, huge=False),
        _o("--ratio-quantile", "float", 0, 1),
        SEED,
    ),
    "compare": (
        _o("--samples", "int", 1, None, huge=False),
        GATES_ACC, GATE_COS, GATE_SPEED,
        _o("--runs", "int", 1, None, huge=False, modes=frozenset({"latency"})),
        _o("--warmup", "int", 0, None, huge=False, modes=frozenset({"latency"})),
        _o("--batch", "int", 1, None, huge=False),
    ),
}  # fmt: skip

# Free-form options: (value, expectation). Thread lists and shapes are parsed by onnxopt itself.
TEXT_OPTIONS: dict[str, tuple[tuple[str, tuple[tuple[str, str | None], ...]], ...]] = {
    "bench": (
        ("--threads", (("1,,2", USAGE), ("0,-1", USAGE), ("a", USAGE), ("-1", USAGE), ("", USAGE))),
        ("--shape", (
            ("input=0,1,8,8", None), ("input=-1,1,8,8", USAGE), ("nope=1,2", None), ("input=a", USAGE),
            ("input=1,1,100000,100000", None), ("input", USAGE), ("=1", USAGE),
        )),
    ),
    "quantize": (
        ("--op-types", (("NotAnOp", None), ("", None), ("Conv,,Gemm", None))),
        ("--exclude-nodes", (("nope", None), ("", None), (",", None))),
    ),
    "prune": (("--skip", (("nope", None), ("", None))), ("--include", (("nope", None), ("", None)))),
    "compare": (("--labels-key", (("nope", None), ("", None), ("input", None))),),
}  # fmt: skip

FLOAT_VALUES = ("nan", "inf", "-inf", "-1", "0", "1e30", "-1e30", "abc", "", "1e400", "0x10")
INT_VALUES = ("-1", "0", str(2**31), str(2**64), "1.5", "abc", "", "-9999999999")


def _number(text: str, kind: str) -> float | None:
    """What click would parse text as, or None when click itself rejects it (exit 2)."""
    try:
        return float(int(text)) if kind == "int" else float(text)
    except ValueError:
        return None


def _outside(opt: Opt, v: float) -> bool:
    low_bad = opt.low is not None and (v <= opt.low if opt.low_open else v < opt.low)
    high_bad = opt.high is not None and (v >= opt.high if opt.high_open else v > opt.high)
    return low_bad or high_bad


def _is_huge(text: str) -> bool:
    # inf stays: it must be refused, and a command that honours it hangs (a finding).
    return text in ("1e30", str(2**31), str(2**64))


def applicable(command: str, modes: set[str]) -> list[Opt]:
    """The numeric options of command that matter in these modes."""
    return [o for o in OPTIONS.get(command, ()) if not o.modes or o.modes & modes]


def bad_value(ch: Chooser, opt: Opt) -> tuple[str, str | None]:
    """(value text, USAGE or None) for one bad value of opt."""
    values = [v for v in (INT_VALUES if opt.kind == "int" else FLOAT_VALUES) if opt.huge or not _is_huge(v)]
    text = ch.pick(values)
    v = _number(text, opt.kind)
    if v is None:
        return text, USAGE
    if not math.isfinite(v):
        return text, USAGE
    return text, (USAGE if opt.checked and _outside(opt, v) else None)


def bad_text(ch: Chooser, command: str) -> tuple[str, str, str | None] | None:
    """(flag, value, expectation) for a free-form option of command, or None if it has none."""
    table = TEXT_OPTIONS.get(command)
    if not table:
        return None
    flag, values = ch.pick(table)
    value, expect = ch.pick(values)
    return flag, value, expect
