"""Fuzz cases: one CLI invocation, the files it needs, and what it must do.

`base_draft` builds the cheap, valid invocation of a command; `generate.build_case` then
applies one family of damage (`damage`):
  valid   the base invocation, unchanged (must exit 0: a check that the harness itself is sane)
  model   a mutated model (`mutate.mutate_model`) or a bad model path
  data    a broken .npz in one data role (`data.mutate_npz`)
  option  a bad numeric or free-form option value (`options`)
  files   outputs clashing with inputs or each other, an output that is a directory, ...
Paths are relative to the case's own directory (`in/` inputs, `out/` outputs), so a failing
case's command line can be re-run as printed from a directory holding those files.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

from scripts.fuzz import data
from scripts.fuzz.chooser import Chooser
from scripts.fuzz.models import Spec

MODEL, REF, MODEL2 = "in/model.onnx", "in/ref.onnx", "in/model2.onnx"
DATA, CALIB = "in/data.npz", "in/calib.npz"
LABEL_USERS = frozenset({"optimize", "quantize", "prune", "compare"})
# Must-do expectations: "ok" exit 0, "reject" any non-zero exit, "usage" exit 2.
OK, REJECT, USAGE = "ok", "reject", "usage"


@dataclass(frozen=True)
class FileSpec:
    """An input set up before the run: a file with data, or a hard/symbolic link to another path."""

    path: str
    data: bytes | None = None
    link: str | None = None
    symlink: bool = False


@dataclass(frozen=True)
class Case:
    """One invocation: argv (without the program name), files, declared outputs, expectation."""

    index: int
    command: str
    family: str
    kind: str
    base: str
    argv: tuple[str, ...]
    files: tuple[FileSpec, ...]
    outputs: tuple[str, ...] = ()
    expect: str | None = None

    def command_line(self) -> str:
        """The case as a shell command (run it from the case's directory)."""
        return "onnxopt " + " ".join(shlex.quote(a) for a in self.argv)


@dataclass
class Draft:
    """A case being built: mutable argv and files, plus what the base invocation uses."""

    command: str
    spec: Spec
    argv: list[str]
    files: dict[str, FileSpec] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)  # flag -> path
    modes: set[str] = field(default_factory=set)
    data_roles: dict[str, str] = field(default_factory=dict)  # path -> "data" | "calib"

    def set(self, flag: str, value: str | None = None) -> None:
        """Add flag (with value), replacing an earlier value of the same flag."""
        if flag in self.argv:
            i = self.argv.index(flag)
            if value is not None:
                self.argv[i + 1] = value
            return
        self.argv.extend([flag] if value is None else [flag, value])

    def add_file(self, path: str, blob: bytes) -> None:
        self.files[path] = FileSpec(path, blob)

    def add_data(self, ch: Chooser, role: str) -> str:
        """Write a valid data file for role ("data" or "calib") and return its path."""
        path = DATA if role == "data" else CALIB
        self.add_file(path, data.to_npz(data.valid_arrays(self.spec, role, ch.rng())))
        self.data_roles[path] = role
        if role == "data":
            self.modes.add("labels")
        return path

    def output(self, flag: str, path: str) -> None:
        self.set(flag, path)
        self.outputs[flag] = path


def _inspect(ch: Chooser, d: Draft, want_data: bool) -> None:
    for flag in ("--json", "--no-validate"):
        if ch.chance(0.3):
            d.set(flag)


def _optimize(ch: Chooser, d: Draft, want_data: bool) -> None:
    d.output("-o", "out/o.onnx")
    d.argv += ["--bench-runs", "2", "--bench-seconds", "0.01"]
    d.modes.add("latency")
    if want_data or ch.chance(0.5):
        d.set("--data", d.add_data(ch, "data"))
    if want_data or ch.chance(0.4):
        d.set("--calib-data", d.add_data(ch, "calib"))
    for flag, value, p in (("--objective", "size", 0.2), ("--threads", "1", 0.5)):
        if ch.chance(p):
            d.set(flag, value)
    for flag, path in (("--report-json", "out/r.json"), ("--report-md", "out/r.md")):
        if ch.chance(0.2):
            d.output(flag, path)
    for flag in ("--json", "--no-output-on-fail"):
        if ch.chance(0.2):
            d.set(flag)
    if ch.chance(0.3):
        d.set("--min-cosine", "0.5")  # lenient gates: a valid case passes them
    if "labels" in d.modes and ch.chance(0.3):
        d.set("--max-accuracy-drop", "100")


def _quantize(ch: Chooser, d: Draft, want_data: bool) -> None:
    mode = ch.pick(("dynamic", "dynamic", "static", "static", "auto"))
    d.modes.add(mode)
    d.output("-o", "out/q.onnx")
    d.argv += ["--mode", mode]
    if mode != "dynamic":  # dynamic quantization reads no calibration data
        d.set("--calib-data", d.add_data(ch, "calib"))
        d.set("--calib-samples", "8")
    if mode == "auto":
        d.argv += ["--runs", "2", "--threads", "1"]
    elif ch.chance(0.8):
        d.set("--no-bench")
    if want_data or ch.chance(0.3):
        d.set("--data", d.add_data(ch, "data"))
        d.set("--min-cosine", "0.5")
        if "labels" in d.modes and ch.chance(0.5):
            d.set("--max-accuracy-drop", "100")
    if ch.chance(0.2):
        d.set("--per-channel")
    if mode == "static" and ch.chance(0.2):
        d.set("--format", "qoperator")
    if ch.chance(0.2):
        d.output("--report", "out/r.json")
    if ch.chance(0.2):
        d.set("--json")


def _prune(ch: Chooser, d: Draft, want_data: bool) -> None:
    method = ch.pick(("magnitude", "channels"))
    d.modes.add(method)
    d.output("-o", "out/p.onnx")
    d.argv += ["--method", method]
    if method == "magnitude":
        d.set("--min-elements", "0")  # the tiny models' tensors are below the default 256
        for flag in ("--sparse-storage", "--global"):
            if ch.chance(0.25):
                d.set(flag)
    elif ch.chance(0.2):
        d.set("--round-to", "2")
    if want_data or ch.chance(0.3):
        d.set("--data", d.add_data(ch, "data"))
    if ch.chance(0.2):
        d.set("--json")


def _bench(ch: Chooser, d: Draft, want_data: bool) -> None:
    d.argv += ["--runs", "2", "--warmup", "0"]
    if ch.chance(0.5):
        d.set("--threads", "1")
    if want_data or ch.chance(0.3):
        d.set("--data", d.add_data(ch, "calib"))  # inputs only: bench has no use for labels
    if ch.chance(0.2):
        d.add_file(MODEL2, d.spec.model)
        d.argv.insert(2, MODEL2)
        d.set("--compare")
    if ch.chance(0.3):
        d.set("--json")
    if d.spec.dynamic_batch and ch.chance(0.2):
        d.set("--batch", "2")
    if ch.chance(0.05):
        d.output("--plot", "out/lat.png")


def _compare(ch: Chooser, d: Draft, want_data: bool) -> None:
    d.add_file(REF, d.spec.model)
    d.argv[1:1] = [REF]  # compare REFERENCE CANDIDATE: the candidate is the (mutated) model
    d.argv += ["--samples", "4"]
    if ch.chance(0.7):
        d.set("--no-latency")
    else:
        d.argv += ["--runs", "2", "--warmup", "0"]
        d.modes.add("latency")
    if want_data or ch.chance(0.4):
        d.set("--data", d.add_data(ch, "data"))
        if "labels" in d.modes and ch.chance(0.3):
            d.set("--max-accuracy-drop", "100")
    if ch.chance(0.3):
        d.set("--min-cosine", "0.5")
    if ch.chance(0.3):
        d.set("--json")


BUILDERS = {
    "inspect": _inspect,
    "optimize": _optimize,
    "quantize": _quantize,
    "prune": _prune,
    "bench": _bench,
    "compare": _compare,
}


def base_draft(ch: Chooser, command: str, spec: Spec, want_data: bool) -> Draft:
    """The cheap, valid invocation of command on spec's model."""
    d = Draft(command, spec, [command, MODEL])
    d.add_file(MODEL, spec.model)
    BUILDERS[command](ch, d, want_data)
    return d

