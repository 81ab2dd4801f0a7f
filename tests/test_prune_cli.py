"""`onnxopt prune`: outputs, JSON report, exit codes and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
from click.testing import CliRunner

from onnxopt.cli import cli
from onnxopt.core.runtime import create_session

ROOT = Path(__file__).resolve().parents[1]


def _invoke(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(cli, list(args))
    return r.exit_code, r.output


def test_magnitude_json(convnet_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "sparse.onnx"
    # --min-cosine 0: exactly 50% of this random convnet's weights (cosine 0.97: below the default floor)
    code, text = _invoke("prune", str(convnet_path), "-o", str(out), "--sparsity", "0.5", "--min-elements", "0",
                         "--sparse-storage", "--json", "--min-cosine", "0")
    assert code == 0, text
    report = json.loads(text)
    assert report["total"]["sparsity_after"] == 0.5
    assert report["fidelity"]["checked"] is False and report["fidelity"]["applied"] == 0.5
    assert "do not make onnxruntime" in report["note"]
    assert report["storage"]["format"] == "bitmask"
    onnx.checker.check_model(onnx.load(str(out)))
    x = np.zeros((1, 3, 16, 16), np.float32)
    assert create_session(out, custom_ops=False).run(None, {"input": x})[0].shape == (1, 10)


def test_channels_table_with_accuracy(digits_cnn: Path, digits_val: Path, tmp_path: Path) -> None:
    out = tmp_path / "slim.onnx"
    code, text = _invoke("prune", str(digits_cnn), "-o", str(out), "--method", "channels", "--ratio", "0.3",
                         "--data", str(digits_val))
    assert code == 0, text
    assert "channel pruning" in text and "accuracy" in text and "left alone" in text
    assert out.stat().st_size < digits_cnn.stat().st_size


def test_option_of_the_other_method_is_a_usage_error(convnet_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.onnx"
    code, _ = _invoke("prune", str(convnet_path), "-o", str(out), "--ratio", "0.5")
    assert code == 2 and not out.exists()
    code, _ = _invoke("prune", str(convnet_path), "-o", str(out), "--sparsity", "0.5", "--threshold", "0.1")
    assert code == 2 and not out.exists()


def test_nothing_to_prune_exit_0_or_strict_exit_1(mlp_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "same.onnx"
    code, text = _invoke("prune", str(mlp_path), "-o", str(out), "--min-elements", "100000")
    assert code == 0 and "no prunable tensors" in text and out.exists()
    strict = tmp_path / "strict.onnx"
    r = subprocess.run(
        [sys.executable, "-m", "onnxopt", "prune", str(mlp_path), "-o", str(strict), "--min-elements", "100000",
         "--strict"], capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    assert r.returncode == 1 and not strict.exists()
    assert len(r.stderr.strip().splitlines()) == 1 and "nothing to prune" in r.stderr


def test_bad_sparsity_one_line_no_output(convnet_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "bad.onnx"
    r = subprocess.run(
        [sys.executable, "-m", "onnxopt", "prune", str(convnet_path), "-o", str(out), "--sparsity", "1.5"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    assert r.returncode == 2 and not out.exists()  # a bad option value is a usage error (issue 15)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "--sparsity 1.5: must be in [0, 1)" in lines[0] and "Traceback" not in r.stderr


def test_refuses_to_overwrite_input(convnet_path: Path) -> None:
    raw = convnet_path.read_bytes()
    code, _ = _invoke("prune", str(convnet_path), "-o", str(convnet_path), "--method", "channels")
    assert code != 0 and convnet_path.read_bytes() == raw
