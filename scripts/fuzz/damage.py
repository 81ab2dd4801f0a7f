"""Damage applied to a valid draft invocation; each returns (kind, expectation).

The expectation is what the command must do: REJECT (any non-zero exit), USAGE (exit 2) or
None when a correct command may accept the input (a flipped weight byte still makes a model).
"""

from __future__ import annotations

from scripts.fuzz import data, options
from scripts.fuzz.cases import (
    CALIB,
    DATA,
    LABEL_USERS,
    MODEL,
    MODEL2,
    REF,
    REJECT,
    USAGE,
    Draft,
    FileSpec,
)
from scripts.fuzz.chooser import Chooser
from scripts.fuzz.mutate import mutate_model

# Byte damage that leaves nothing a loader may accept (when the checker runs).
UNLOADABLE = frozenset({"bytes:empty", "bytes:garbage", "bytes:text", "bytes:zip"})


def model(ch: Chooser, d: Draft) -> tuple[str, str | None]:
    """Mutate one model file of the invocation, or point the model argument somewhere bad."""
    if ch.chance(0.1):
        kind = ch.pick(("missing", "directory", "npz"))
        target = {"missing": "in/missing.onnx", "directory": "in", "npz": "in/not_a_model.onnx"}[kind]
        if kind == "npz":
            d.add_file(target, data.to_npz(data.valid_arrays(d.spec, "data", ch.rng())))
        d.argv[d.argv.index(MODEL)] = target
        return f"path:{kind}", REJECT
    targets = [p for p in (MODEL, REF, MODEL2) if p in d.files]
    path = MODEL if len(targets) == 1 or ch.chance(0.6) else ch.pick(targets)
    kind, blob = mutate_model(ch, d.spec.model)
    d.add_file(path, blob)
    suffix = "" if path == MODEL else f"@{path.split('/')[-1]}"
    validated = "--no-validate" not in d.argv
    return kind + suffix, (REJECT if kind in UNLOADABLE and validated else None)


def data_file(ch: Chooser, d: Draft) -> tuple[str, str | None]:
    """Break one data file (inputs, labels or the file itself)."""
    if not d.data_roles:
        return "valid", "ok"
    path = ch.pick(sorted(d.data_roles))
    role = d.data_roles[path]
    kind, blob, reject = data.mutate_npz(ch, d.spec, data.valid_arrays(d.spec, role, ch.rng()))
    d.add_file(path, blob)
    flag = d.argv[d.argv.index(path) - 1]
    labels_used = role == "data" and d.command in LABEL_USERS
    must = reject == data.ALWAYS or (reject == data.LABELS and labels_used)
    return f"data:{kind}@{flag}", (REJECT if must else None)


def option(ch: Chooser, d: Draft) -> tuple[str, str | None]:
    """One bad option value (numeric, or free-form for commands that parse text)."""
    text = options.bad_text(ch, d.command) if ch.chance(0.2) else None
    if text is not None:
        flag, value, expect = text
    else:
        opts = options.applicable(d.command, d.modes)
        if not opts:
            return "valid", "ok"
        opt = ch.pick(opts)
        flag = opt.flag
        value, expect = options.bad_value(ch, opt)
    d.set(flag, value)
    return f"option:{flag}={value}", (USAGE if expect else None)


def files(ch: Chooser, d: Draft) -> tuple[str, str | None]:
    """Outputs that clash with inputs or each other, or cannot be files."""
    if d.command == "bench":
        d.outputs.setdefault("--plot", "out/lat.png")
    if not d.outputs:
        return "valid", "ok"
    flag = ch.pick(sorted(d.outputs))
    kind = ch.pick(("output=model", "output=data", "two_outputs", "hardlink", "symlink",
                    "directory", "parent_is_file", "missing_parent"))  # fmt: skip
    expect: str | None = REJECT
    if kind == "output=data":
        target = next((p for p in (DATA, CALIB) if p in d.files), MODEL)
    elif kind == "two_outputs":
        other = {"optimize": "--report-json", "quantize": "--report"}.get(d.command)
        if len(d.outputs) > 1:
            flag, other_flag = sorted(d.outputs)[:2]
            target = d.outputs[other_flag]
        elif other is not None:
            flag, target = other, d.outputs[flag]
        else:
            kind, target = "output=model", MODEL
    elif kind in ("hardlink", "symlink"):
        target = f"out/{kind}.onnx"
        d.files[target] = FileSpec(target, link=MODEL, symlink=kind == "symlink")
    else:
        target = {"output=model": MODEL, "directory": "out", "parent_is_file": f"{MODEL}/o.onnx",
                  "missing_parent": "out/new/o.onnx"}[kind]  # fmt: skip
        expect = None if kind == "missing_parent" else REJECT
    d.output(flag, target)
    return f"files:{kind}({flag})", expect
