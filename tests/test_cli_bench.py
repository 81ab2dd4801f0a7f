"""CLI tests of `onnxopt bench` and `onnxopt compare`: structure, exit codes, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from onnxopt.cli import cli, main
from tests.conftest import make_convnet

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The real CLI in a fresh process (one test keeps this end to end)."""
    return subprocess.run(
        [sys.executable, "-m", "onnxopt", *args], capture_output=True, text=True, cwd=ROOT, timeout=300
    )


def run_main(capsys: pytest.CaptureFixture[str], *args: str) -> subprocess.CompletedProcess[str]:
    """onnxopt.cli.main in this process (exit code, stdout, stderr), faster than a subprocess."""
    with pytest.raises(SystemExit) as e:
        main(list(args))
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), int(e.value.code or 0), out, err)


def invoke(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return r.exit_code, r.output


@pytest.fixture
def perturbed_digits(tmp_path: Path, digits_cnn: Path) -> Path:
    """The digits CNN with noise on its last layer: a real, slightly worse candidate."""
    m = onnx.load(str(digits_cnn))
    rng = np.random.default_rng(0)
    big = max(m.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    a = numpy_helper.to_array(big)
    big.CopyFrom(numpy_helper.from_array((a + 0.5 * a.std() * rng.standard_normal(a.shape)).astype(a.dtype), big.name))
    p = tmp_path / "noisy.onnx"
    onnx.save(m, str(p))
    return p


def test_bench_digits_table(digits_cnn: Path) -> None:
    code, out = invoke("bench", str(digits_cnn), "--runs", "10", "--warmup", "1")
    assert code == 0, out
    assert "digits_cnn.onnx" in out and "p50" in out and "inf/s" in out
    assert "mode: interleaved" in out


def test_bench_json_compare_threads(digits_cnn: Path) -> None:
    code, out = invoke("bench", str(digits_cnn), str(digits_cnn), "--runs", "8", "--threads", "1,2",
                       "--compare", "--json")
    assert code == 0, out
    doc = json.loads(out)
    assert doc["mode"] == "interleaved" and doc["settings"]["allow_spinning"] is False
    rows = doc["results"]
    assert [(r["name"], r["threads"]) for r in rows] == [
        ("digits_cnn.onnx", 1), ("digits_cnn.onnx", 2), ("digits_cnn.onnx#2", 1), ("digits_cnn.onnx#2", 2)
    ]
    for r in rows:
        s = r["stats"]
        assert s["n"] == 8 and 0 < s["min_ms"] <= s["p50_ms"] <= s["p99_ms"] <= s["max_ms"]
        assert s["throughput_per_s"] > 0 and r["file_size"] == digits_cnn.stat().st_size
    comps = doc["comparisons"]
    assert len(comps) == 2 and all(c["low"] <= c["ratio"] <= c["high"] for c in comps)
    assert {c["threads"] for c in comps} == {1, 2}


def test_bench_data_and_memory_subprocess(digits_cnn: Path, digits_val: Path) -> None:
    code, out = invoke("bench", str(digits_cnn), "--data", str(digits_val), "--batch", "4", "--runs", "2",
                       "--isolation", "subprocess", "--memory", "--json")
    assert code == 0, out
    r = json.loads(out)["results"][0]
    assert r["isolation"] == "subprocess" and r["batch"] == 4
    # a session of this small CNN adds some memory, far less than a GiB
    assert r["peak_rss_mb"] is not None and 0 < r["peak_rss_mb"] < 1024


def test_bench_plot(tmp_path: Path, digits_cnn: Path) -> None:
    pytest.importorskip("matplotlib")
    png = tmp_path / "lat.png"
    code, out = invoke("bench", str(digits_cnn), "--runs", "5", "--plot", str(png))
    assert code == 0, out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_list_providers() -> None:
    code, out = invoke("bench", "--list-providers")
    assert code == 0 and "CPUExecutionProvider" in out


def test_bad_provider_lists_available(digits_cnn: Path) -> None:
    r = run_cli("bench", str(digits_cnn), "--provider", "NopeExecutionProvider")
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "CPUExecutionProvider" in lines[0] and "Traceback" not in r.stderr


def test_bad_npz_one_line_per_mismatch(tmp_path: Path, digits_cnn: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.npz"
    np.savez(bad, input=np.zeros((4, 1, 7, 8), np.float16), labels=np.zeros(4))
    r = run_main(capsys, "bench", str(digits_cnn), "--data", str(bad), "--runs", "2")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    msg = r.stderr.strip()
    assert "input 'input': expected dtype float32, got float16" in msg
    assert "input 'input': expected shape (batch, 1, 8, 8), got (4, 1, 7, 8)" in msg


def test_compare_digits_with_labels_and_gates(digits_cnn: Path, digits_val: Path, perturbed_digits: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = invoke("compare", str(digits_cnn), str(perturbed_digits), "--data", str(digits_val),
                       "--runs", "6", "--json")
    assert code == 0, out
    doc = json.loads(out)
    fid = doc["fidelity"]
    assert fid["samples"] == 360 and fid["accuracy_reference"] > 95
    assert fid["accuracy_drop"] == pytest.approx(fid["accuracy_reference"] - fid["accuracy_candidate"])
    o = fid["outputs"][0]
    assert o["name"] == "logits" and o["max_abs"] > 0 and o["cosine"] < 1 and o["top1_agreement"] is not None
    assert doc["latency"]["comparisons"][0]["reference"] == "digits_cnn.onnx"
    assert doc["gates_failed"] == []

    # A cosine gate that cannot pass: exit 3 and a one-line message naming the gate.
    r = run_main(capsys, "compare", str(digits_cnn), str(perturbed_digits), "--data", str(digits_val),
                "--no-latency", "--min-cosine", "0.9999999")
    assert r.returncode == 3, r.stderr
    assert "--min-cosine" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_compare_accuracy_gate_exit_3(digits_cnn: Path, digits_val: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A broken candidate: every weight matrix zeroed, so it predicts one class for everything.
    m = onnx.load(str(digits_cnn))
    for t in m.graph.initializer:
        a = numpy_helper.to_array(t)
        if a.ndim == 2:
            t.CopyFrom(numpy_helper.from_array(np.zeros_like(a), t.name))
    bad = tmp_path / "broken.onnx"
    onnx.save(m, str(bad))
    r = run_main(capsys, "compare", str(digits_cnn), str(bad), "--data", str(digits_val), "--no-latency",
                "--max-accuracy-drop", "1", "--json")
    assert r.returncode == 3, r.stderr
    assert r.stderr.strip().startswith("onnxopt: error: gate failed: accuracy drop")
    doc = json.loads(r.stdout)
    assert doc["fidelity"]["accuracy_drop"] > 50
    assert "accuracy drop" in doc["gates_failed"][0]


def test_compare_min_speedup_gate_reads_the_measurement(digits_cnn: Path, capsys: pytest.CaptureFixture[str]) -> None:
    r = run_main(capsys, "compare", str(digits_cnn), str(digits_cnn), "--runs", "5", "--min-speedup", "100")
    assert r.returncode == 3
    assert "speedup" in r.stderr and "--min-speedup 100" in r.stderr


def test_compare_different_inputs_clear_error(digits_cnn: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = tmp_path / "convnet.onnx"
    onnx.save(make_convnet(), str(other))
    r = run_main(capsys, "compare", str(digits_cnn), str(other), "--no-latency")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "different inputs" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_compare_accuracy_gate_needs_labels(digits_cnn: Path, capsys: pytest.CaptureFixture[str]) -> None:
    r = run_main(capsys, "compare", str(digits_cnn), str(digits_cnn), "--max-accuracy-drop", "1")
    assert r.returncode == 1 and "needs labels" in r.stderr


def test_spin_honoured_only_for_a_lone_session(digits_cnn: Path) -> None:
    code, out = invoke("bench", str(digits_cnn), "--runs", "3", "--spin", "--json")
    assert code == 0 and json.loads(out)["results"][0]["allow_spinning"] is True
    code, out = invoke("bench", str(digits_cnn), str(digits_cnn), "--runs", "3", "--spin", "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["settings"]["allow_spinning"] is False
    assert not any(r["allow_spinning"] for r in doc["results"])


def test_ratio_quantile_reported(digits_cnn: Path) -> None:
    code, out = invoke("bench", str(digits_cnn), str(digits_cnn), "--runs", "6", "--compare",
                       "--ratio-quantile", "0.25", "--json")
    assert code == 0, out
    (c,) = json.loads(out)["comparisons"]
    assert c["quantile"] == 0.25 and c["low"] <= c["ratio"] <= c["high"]
