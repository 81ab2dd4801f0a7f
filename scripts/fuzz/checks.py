"""Judge an outcome: which rules it broke, each with a signature for de-duplication.

Rules (a case fails on any): a Python traceback in its output; the worker crashed; it hung;
an exit code outside 0-3; "noise": an error (exit 1 or 2) whose stderr holds anything but its
"onnxopt: error:" lines (one per problem), onnxopt's own log records and progress lines "... ",
or that prints to stdout; and onnxruntime's own log lines on stderr after any exit; a file or folder left behind (anything new after an exit other than
0/3, and anything but the declared outputs after 0/3: exit 3 is a failed gate, after which
quantize/optimize still write the model by design); an input file changed; and, where the
case knows it, an exit 0 on input that must be refused ("accepted"), an exit other than 2 for a
bad option value ("wrong-exit"), or a non-zero exit for the unchanged base invocation
("valid-failed", which means the harness or the command is broken).

A signature groups failures with one cause: for tracebacks the exception type and the deepest
onnxopt frame (plus the frame that raised, when outside onnxopt).
"""

from __future__ import annotations

import re
import signal
from dataclasses import dataclass

from scripts.fuzz.cases import OK, REJECT, USAGE
from scripts.fuzz.runner import Outcome

CATEGORIES = ("traceback", "crash", "hang", "exit-code", "noise", "leftover", "input-modified", "accepted",
              "wrong-exit", "valid-failed")  # fmt: skip
_ORT_LOG = re.compile(r"\[[VIWEF]:onnxruntime")
_OWN_LOG = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL) onnxopt[.:]")  # onnxopt's logging format
_FRAME = re.compile(r'^\s*File "(?P<file>[^"]+)", line (?P<line>\d+),? in (?P<func>\S+)', re.M)
_EXC = re.compile(r"^(?P<type>[A-Za-z_][\w.]*)(?::|$)")
# onnxruntime's C++ core writes a session-id file into $TMPDIR once per process: not ours.
IGNORED = frozenset({"tmp/.ses"})
_VOLATILE = re.compile(r"[0-9a-f]{8}-[0-9a-f-]{27}|[0-9a-f]{8,}|\d+")


@dataclass(frozen=True)
class Failure:
    """One broken rule of one case."""

    category: str
    signature: str


def _short(path: str) -> str:
    """onnxopt/... for project files, else the last two path parts (e.g. quantization/xyz.py)."""
    i = path.rfind("/onnxopt/")
    if i >= 0:
        return path[i + 1 :]
    return "/".join(path.split("/")[-2:])


def _location(frames: list[re.Match[str]]) -> str:
    """The deepest onnxopt frame, and the raising frame when it lies outside onnxopt."""
    ours = [f for f in frames if "/onnxopt/" in f["file"] and "/scripts/fuzz/" not in f["file"]]
    parts = []
    if ours:
        f = ours[-1]
        parts.append(f"{_short(f['file'])}:{f['line']} {f['func']}")
    if frames and (not ours or frames[-1] is not ours[-1]):
        f = frames[-1]
        parts.append(f"raised in {_short(f['file'])} {f['func']}")
    return " ".join(parts) or "unknown location"


def traceback_signature(text: str) -> str:
    """'<ExceptionType> at <location>' for the last traceback in text."""
    block = text[text.rfind("Traceback (most recent call last)") :]
    frames = list(_FRAME.finditer(block))
    exc = "?"
    tail = block[frames[-1].end() :] if frames else block
    for line in tail.splitlines():
        if line and not line.startswith(" ") and (m := _EXC.match(line)):
            exc = m["type"].rsplit(".", 1)[-1]
            break
    return f"{exc} at {_location(frames)}"


def kind_class(kind: str) -> str:
    """The kind without its drawn value: option:--runs=-1 -> option:--runs."""
    return kind.split("=", 1)[0] if kind.startswith("option:") else kind


def first_error(o: Outcome) -> str:
    """The first line that looks like the command's error message (for the report)."""
    for line in (o.stderr + o.stdout).splitlines():
        if "error" in line.lower() or line.startswith("Error"):
            return line.strip()[:160]
    lines = [ln for ln in o.stderr.splitlines() if ln.strip()]
    return lines[-1].strip()[:160] if lines else ""


def _noise(o: Outcome) -> str | None:
    """What breaks the one-line rule, or None."""
    if _ORT_LOG.search(o.stderr):
        return "onnxruntime log lines on stderr"
    if o.status != "exit" or o.rc not in (1, 2) or "Traceback (most recent call last)" in o.stderr:
        return None
    if o.stdout.strip():
        return f"output on stdout with exit {o.rc}: {_VOLATILE.sub('*', o.stdout.strip().splitlines()[0])[:60]}"
    lines = [ln for ln in o.stderr.splitlines() if ln.strip() and not ln.startswith("... ")]
    errors = [ln for ln in lines if ln.startswith("onnxopt: error: ")]
    other = [ln for ln in lines if not ln.startswith("onnxopt: error: ") and not _OWN_LOG.match(ln)]
    if not errors:
        return f"no error line with exit {o.rc}"
    if other:
        return f"other lines on stderr with exit {o.rc}: {_VOLATILE.sub('*', other[0].strip())[:60]}"
    return None


def _leftovers(o: Outcome) -> list[str]:
    allowed: set[str] = set()
    if o.status == "exit" and o.rc in (0, 3):
        for out in o.case.outputs:
            allowed.add(out)
            parts = out.split("/")
            allowed.update("/".join(parts[:i]) + "/" for i in range(1, len(parts)))
    return [p for p in o.new_paths if p not in allowed and p not in IGNORED]


def judge(o: Outcome) -> list[Failure]:
    """Every rule the outcome breaks (empty: the case passed)."""
    c = o.case
    what = f"{c.command} {kind_class(c.kind)}"
    out: list[Failure] = []
    text = o.stderr + "\n" + o.stdout
    if "Traceback (most recent call last)" in text:
        out.append(Failure("traceback", traceback_signature(text)))
    if o.status == "crash":
        sig = -(o.rc or 0)
        name = signal.Signals(sig).name if sig in signal.valid_signals() else f"exit {o.rc}"
        # faulthandler lists the most recent call first: reverse to traceback order.
        frames = list(_FRAME.finditer(o.stderr))[::-1]
        out.append(Failure("crash", f"{name} at {_location(frames)} ({c.command})"))
    elif o.status == "hang":
        out.append(Failure("hang", f"hang: {what}"))
    elif o.status == "exit" and o.rc not in (0, 1, 2, 3):
        out.append(Failure("exit-code", f"exit {o.rc}: {c.command}"))
    noise = _noise(o)
    if noise is not None:
        out.append(Failure("noise", f"{noise} ({c.command})"))
    left = _leftovers(o)
    if left:
        names = sorted({_VOLATILE.sub("*", p) for p in left})
        out.append(Failure("leftover", f"left {', '.join(names[:3])} after exit {o.rc}: {c.command}"))
    if o.changed_inputs:
        out.append(Failure("input-modified", f"{', '.join(o.changed_inputs)} changed: {what}"))
    if o.status == "exit":
        if c.expect in (REJECT, USAGE) and o.rc == 0:
            out.append(Failure("accepted", f"exit 0: {what}"))
        elif c.expect == USAGE and o.rc != 2:
            out.append(Failure("wrong-exit", f"exit {o.rc} (not 2): {what}"))
        elif c.expect == OK and o.rc not in (0, 3):  # 3: a gate (e.g. prune's fidelity floor) said no
            out.append(Failure("valid-failed", f"exit {o.rc}: {c.command} on {c.base}: {first_error(o)[:80]}"))
    return out
