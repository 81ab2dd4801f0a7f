"""Case generation: command, base model and one family of damage for a seeded chooser.

The families are described in `cases`. The default mix is weighted towards the commands that
do the most with a model and towards model damage; `inspect` mostly gets damaged models. The
test suite passes command, family and base explicitly (drawn by hypothesis).
"""

from __future__ import annotations

from scripts.fuzz import damage
from scripts.fuzz.cases import OK, Case, base_draft
from scripts.fuzz.chooser import Chooser
from scripts.fuzz.models import base_specs, spec_named

COMMANDS = ("inspect", "optimize", "optimize", "quantize", "quantize", "prune", "prune", "bench", "bench", "compare")
FAMILIES = ("valid", "model", "model", "model", "model", "data", "data", "data", "option", "option", "option", "files")
DAMAGE = {"model": damage.model, "data": damage.data_file, "option": damage.option, "files": damage.files}


def build_case(
    ch: Chooser, index: int, *, command: str | None = None, family: str | None = None, base: str | None = None
) -> Case:
    """One case, fully determined by the chooser (and the choices passed in)."""
    command = command or ch.pick(COMMANDS)
    specs = base_specs()
    spec = spec_named(base) if base else ch.pick((specs[0], *specs))  # digits twice as often
    if family is None:
        family = "model" if command == "inspect" and ch.chance(0.9) else ch.pick(FAMILIES)
    # Other families may run such a model on synthesized inputs: a clean error is what they check.
    want_data = family == "data" or (family == "valid" and spec.needs_data)
    draft = base_draft(ch, command, spec, want_data=want_data)
    kind, expect = ("valid", OK) if family == "valid" else DAMAGE[family](ch, draft)
    if kind == "valid":  # nothing to damage here (e.g. no output to clash with)
        family = "valid"
        if spec.needs_data and not want_data:  # synthesized inputs need not fit (e.g. token ids): no must-do
            expect = None
    return Case(
        index=index,
        command=command,
        family=family,
        kind=kind,
        base=spec.name,
        argv=tuple(draft.argv),
        files=tuple(draft.files.values()),
        outputs=tuple(draft.outputs.values()),
        expect=expect,
    )


def seeded_case(seed: int, index: int) -> Case:
    """Case `index` of run `seed`: the same case in every process and on every machine."""
    return build_case(Chooser(seed, index), index)
