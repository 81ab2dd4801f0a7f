"""Issue 15, "nothing lost, nothing clobbered": every case the issue lists, through the real CLI.

Each case must end with one line on stderr (no traceback, no onnxruntime log lines), the
documented exit code (1 error, 2 usage error), no file left behind, and its inputs unchanged.
Cases run in-process through `onnxopt.cli.main` (fd-level capture sees onnxruntime's C++
logging too), inside a scratch folder that is compared before and after.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt.cli import main
from onnxopt.core.errors import OnnxoptError

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
STUDENT = str(ROOT / "examples" / "distill_models.py") + ":torch_student"
FAST = ("--bench-runs", "2", "--bench-seconds", "0.01")


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str


def onnxopt(capfd: pytest.CaptureFixture[str], *args: str | Path) -> Run:
    """onnxopt ARGS in this process: exit code, stdout and stderr (fd level)."""
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    out, err = capfd.readouterr()
    return Run(int(e.value.code or 0), out, err)


def snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every file under folder (and '/' for every folder), by relative path."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        out[rel] = "/" if p.is_dir() and not p.is_symlink() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def assert_refused(r: Run, code: int, needle: str, before: dict[str, str], folder: Path) -> None:
    """One error line naming the problem (besides progress lines "... "), the exit code, nothing new
    and nothing changed."""
    lines = [ln for ln in r.err.splitlines() if ln.strip() and not ln.startswith("... ")]
    assert r.code == code, r.err
    assert len(lines) == 1 and lines[0].startswith("onnxopt: error: "), r.err
    assert needle in lines[0], lines[0]
    assert snapshot(folder) == before


def _model(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto],
           inits: list[TensorProto], name: str) -> onnx.ModelProto:  # fmt: skip
    m = helper.make_model(helper.make_graph(nodes, name, inputs, outputs, inits),
                          opset_imports=[helper.make_opsetid("", 17)])  # fmt: skip
    m.ir_version = 8
    return m


def runfail_model(sample_shape: tuple[int, ...] = (4,)) -> onnx.ModelProto:
    """Loads fine, fails at run time: a Reshape of every batch to [7, 7]."""
    shape = numpy_helper.from_array(np.array([7, 7], np.int64), "shape")
    return _model(
        [helper.make_node("Reshape", ["input", "shape"], ["logits"], name="bad_reshape")],
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", *sample_shape])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["a", "b"])], [shape], "runfail",
    )


def wrong_output_shape_model() -> onnx.ModelProto:
    """Declares logits [batch, 5] but computes [batch, 3]: onnxruntime warns on every run."""
    w = numpy_helper.from_array(np.ones((4, 3), np.float32), "w")
    return _model(
        [helper.make_node("MatMul", ["input", "w"], ["logits"], name="fc")],
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 5])], [w], "wrong_shape",
    )


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A scratch folder (also the working directory) holding a copy of the digits model and data."""
    for name in ("digits_cnn.onnx", "digits_val.npz", "digits_calib.npz", "digits_train.npz"):
        shutil.copyfile(MODELS / name, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


# ---------------------------------------------------------------- data loss: refused, exit 2


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["optimize", "digits_cnn.onnx", "-o", "o.onnx", "--report-md", "digits_cnn.onnx"], "is the input model"),
        (["optimize", "digits_cnn.onnx", "-o", "o.onnx", "--report-json", "digits_cnn.onnx"], "is the input model"),
        (["optimize", "digits_cnn.onnx", "-o", "x.onnx", "--report-md", "x.onnx"], "name the same file"),
        (["optimize", "digits_cnn.onnx", "-o", "digits_cnn.onnx"], "is the input model"),
        (["quantize", "digits_cnn.onnx", "-o", "q.onnx", "--report", "digits_cnn.onnx"], "is the input model"),
        (["quantize", "digits_cnn.onnx", "-o", "x.json", "--report", "x.json"], "name the same file"),
        (["quantize", "digits_cnn.onnx", "-o", "digits_calib.npz", "--calib-data", "digits_calib.npz"],
         "is the --calib-data"),
        (["prune", "digits_cnn.onnx", "-o", "digits_cnn.onnx"], "is the input model"),
        (["bench", "digits_cnn.onnx", "--plot", "digits_cnn.onnx"], "is the MODEL"),
        (["search", "--space", str(ROOT / "examples" / "search_space.toml"), "--data", "digits_train.npz",
          "--val", "digits_val.npz", "-o", "best.onnx", "--baseline", "digits_cnn.onnx", "--log", "digits_cnn.onnx"],
         "is the --baseline"),
        (["distill", "--teacher", "digits_cnn.onnx", "--student", STUDENT, "--data", "digits_train.npz",
          "--val", "digits_val.npz", "-o", "s.onnx", "--baseline-output", "s.onnx"], "name the same file"),
        (["distill", "--teacher", "digits_cnn.onnx", "--student", STUDENT, "--data", "digits_train.npz",
          "--val", "digits_val.npz", "-o", "digits_cnn.onnx"], "is the --teacher"),
    ],
)  # fmt: skip
def test_outputs_never_clobber_inputs(work: Path, capfd: pytest.CaptureFixture[str], args: list[str],
                                      needle: str) -> None:  # fmt: skip
    before = snapshot(work)
    assert_refused(onnxopt(capfd, *args), 2, needle, before, work)


def test_convert_refuses_to_overwrite_its_weights(work: Path, capfd: pytest.CaptureFixture[str]) -> None:
    shutil.copyfile(MODELS / "digits_cnn.pt", work / "w.pt")
    before = snapshot(work)
    r = onnxopt(capfd, "convert", f"{MODELS / 'digits_cnn.py'}:build", "--weights", "w.pt", "-o", "w.pt")
    assert_refused(r, 2, "is the --weights", before, work)


@pytest.mark.parametrize("link", ["symlink", "hardlink"])
def test_a_report_through_a_link_onto_the_input_is_refused(work: Path, capfd: pytest.CaptureFixture[str],
                                                           link: str) -> None:  # fmt: skip
    alias = work / "alias.json"
    if link == "symlink":
        alias.symlink_to("digits_cnn.onnx")
    else:
        os.link(work / "digits_cnn.onnx", alias)
    before = snapshot(work)
    r = onnxopt(capfd, "quantize", "digits_cnn.onnx", "-o", "q.onnx", "--mode", "dynamic", "--no-bench",
                "--report", alias)  # fmt: skip
    assert_refused(r, 2, "is the input model", before, work)


# ---------------------------------------------------------------- failures leave nothing behind


def test_output_inside_a_file_is_refused_before_any_work(work: Path, capfd: pytest.CaptureFixture[str]) -> None:
    before = snapshot(work)
    r = onnxopt(capfd, "optimize", "digits_cnn.onnx", "-o", "digits_cnn.onnx/o.onnx", *FAST)
    assert_refused(r, 1, "cannot write into", before, work)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write into read-only folders")
def test_read_only_output_folder_is_refused(work: Path, capfd: pytest.CaptureFixture[str]) -> None:
    ro = work / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        before = snapshot(work)
        r = onnxopt(capfd, "prune", "digits_cnn.onnx", "-o", ro / "p.onnx")
        assert_refused(r, 1, "cannot write into", before, work)
    finally:
        ro.chmod(0o755)


def test_a_failing_report_leaves_neither_model_nor_report(
    work: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from onnxopt.optimization import report

    def broken(*_args: object, **_kw: object) -> str:
        raise OnnxoptError("the Markdown report failed")

    monkeypatch.setattr(report, "to_markdown", broken)
    before = snapshot(work)
    r = onnxopt(capfd, "optimize", "digits_cnn.onnx", "-o", "new/o.onnx", "--report-json", "r.json",
                "--report-md", "r.md", "--json", *FAST)  # fmt: skip
    lines = [ln for ln in r.err.splitlines() if ln.strip() and not ln.startswith("... ")]
    assert r.code == 1 and lines == ["onnxopt: error: the Markdown report failed"], r.err
    assert snapshot(work) == before  # no o.onnx, no r.json, no new/ folder, no staging folder


# ---------------------------------------------------------------- onnxruntime errors: one line naming the node


@pytest.mark.parametrize(
    "args",
    [
        ["optimize", "m.onnx", "-o", "o.onnx", *FAST],
        ["quantize", "m.onnx", "-o", "q.onnx", "--mode", "dynamic", "--no-bench"],
        ["bench", "m.onnx", "--runs", "2", "--warmup", "0"],
        ["compare", "ref.onnx", "m.onnx", "--samples", "4", "--no-latency"],
    ],
)
def test_a_model_that_fails_at_run_time_is_one_line(work: Path, capfd: pytest.CaptureFixture[str],
                                                     args: list[str]) -> None:  # fmt: skip
    onnx.save(runfail_model(), str(work / "m.onnx"))
    shutil.copyfile(work / "m.onnx", work / "ref.onnx")
    before = snapshot(work)
    r = onnxopt(capfd, *args)
    assert_refused(r, 1, "node 'bad_reshape' (Reshape)", before, work)
    assert "onnxruntime failed while running" in r.err and "[E:onnxruntime" not in r.err


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Non-zero status code returned while running Gather node. "
         "Name:'/emb/Gather' Status Message: /onnxruntime_src/onnxruntime/core/providers/cpu/tensor/gather.cc:92 "
         "onnxruntime::Status onnxruntime::GatherCopyData(const onnxruntime::Tensor*, size_t) indices element out "
         "of data bounds, idx=60 must be within the inclusive range [-50,49]",
         "onnxruntime failed while running the model at node '/emb/Gather' (Gather): indices element out of data "
         "bounds, idx=60 must be within the inclusive range [-50,49]; the model loads but this node fails"),
        ("[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Got invalid dimensions for input: x for the following "
         "indices\n index: 1 Got: 9 Expected: 8\n Please fix either the inputs/outputs or the model.",
         "onnxruntime failed while running the model: Got invalid dimensions for input: x for the following "
         "indices index: 1 Got: 9 Expected: 8 Please fix either the inputs/outputs or the model.; check that the inputs"),
    ],
)  # fmt: skip
def test_run_errors_name_the_node_without_cpp_noise(message: str, expected: str) -> None:
    from onnxopt.core.errors import ModelRunError
    from onnxopt.core.runtime import run_error

    e = run_error(RuntimeError(message))
    assert isinstance(e, ModelRunError) and e.exit_code == 1
    assert str(e).startswith(expected), str(e)
    assert "\n" not in str(e)


def test_search_baseline_that_fails_at_run_time(work: Path, capfd: pytest.CaptureFixture[str]) -> None:
    onnx.save(runfail_model((1, 8, 8)), str(work / "base.onnx"))
    before = snapshot(work)
    r = onnxopt(capfd, "search", "--space", ROOT / "examples" / "search_space.toml", "--data", "digits_train.npz",
                "--val", "digits_val.npz", "-o", "best.onnx", "--baseline", "base.onnx")  # fmt: skip
    assert_refused(r, 1, "node 'bad_reshape'", before, work)  # and no best.onnx.search/


def test_onnxruntime_warnings_stay_quiet_unless_verbose(work: Path, capfd: pytest.CaptureFixture[str]) -> None:
    onnx.save(wrong_output_shape_model(), str(work / "w.onnx"))
    quiet = onnxopt(capfd, "bench", "w.onnx", "--runs", "5", "--warmup", "0", "--json")
    assert quiet.code == 0 and quiet.err == ""
    quiet = onnxopt(capfd, "compare", "w.onnx", "w.onnx", "--samples", "4", "--no-latency", "--json")
    assert quiet.code == 0 and quiet.err == ""
    loud = onnxopt(capfd, "-v", "bench", "w.onnx", "--runs", "5", "--warmup", "0", "--json")
    assert loud.code == 0 and "W:onnxruntime" in loud.err


# ---------------------------------------------------------------- bad option values: exit 2, one line


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["optimize", "digits_cnn.onnx", "--min-cosine", "nan"], "--min-cosine nan: must be a finite number"),
        (["optimize", "digits_cnn.onnx", "--max-accuracy-drop", "nan"], "--max-accuracy-drop nan"),
        (["optimize", "digits_cnn.onnx", "--min-speedup", "nan"], "--min-speedup nan"),
        (["optimize", "digits_cnn.onnx", "--seed", "-1"], "--seed -1: must be in [0, 4.29497e+09]"),
        (["optimize", "digits_cnn.onnx", "--seed", "-9999999999"], "--seed -9999999999"),
        (["optimize", "digits_cnn.onnx", "--bench-seconds", "0"], "--bench-seconds 0.0: must be > 0"),
        (["quantize", "digits_cnn.onnx", "-o", "q.onnx", "--min-cosine", "nan"], "--min-cosine nan"),
        (["quantize", "digits_cnn.onnx", "-o", "q.onnx", "--min-cosine", "-1"], "--min-cosine -1.0: must be in [0, 1]"),
        (["quantize", "digits_cnn.onnx", "-o", "q.onnx", "--calib-samples", "0"], "--calib-samples 0: must be >= 1"),
        (["prune", "digits_cnn.onnx", "-o", "p.onnx", "--sparsity", "inf"], "--sparsity inf: must be a finite"),
        (["prune", "digits_cnn.onnx", "-o", "p.onnx", "--method", "channels", "--ratio", "1"], "--ratio 1.0"),
        (["prune", "digits_cnn.onnx", "-o", "p.onnx", "--method", "channels", "--round-to", "0"], "--round-to 0"),
        (["prune", "digits_cnn.onnx", "-o", "p.onnx", "--threshold", "-1e30"], "--threshold -1e+30: must be >= 0"),
        (["bench", "digits_cnn.onnx", "--duration", "nan"], "--duration nan: must be a finite number"),
        (["bench", "digits_cnn.onnx", "--duration", "1e400"], "--duration inf: must be a finite number"),
        (["bench", "digits_cnn.onnx", "--ratio-quantile", "nan"], "--ratio-quantile nan"),
        (["bench", "digits_cnn.onnx", "--runs", "-1"], "--runs -1: must be >= 2"),
        (["bench", "digits_cnn.onnx", "--threads", "1,,2"], "--threads '1,,2'"),
        (["bench", "digits_cnn.onnx", "--shape", "=1"], "--shape '=1': give the input name"),
        (["bench", "digits_cnn.onnx", "--shape", "input=-1,1,8,8"], "dimensions must be positive"),
        (["compare", "digits_cnn.onnx", "digits_cnn.onnx", "--batch", "0"], "--batch 0: must be >= 1"),
        (["compare", "digits_cnn.onnx", "digits_cnn.onnx", "--max-accuracy-drop", "-1"], "--max-accuracy-drop -1.0"),
        (["convert", "x.py:f", "-o", "c.onnx", "--opset", "5"], "--opset 5: must be in [11, 23]"),
        (["distill", "--teacher", "digits_cnn.onnx", "--student", STUDENT, "--data", "digits_train.npz",
          "--val", "digits_val.npz", "-o", "s.onnx", "--epochs", "0"], "--epochs 0: must be >= 1"),
        (["search", "--space", "s.toml", "--data", "digits_train.npz", "--val", "digits_val.npz", "-o", "b.onnx",
          "--population", "2", "--elite", "2"], "larger than the elite count"),
    ],
)  # fmt: skip
def test_bad_option_values_are_usage_errors(work: Path, capfd: pytest.CaptureFixture[str], args: list[str],
                                            needle: str) -> None:  # fmt: skip
    (work / "s.toml").write_text("[genes.depth]\ntype = 'int'\nlow = 1\nhigh = 2\n")
    before = snapshot(work)
    assert_refused(onnxopt(capfd, *args), 2, needle, before, work)


# ---------------------------------------------------------------- bad data: exit 1 naming key and sample


def _bad_val(work: Path, *, x_fn: object = None, labels: np.ndarray | None = None) -> Path:
    with np.load(MODELS / "digits_val.npz") as z:
        x, y = z["input"][:32].copy(), z["labels"][:32].copy()
    if callable(x_fn):
        x = x_fn(x)
    p = work / "bad.npz"
    np.savez(p, input=x, labels=y if labels is None else labels)
    return p


def _poison(value: float) -> object:
    def f(x: np.ndarray) -> np.ndarray:
        x[5, 0, 3, 3] = value
        return x

    return f


@pytest.mark.parametrize(
    "args",
    [
        ["optimize", "digits_cnn.onnx", "-o", "o.onnx", "--data", "bad.npz", *FAST],
        ["optimize", "digits_cnn.onnx", "-o", "o.onnx", "--calib-data", "bad.npz", *FAST],
        ["quantize", "digits_cnn.onnx", "-o", "q.onnx", "--mode", "static", "--calib-data", "bad.npz", "--no-bench"],
        ["quantize", "digits_cnn.onnx", "-o", "q.onnx", "--mode", "dynamic", "--data", "bad.npz", "--no-bench"],
        ["prune", "digits_cnn.onnx", "-o", "p.onnx", "--data", "bad.npz"],
        ["compare", "digits_cnn.onnx", "digits_cnn.onnx", "--data", "bad.npz", "--no-latency"],
        ["bench", "digits_cnn.onnx", "--data", "bad.npz", "--runs", "2"],
    ],
)
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nan_and_inf_in_data_are_refused(work: Path, capfd: pytest.CaptureFixture[str], args: list[str],
                                         value: float) -> None:  # fmt: skip
    _bad_val(work, x_fn=_poison(value))
    before = snapshot(work)
    assert_refused(onnxopt(capfd, *args), 1, "'input' contains NaN or Inf (1 value(s), first at sample 5)", before, work)


@pytest.mark.parametrize(
    ("labels", "needle"),
    [
        (lambda y: np.eye(10, dtype=np.float32)[y], "labels must be a 1-D array"),
        (lambda y: np.where(np.arange(len(y)) == 4, np.nan, y.astype(np.float32)), "label of sample 4 is nan"),
        (lambda y: np.where(np.arange(len(y)) == 7, 10, y), "label of sample 7 is 10 but the model has 10 classes"),
        (lambda y: np.where(np.arange(len(y)) == 2, -1, y), "label of sample 2 is -1"),
        (lambda y: np.array([f"c{v}" for v in y]), "labels must be integers"),
    ],
)
@pytest.mark.parametrize("command", ["compare", "prune", "quantize"])
def test_bad_labels_are_refused(work: Path, capfd: pytest.CaptureFixture[str], labels: object, needle: str,
                                command: str) -> None:  # fmt: skip
    with np.load(MODELS / "digits_val.npz") as z:
        y = z["labels"][:32]
    _bad_val(work, labels=labels(y))  # type: ignore[operator]
    args = {
        "compare": ["compare", "digits_cnn.onnx", "digits_cnn.onnx", "--data", "bad.npz", "--no-latency"],
        "prune": ["prune", "digits_cnn.onnx", "-o", "p.onnx", "--data", "bad.npz"],
        "quantize": ["quantize", "digits_cnn.onnx", "-o", "q.onnx", "--mode", "dynamic", "--no-bench",
                     "--data", "bad.npz"],
    }[command]  # fmt: skip
    before = snapshot(work)
    assert_refused(onnxopt(capfd, *args), 1, needle, before, work)


@pytest.mark.parametrize("command", ["distill", "search"])
def test_string_arrays_in_training_data_are_refused(work: Path, capfd: pytest.CaptureFixture[str],
                                                    command: str) -> None:  # fmt: skip
    _bad_val(work, x_fn=lambda x: x.astype(str))
    args = {
        "distill": ["distill", "--teacher", "digits_cnn.onnx", "--student", STUDENT, "--data", "bad.npz",
                    "--val", "digits_val.npz", "-o", "s.onnx"],
        "search": ["search", "--space", ROOT / "examples" / "search_space.toml", "--data", "bad.npz",
                   "--val", "digits_val.npz", "-o", "best.onnx"],
    }[command]  # fmt: skip
    before = snapshot(work)
    assert_refused(onnxopt(capfd, *args), 1, "'input' holds <U", before, work)


# ---------------------------------------------------------------- models that fail validation


def _corrupt(work: Path, how: str) -> Path:
    m = onnx.load(str(work / "digits_cnn.onnx"))
    p = work / "bad.onnx"
    if how == "unknown_op":
        m.graph.node[1].op_type = "NotAnOp"
    elif how == "dtype_enum":
        m.graph.input[0].type.tensor_type.elem_type = 999
    elif how == "initializer_dtype":
        m.graph.initializer[0].data_type = 77
    if how == "bad_utf8_op":
        raw = m.SerializeToString()
        op = m.graph.node[0].op_type.encode()
        i = raw.find(op)
        p.write_bytes(raw[:i] + b"\xff\xfe" + raw[i + 2 :])
    else:
        onnx.save(m, str(p))
    return p


@pytest.mark.parametrize("how", ["unknown_op", "dtype_enum", "initializer_dtype"])
def test_prune_writes_nothing_for_an_invalid_model(work: Path, capfd: pytest.CaptureFixture[str], how: str) -> None:
    _corrupt(work, how)
    before = snapshot(work)
    for method in ("magnitude", "channels"):
        r = onnxopt(capfd, "prune", "bad.onnx", "-o", "p.onnx", "--method", method)
        assert_refused(r, 1, "bad.onnx", before, work)


@pytest.mark.parametrize("how", ["dtype_enum", "initializer_dtype", "bad_utf8_op"])
@pytest.mark.parametrize("as_json", [False, True])
def test_inspect_without_validation_never_tracebacks(work: Path, capfd: pytest.CaptureFixture[str], how: str,
                                                     as_json: bool) -> None:  # fmt: skip
    _corrupt(work, how)
    r = onnxopt(capfd, "inspect", "--no-validate", "bad.onnx", *(["--json"] if as_json else []))
    assert r.code in (0, 1) and "Traceback" not in r.err
    if r.code == 1:
        assert len(r.err.strip().splitlines()) == 1 and r.err.startswith("onnxopt: error: bad.onnx: "), r.err


# ---------------------------------------------------------------- leftovers


def test_quant_pre_process_leaves_nothing_in_the_working_directory(work: Path,
                                                                   capfd: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    # Expand to a shape given as an input: onnxruntime's symbolic shape inference cannot finish and
    # saves sym_shape_infer_temp.onnx into the current directory before giving up.
    w = numpy_helper.from_array(np.ones((4, 3), np.float32), "w")
    m = _model(
        [helper.make_node("Expand", ["x", "s"], ["e"], name="expand"), helper.make_node("MatMul", ["e", "w"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4]),
         helper.make_tensor_value_info("s", TensorProto.INT64, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["a", 3])], [w], "expand",
    )  # fmt: skip
    onnx.save(m, str(work / "expand.onnx"))
    np.savez(work / "d.npz", x=np.ones((2, 4), np.float32), s=np.array([2, 4], np.int64))
    before = snapshot(work)
    r = onnxopt(capfd, "quantize", "expand.onnx", "-o", "q.onnx", "--mode", "static", "--calib-data", "d.npz",
                "--no-bench", "--json")  # fmt: skip
    assert r.code == 0, r.err
    after = snapshot(work)
    assert set(after) - set(before) == {"q.onnx"}  # no sym_shape_infer_temp.onnx, no <uuid>.data
    assert all(after[k] == v for k, v in before.items())


@pytest.mark.parametrize("case", ["shapes_differ", "contradictory_space"])
def test_search_creates_no_work_dir_when_its_checks_fail(work: Path, capfd: pytest.CaptureFixture[str],
                                                         case: str) -> None:  # fmt: skip
    space = ROOT / "examples" / "search_space.toml"
    val = "digits_val.npz"
    if case == "shapes_differ":
        with np.load(MODELS / "digits_val.npz") as z:
            np.savez(work / "v.npz", input=z["input"][:, :, :4, :4], labels=z["labels"])
        val = "v.npz"
    else:
        space = work / "s.toml"
        space.write_text("constraints = ['depth > 3']\n[genes.depth]\ntype = 'int'\nlow = 1\nhigh = 3\n")
    before = snapshot(work)
    r = onnxopt(capfd, "search", "--space", space, "--data", "digits_train.npz", "--val", val, "-o", "best.onnx")
    assert_refused(r, 1, "differ in shape" if case == "shapes_differ" else "contradictory", before, work)
    assert not (work / "best.onnx.search").exists()


@pytest.mark.keras
@pytest.mark.slow
def test_tensorflow_logs_stay_quiet(tmp_path: Path) -> None:
    pytest.importorskip("tensorflow")
    out = tmp_path / "k.onnx"
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    r = subprocess.run([sys.executable, "-m", "onnxopt", "convert", str(MODELS / "digits_keras.keras"), "-o",
                        str(out), "--json"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip() == "", r.stderr  # no TensorFlow / absl / onnxruntime lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.onnx"]
