"""`onnxopt quantize` CLI: success paths, exit 3 on a missed budget, bad input (one line, exit 1, no file)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxopt.cli import main
from onnxopt.core.model import op_histogram
from tests.real_models import make_nhwc_opset9

ROOT = Path(__file__).resolve().parents[1]


def run_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main(["quantize", *args])
    out, err = capsys.readouterr()
    return int(e.value.code or 0), out, err


def test_dynamic_json(capsys: pytest.CaptureFixture[str], tmp_path: Path, digits_cnn: Path, digits_val: Path) -> None:
    out_path = tmp_path / "q.onnx"
    code, out, err = run_main(capsys, str(digits_cnn), "-o", str(out_path), "--mode", "dynamic",
                              "--data", str(digits_val), "--max-accuracy-drop", "0.5", "--runs", "4", "--json")
    assert code == 0, err
    rep = json.loads(out)
    assert rep["quantized"] and rep["meets_budget"] and rep["output"] == str(out_path)
    assert rep["fidelity"]["accuracy_drop"] <= 0.5
    assert "ratio" in rep["latency"]["ratio"]
    assert "ConvInteger" in op_histogram(onnx.load(str(out_path)))


def test_static_table_and_report_file(capsys: pytest.CaptureFixture[str], tmp_path: Path, digits_cnn: Path,
                                      digits_calib: Path) -> None:
    out_path = tmp_path / "q.onnx"
    report = tmp_path / "r.json"
    code, out, err = run_main(capsys, str(digits_cnn), "-o", str(out_path), "--mode", "static", "--format",
                              "qoperator", "--activation-type", "uint8", "--calib-data", str(digits_calib),
                              "--no-bench", "--report", str(report))
    assert code == 0, err
    assert "winner" in out and "wrote" in out
    assert json.loads(report.read_text())["winner"] == "static-qoperator-u8s8"
    assert "QLinearConv" in op_histogram(onnx.load(str(out_path)))


def test_missed_budget_exits_3_and_keeps_the_closest(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                     convnet_path: Path) -> None:
    calib = tmp_path / "calib.npz"
    np.savez(calib, input=np.random.default_rng(0).standard_normal((16, 3, 16, 16)).astype(np.float32))
    out_path = tmp_path / "q.onnx"
    code, _, err = run_main(capsys, str(convnet_path), "-o", str(out_path), "--mode", "static", "--calib-data",
                            str(calib), "--min-cosine", "1.0", "--no-bench")
    assert code == 3
    assert "budget" in err and str(out_path) in err
    assert out_path.exists()


def _bad(tmp_path: Path, digits_cnn: Path, kind: str) -> list[str]:
    out = str(tmp_path / "out.onnx")
    if kind == "calib-mismatch":
        p = tmp_path / "c.npz"
        np.savez(p, input=np.zeros((4, 1, 9, 9), np.float32))
        return [str(digits_cnn), "-o", out, "--calib-data", str(p)]
    if kind == "calib-empty":
        d = tmp_path / "empty"
        d.mkdir()
        return [str(digits_cnn), "-o", out, "--calib-data", str(d)]
    if kind == "already-quantized":
        from onnxopt.quantization.api import quantize
        from onnxopt.quantization.config import QuantizeConfig

        q = quantize(onnx.load(str(digits_cnn)), QuantizeConfig(mode="dynamic")).model
        qp = tmp_path / "q.onnx"
        onnx.save(q, str(qp))
        return [str(qp), "-o", out, "--mode", "dynamic"]
    if kind == "opset-too-low":  # the test makes onnx's version converter fail
        m = make_nhwc_opset9()
        p = tmp_path / "old.onnx"
        onnx.save(m, str(p))
        return [str(p), "-o", out, "--mode", "dynamic"]
    if kind == "unknown-node":
        return [str(digits_cnn), "-o", out, "--mode", "dynamic", "--exclude-nodes", "no_such_node"]
    raise AssertionError(kind)


@pytest.mark.parametrize(
    ("kind", "needle"),
    [("calib-mismatch", "expected shape"), ("calib-empty", "empty calibration folder"),
     ("already-quantized", "already quantized"), ("opset-too-low", "opset >= 10"),
     ("unknown-node", "no node named")],
)
def test_bad_input_one_line_exit_1_no_output(capsys: pytest.CaptureFixture[str], tmp_path: Path, digits_cnn: Path,
                                             kind: str, needle: str, monkeypatch: pytest.MonkeyPatch) -> None:
    args = _bad(tmp_path, digits_cnn, kind)
    if kind == "opset-too-low":
        monkeypatch.setattr(onnx.version_converter, "convert_version", lambda *_: 1 / 0)
    code, _, err = run_main(capsys, *args)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], err
    assert not (tmp_path / "out.onnx").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.onnx")]


def test_subprocess_bad_input_has_no_traceback(tmp_path: Path, digits_cnn: Path) -> None:
    args = _bad(tmp_path, digits_cnn, "calib-empty")
    r = subprocess.run([sys.executable, "-m", "onnxopt", "quantize", *args], capture_output=True, text=True,
                       cwd=ROOT, timeout=120)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_progress_on_stderr_and_none_under_json(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                convnet_path: Path) -> None:
    """Long work says what it is doing ('... quantize: building X (i of n)'); --json keeps stderr quiet."""
    code, out, err = run_main(capsys, str(convnet_path), "-o", str(tmp_path / "a.onnx"), "--mode", "auto",
                              "--runs", "2")
    assert code in (0, 3), err
    steps = [line for line in err.splitlines() if line.startswith("... quantize: ")]
    assert any("building dynamic" in s and "queued" in s for s in steps), err
    assert any("timing" in s for s in steps), err
    code, out, err = run_main(capsys, str(convnet_path), "-o", str(tmp_path / "b.onnx"), "--mode", "auto",
                              "--runs", "2", "--json")
    assert code in (0, 3) and json.loads(out)["output"]
    assert "... " not in err
