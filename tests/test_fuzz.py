"""Fuzz the CLI: a few hundred hypothesis-generated damaged invocations in child processes.

The cases come from `scripts.fuzz` (damaged models, data files, option values and output paths
for inspect, optimize, quantize, prune, bench and compare); hypothesis draws them from a fixed
seed, so every run tries the same cases. They run in one long-lived worker process, and each
must keep every rule of `scripts.fuzz.checks` (no traceback, crash or hang; exit codes 0-3; an
error is one line; nothing left behind after a failure; inputs unchanged; bad input refused). The
long run is `make fuzz N=5000`.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from scripts.fuzz.cases import REJECT, USAGE, Case, FileSpec
from scripts.fuzz.checks import judge, traceback_signature
from scripts.fuzz.chooser import Chooser
from scripts.fuzz.generate import COMMANDS, FAMILIES, build_case, seeded_case
from scripts.fuzz.models import base_specs, spec_named
from scripts.fuzz.report import judged, signatures
from scripts.fuzz.runner import Outcome, run_cases

CASES = 300  # ~30 s on one core of a quiet machine


def draw_cases(n: int) -> list[Case]:
    """n cases: hypothesis picks command, damage family, base model and seed (derandomized)."""
    cases: list[Case] = []
    seen: set[tuple[str, str, str, int]] = set()

    @settings(max_examples=n, derandomize=True, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(
        command=st.sampled_from(COMMANDS),
        family=st.sampled_from(FAMILIES),
        base=st.sampled_from([s.name for s in base_specs()]),
        seed=st.integers(0, 2**32 - 1),
    )
    def draw(command: str, family: str, base: str, seed: int) -> None:
        if (command, family, base, seed) not in seen:
            seen.add((command, family, base, seed))
            cases.append(build_case(Chooser(seed), len(cases), command=command, family=family, base=base))

    draw()
    return cases


def _outcome(case: Case, status: str = "exit", rc: int | None = 0, stderr: str | None = None,
             new: tuple[str, ...] = (), stdout: str = "") -> Outcome:  # fmt: skip
    if stderr is None:  # an error exit says one line, as it must
        stderr = "onnxopt: error: bad input\n" if rc in (1, 2) else ""
    return Outcome(case, status, rc, stdout, stderr, 0.0, new, ())


def _case(expect: str | None = None, outputs: tuple[str, ...] = ("out/o.onnx",)) -> Case:
    return Case(0, "optimize", "option", "option:--runs=-1", "mlp", ("optimize", "in/model.onnx"), (), outputs, expect)


def test_cases_are_seeded() -> None:
    assert seeded_case(3, 7) == seeded_case(3, 7)
    assert [seeded_case(3, i).argv for i in range(5)] != [seeded_case(4, i).argv for i in range(5)]


def test_rules_catch_each_failure_kind() -> None:
    tb = (
        "Traceback (most recent call last):\n"
        '  File "/x/onnxopt/measure/fidelity.py", line 68, in run_batched\n    sess.run()\n'
        '  File "/v/onnxruntime/capi/session.py", line 220, in run\n    raise\n'
        "onnxruntime.capi.onnxruntime_pybind11_state.InvalidArgument: [ONNXRuntimeError] bad\n"
    )
    assert traceback_signature(tb) == (
        "InvalidArgument at onnxopt/measure/fidelity.py:68 run_batched raised in capi/session.py run"
    )
    cats = {f.category for f in judge(_outcome(_case(), status="exception", rc=None, stderr=tb))}
    assert cats == {"traceback"}
    assert {f.category for f in judge(_outcome(_case(), status="crash", rc=-11))} == {"crash"}
    assert {f.category for f in judge(_outcome(_case(), status="hang", rc=None))} == {"hang"}
    assert {f.category for f in judge(_outcome(_case(), rc=7))} == {"exit-code"}
    assert {f.category for f in judge(_outcome(_case(USAGE), rc=0))} == {"accepted"}
    assert {f.category for f in judge(_outcome(_case(USAGE), rc=1))} == {"wrong-exit"}
    assert {f.category for f in judge(_outcome(_case(REJECT), rc=1))} == set()
    # A declared output may exist after exit 0 or 3 (a failed gate), never after exit 1 or 2.
    assert judge(_outcome(_case(), rc=3, new=("out/o.onnx",))) == []
    assert {f.category for f in judge(_outcome(_case(), rc=1, new=("out/o.onnx",)))} == {"leftover"}
    assert {f.category for f in judge(_outcome(_case(), rc=0, new=("sym_shape_infer_temp.onnx",)))} == {"leftover"}
    # An error is one line on stderr (progress lines aside) and nothing on stdout; onnxruntime never logs.
    assert judge(_outcome(_case(), rc=1, stderr="... loading\nonnxopt: error: bad input\n")) == []
    assert {f.category for f in judge(_outcome(_case(), rc=1, stderr="warning: x\nonnxopt: error: y\n"))} == {"noise"}
    ok = "WARNING onnxopt.measure: dropping 3 samples\nonnxopt: error: input 'x' bad\nonnxopt: error: input 'y' bad\n"
    assert judge(_outcome(_case(), rc=1, stderr=ok)) == []  # one line per problem, and onnxopt's own log
    assert {f.category for f in judge(_outcome(_case(), rc=1, stderr="\n"))} == {"noise"}
    assert {f.category for f in judge(_outcome(_case(), rc=2, stdout="EP Error\n"))} == {"noise"}
    assert {f.category for f in judge(_outcome(_case(), rc=0, stderr="[W:onnxruntime:, graph.cc:1] x\n"))} == {"noise"}


def test_worker_runs_cases_and_sees_changes() -> None:
    """The real worker: a valid case passes, a usage error exits 2, a clobbered input is seen."""
    model = FileSpec("in/model.onnx", spec_named("mlp").model)
    ok = Case(1, "inspect", "valid", "valid", "mlp", ("inspect", "in/model.onnx"), (model,), (), "ok")
    usage = Case(2, "bench", "option", "option:--runs=abc", "mlp",
                 ("bench", "in/model.onnx", "--runs", "abc"), (model,), (), USAGE)  # fmt: skip
    clobber = Case(3, "prune", "files", "files:output=model(-o)", "mlp",
                   ("prune", "in/model.onnx", "-o", "in/model.onnx", "--min-elements", "0"), (model,),
                   ("in/model.onnx",), REJECT)  # fmt: skip
    slow = Case(4, "bench", "option", "option:--duration=60", "mlp",
                ("bench", "in/model.onnx", "--runs", "2", "--warmup", "0", "--duration", "60"), (model,), (), None)  # fmt: skip
    again = replace(ok, index=5)
    outcomes = run_cases([ok, usage, clobber, slow, again], timeout=4)
    assert [(o.status, o.rc) for o in outcomes[:2]] == [("exit", 0), ("exit", 2)]
    assert judge(outcomes[0]) == [] and judge(outcomes[1]) == []
    assert "Gemm" in outcomes[0].stdout
    # Whatever prune does with -o == its input, the rules see it: refused, or flagged.
    clobbered = outcomes[2]
    assert clobbered.rc != 0 or {f.category for f in judge(clobbered)} >= {"accepted", "input-modified"}
    # A case over the timeout is a hang; the worker is replaced and the next case runs.
    assert [f.category for f in judge(outcomes[3])] == ["hang"]
    assert (outcomes[4].status, outcomes[4].rc) == ("exit", 0)


@pytest.mark.slow
def test_fuzz_cases_keep_every_rule() -> None:
    results = judged(run_cases(draw_cases(CASES), timeout=20))
    sigs = signatures(results)
    listing = "\n".join(
        f"{s.cases:4d} {s.category}: {s.signature}\n     e.g. {s.example.case.command_line()}" for s in sigs
    )
    failing = sum(1 for _, f in results if f)
    assert not sigs, f"{failing} of {len(results)} fuzz cases failed; signatures:\n{listing}"
