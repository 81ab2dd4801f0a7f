"""CLI tests: inspect, exit codes, bad input, import weight."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from onnxopt.cli import cli

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "onnxopt", *args], capture_output=True, text=True, cwd=ROOT, timeout=300
    )


def test_inspect_table(digits_cnn: Path) -> None:
    r = CliRunner().invoke(cli, ["inspect", str(digits_cnn)])
    assert r.exit_code == 0, r.output
    assert "parameters" in r.output and "Conv" in r.output
    assert "[batch, 1, 8, 8]" in r.output


def test_inspect_json(digits_cnn: Path) -> None:
    r = CliRunner().invoke(cli, ["inspect", str(digits_cnn), "--json"])
    assert r.exit_code == 0
    d = json.loads(r.output)
    assert d["inputs"][0]["name"] == "input"
    assert d["parameter_count"] > 0


@pytest.mark.parametrize("kind", ["missing", "directory", "empty", "text", "png", "truncated"])
def test_inspect_bad_input_one_line_exit_1(tmp_path: Path, digits_cnn: Path, kind: str) -> None:
    p = tmp_path / "m.onnx"
    if kind == "directory":
        p = tmp_path
    elif kind == "empty":
        p.write_bytes(b"")
    elif kind == "text":
        p.write_text("not a model\n")
    elif kind == "png":
        p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    elif kind == "truncated":
        p.write_bytes(digits_cnn.read_bytes()[:4000])
    r = run_cli("inspect", str(p))
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert str(p) in lines[0]


def test_usage_error_exit_2() -> None:
    r = run_cli("inspect")
    assert r.returncode == 2


def test_version() -> None:
    r = run_cli("--version")
    assert r.returncode == 0 and "onnxopt" in r.stdout


def test_import_is_light() -> None:
    code = (
        "import sys, onnxopt, onnxopt.cli\n"
        "from onnxopt.cli import cli\n"
        "for name in cli.list_commands(None): cli.get_command(None, name)\n"
        "bad = [m for m in ('torch', 'tensorflow', 'keras', 'matplotlib', 'sklearn') if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "", f"heavy modules imported: {r.stdout}"


def test_help_lists_every_command() -> None:
    r = run_cli("--help")
    assert r.returncode == 0
    for name in ("inspect", "bench", "compare", "convert", "distill", "search", "prune", "quantize", "optimize"):
        assert name in r.stdout, name


def test_each_input_mismatch_gets_its_own_line(tmp_path: Path, digits_cnn: Path) -> None:
    import numpy as np

    bad = tmp_path / "bad.npz"
    np.savez(bad, input=np.zeros((4, 1, 9, 9), np.float64), extra=np.zeros(3))
    np.savez(tmp_path / "wrongname.npz", pixels=np.zeros((4, 1, 8, 8), np.float32), other=np.zeros(2))
    r = run_cli("bench", str(digits_cnn), "--data", str(bad), "--runs", "2")
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert all(ln.startswith("onnxopt: error: ") for ln in lines), r.stderr
    assert any("'input'" in ln and "(batch, 1, 8, 8)" in ln and "(4, 1, 9, 9)" in ln for ln in lines), r.stderr
    assert "Traceback" not in r.stderr
