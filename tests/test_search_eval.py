"""End-to-end search on digits with the PyTorch evaluator and the CLI (tiny budget)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from onnxopt.cli import cli
from onnxopt.nas.evaluate import EvalConfig, load_split

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
TRAIN, VAL = MODELS / "digits_train.npz", MODELS / "digits_val.npz"

TINY_SPACE = """
[genes.depth]
type = "int"
low = 1
high = 2
[genes.width_1]
type = "int"
low = 4
high = 8
step = 4
[genes.width_2]
type = "int"
low = 4
high = 8
step = 4
when = "depth >= 2"
[genes.head]
options = ["flatten", "gap"]
[train]
epochs = 2
bench_runs = 20
bench_warmup = 2
"""


@pytest.fixture
def tiny_space(tmp_path: Path) -> Path:
    p = tmp_path / "space.toml"
    p.write_text(TINY_SPACE)
    return p


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "onnxopt", *args], capture_output=True, text=True, cwd=ROOT, timeout=300
    )


@pytest.mark.torch
def test_torch_genome_builds_baseline_family() -> None:
    pytest.importorskip("torch")
    import torch

    from onnxopt.frameworks.torch_genome import DIGITS_BASELINE, build, param_count

    m = build(DIGITS_BASELINE, (1, 8, 8), 10)
    assert m(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    assert param_count(m) == 57594  # models/digits_cnn.py: same layers, same parameter count
    sep = build(DIGITS_BASELINE | {"separable": True, "head": "gap", "hidden": 0}, (1, 8, 8), 10)
    assert param_count(sep) < param_count(m) / 5
    assert sep(torch.zeros(1, 1, 8, 8)).shape == (1, 10)


@pytest.mark.torch
def test_count_params_matches_torch() -> None:
    pytest.importorskip("torch")
    from onnxopt.frameworks.torch_genome import build, count_params, param_count
    from onnxopt.nas.space import load_space

    space = load_space(ROOT / "examples" / "search_space.toml")
    rng = np.random.default_rng(0)
    for _ in range(25):
        g = space.sample_valid(rng)
        assert g is not None
        for extra in ({}, {"batchnorm": False}):
            gg = g | extra
            assert count_params(gg, (1, 8, 8), 10) == param_count(build(gg, (1, 8, 8), 10)), gg


@pytest.mark.torch
def test_cli_end_to_end_pareto(tmp_path: Path, tiny_space: Path) -> None:
    pytest.importorskip("torch")
    out = tmp_path / "out" / "best.onnx"
    log = tmp_path / "search.jsonl"
    plot = tmp_path / "front.png"
    args = [
        "search", "--space", str(tiny_space), "--data", str(TRAIN), "--val", str(VAL), "-o", str(out),
        "--population", "4", "--generations", "2", "--pareto", "--log", str(log), "--plot", str(plot),
        "--baseline", str(MODELS / "digits_cnn.onnx"), "--remeasure-runs", "20", "--json",
    ]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout[r.stdout.index("{"):])
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert summary["evaluations"] == len(lines) >= 4
    assert all(rec["error"] is None for rec in lines)
    assert max(rec["metrics"]["accuracy"] for rec in lines) > 50  # trained well beyond chance (10%)
    # the front: non-dominated in (accuracy up, latency down) as measured during the search
    front = summary["models"]
    pts = [(m["accuracy"], m["latency_ms_search"]) for m in front]
    for a, lat in pts:
        assert not any(a2 >= a and l2 <= lat and (a2, l2) != (a, lat) for a2, l2 in pts)
    assert summary["baseline"]["accuracy"] > 99
    for i, m in enumerate(front):
        p = out.with_name(f"best.front{i}.onnx")
        assert p.exists() and m["file"] == str(p)
        onnx.checker.check_model(onnx.load(str(p)))
        assert "speedup" in m
    # the written model is the most accurate member of the front and answers like the log says
    from onnxopt.measure.fidelity import accuracy

    val = load_split(VAL)
    acc = accuracy(onnx.load(str(out)), {"input": val[0]}, val[1])
    assert acc == pytest.approx(max(m["accuracy"] for m in front))
    assert plot.exists() and plot.stat().st_size > 1000
    # resuming a finished search re-evaluates nothing and appends nothing
    r2 = CliRunner().invoke(cli, [*args, "--resume"])
    assert r2.exit_code == 0, r2.output
    assert len(log.read_text().splitlines()) == len(lines)


@pytest.mark.torch
def test_run_search_result_matches_the_written_model(tmp_path: Path, tiny_space: Path) -> None:
    """The library call behind `onnxopt search`: its numbers are recomputed here from the files."""
    pytest.importorskip("torch")
    import onnxruntime as ort

    from onnxopt.nas.run import SearchRunConfig, run_search

    out = tmp_path / "best.onnx"
    cfg = SearchRunConfig(population=2, generations=1, elite=1, epochs=1, remeasure_runs=10)
    res = run_search(tiny_space, TRAIN, VAL, out, cfg)
    assert res.gates_passed and res.written == (str(out),)
    (m,) = res.models
    assert m.file == str(out) and res.to_dict()["models"][0]["file"] == str(out)
    # accuracy of the written file, from the raw arrays: onnxruntime logits, argmax vs labels
    with np.load(VAL) as z:
        x, y = z["input"].astype(np.float32), z["labels"]
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    logits = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    assert m.accuracy == pytest.approx(100.0 * float(np.mean(logits.argmax(axis=1) == y)))
    # the chosen model is the most accurate of the logged evaluations
    lines = [json.loads(line) for line in res.log.read_text().splitlines()]
    assert len(lines) == res.search.evaluations == 2
    assert m.accuracy == max(rec["metrics"]["accuracy"] for rec in lines)
    assert m.latency_ms > 0 and res.baseline is None and "speedup" not in m.to_dict()


@pytest.mark.torch
def test_cli_impossible_budget_reports_closest_exit_3(tmp_path: Path, tiny_space: Path) -> None:
    pytest.importorskip("torch")
    from onnxopt.core.errors import GateFailedError

    out = tmp_path / "best.onnx"
    r = CliRunner().invoke(cli, [
        "search", "--space", str(tiny_space), "--data", str(TRAIN), "--val", str(VAL), "-o", str(out),
        "--population", "2", "--generations", "1", "--elite", "1", "--epochs", "1",
        "--max-latency-ms", "0.00001", "--remeasure-runs", "10",
    ])
    assert isinstance(r.exception, GateFailedError) and r.exception.exit_code == 3, r.output
    msg = str(r.exception)
    assert "no candidate met --max-latency-ms" in msg and "closest" in msg
    assert not out.exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--pareto", "--max-latency-ms", "1"], "exclude each other"),
        (["--population", "2", "--elite", "2"], "larger than the elite count"),
        (["--max-latency-ms", "-1"], "must be > 0"),
    ],
)
def test_cli_bad_options_one_line(tmp_path: Path, tiny_space: Path, extra: list[str], message: str) -> None:
    out = tmp_path / "best.onnx"
    r = run_cli("search", "--space", str(tiny_space), "--data", str(TRAIN), "--val", str(VAL), "-o", str(out), *extra)
    assert r.returncode == 2, r.stderr  # bad option values are usage errors (issue 15)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.stderr
    assert not out.exists() and not out.with_name("best.onnx.search").exists()


def test_cli_contradictory_space(tmp_path: Path) -> None:
    space = tmp_path / "s.toml"
    space.write_text("constraints = ['depth > 3']\n[genes.depth]\ntype = 'int'\nlow = 1\nhigh = 3\n")
    out = tmp_path / "best.onnx"
    r = run_cli("search", "--space", str(space), "--data", str(TRAIN), "--val", str(VAL), "-o", str(out))
    assert r.returncode == 1
    assert "contradictory" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_cli_unknown_gene_for_builder(tmp_path: Path) -> None:
    space = tmp_path / "s.toml"
    space.write_text("[genes.depth]\ntype = 'int'\nlow = 1\nhigh = 3\n[genes.widht]\noptions = [8]\n")
    r = CliRunner().invoke(cli, ["search", "--space", str(space), "--data", str(TRAIN), "--val", str(VAL),
                                 "-o", str(tmp_path / "b.onnx")])
    assert r.exit_code != 0 and "widht" in str(r.exception)


def test_bad_data_rejected(tmp_path: Path) -> None:
    bad = tmp_path / "bad.npz"
    np.savez(bad, input=np.zeros((4, 64), np.float32), labels=np.zeros(4, np.int64))
    with pytest.raises(Exception, match="images"):
        load_split(bad)
    nolabels = tmp_path / "nolabels.npz"
    np.savez(nolabels, input=np.zeros((4, 1, 8, 8), np.float32))
    with pytest.raises(Exception, match="no labels"):
        load_split(nolabels)


def test_eval_config_validation() -> None:
    with pytest.raises(Exception, match="epochs must be >= 1"):
        EvalConfig(epochs=0)
    with pytest.raises(Exception, match="unknown key"):
        EvalConfig.from_settings({"epoch": 3})
    assert EvalConfig.from_settings({"epochs": 3}, epochs=None).epochs == 3
    assert EvalConfig.from_settings({"epochs": 3}, epochs=5).epochs == 5


def test_cli_refuses_output_over_an_input(tmp_path: Path, tiny_space: Path) -> None:
    base = tmp_path / "base.onnx"
    base.write_bytes((MODELS / "digits_cnn.onnx").read_bytes())
    r = run_cli("search", "--space", str(tiny_space), "--data", str(TRAIN), "--val", str(VAL),
                "-o", str(base), "--baseline", str(base))
    assert r.returncode == 2 and "is the --baseline this command reads" in r.stderr
    assert base.read_bytes() == (MODELS / "digits_cnn.onnx").read_bytes()
