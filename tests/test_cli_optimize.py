"""`onnxopt optimize` end to end: table, reports, gates and exit codes, bad input, input untouched."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

from onnxopt.cli import cli, main

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--bench-runs", "5", "--bench-seconds", "0.1"]


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def run_main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main(args)
    out = capsys.readouterr()
    return int(e.value.code or 0), out.out, out.err


@pytest.fixture
def graph_recipe(tmp_path: Path) -> Path:
    p = tmp_path / "graph.toml"
    p.write_text('[[passes]]\nname = "optimize_graph"\n')
    return p


def test_digits_default_recipe_with_reports(tmp_path: Path, digits_cnn: Path, digits_val: Path, digits_calib: Path) -> None:
    before = sha(digits_cnn)
    out = tmp_path / "d.opt.onnx"
    reports = {k: tmp_path / f"r.{k}" for k in ("json", "md", "html")}
    args = ["optimize", str(digits_cnn), "-o", str(out), "--data", str(digits_val), "--calib-data", str(digits_calib)]
    args += ["--report-json", str(reports["json"]), "--report-md", str(reports["md"]), "--report-html", str(reports["html"])]
    r = CliRunner().invoke(cli, args + FAST + ["--min-cosine", "0.9"])
    assert r.exit_code == 0, r.output
    assert "quantized (int8 static)" in r.output and "original" in r.output
    assert sha(digits_cnn) == before
    assert out.exists() and onnx.load(str(out)).graph.node
    d = json.loads(reports["json"].read_text())
    q = next(s for s in d["stages"] if s["name"].startswith("quantized"))
    # The int8 candidate is shown (kept or not) and stays within 0.5 accuracy points of fp32.
    assert abs(q["fidelity"]["accuracy_drop"]) <= 0.5
    assert "| stage |" in reports["md"].read_text()
    assert "data:image/png;base64," in reports["html"].read_text()


def test_show_recipe_prints_loadable_toml(digits_cnn: Path) -> None:
    r = CliRunner().invoke(cli, ["optimize", str(digits_cnn), "--show-recipe"])
    assert r.exit_code == 0, r.output
    data = tomllib.loads(r.output)
    assert [p["name"] for p in data["passes"]] == ["optimize_graph", "quantize"]


def test_gate_failure_exits_3_and_marks_output(
    tmp_path: Path, convnet_path: Path, graph_recipe: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "o.onnx"
    code, stdout, err = run_main(
        ["optimize", str(convnet_path), "-o", str(out), "--recipe", str(graph_recipe), "--min-speedup", "1000", *FAST],
        capsys,
    )
    assert code == 3
    last = err.strip().splitlines()[-1]  # progress lines come before the one error line
    assert last.startswith("onnxopt: error: gate failed: min_speedup") and "marked" in last
    assert sum(line.startswith("onnxopt: error") for line in err.splitlines()) == 1
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert "min_speedup" in meta["onnxopt.gate_failed"]


def test_no_output_on_fail(tmp_path: Path, convnet_path: Path, graph_recipe: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "o.onnx"
    code, _, err = run_main(
        ["optimize", str(convnet_path), "-o", str(out), "--recipe", str(graph_recipe), "--max-size-mb", "0.0001",
         "--no-output-on-fail", *FAST],
        capsys,
    )
    assert code == 3 and "max_size_mb" in err and "not written" in err
    assert not out.exists()


def test_passing_gates_exit_0_default_output(convnet_path: Path, graph_recipe: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = sha(convnet_path)
    code, stdout, _ = run_main(
        ["optimize", str(convnet_path), "--recipe", str(graph_recipe), "--min-cosine", "0.999", "--max-size-mb", "10", "--json", *FAST],
        capsys,
    )
    assert code == 0
    d = json.loads(stdout)
    assert d["gates_passed"] and d["output"] == str(convnet_path.with_name("convnet.opt.onnx"))
    assert convnet_path.with_name("convnet.opt.onnx").exists()
    assert sha(convnet_path) == before


def test_accuracy_gate_without_data_is_a_usage_error(convnet_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(["optimize", str(convnet_path), "--max-accuracy-drop", "1"], capsys)
    assert code == 2 and "labelled data" in err


@pytest.mark.parametrize(
    ("recipe", "needle"),
    [
        ('[[passes]]\nname = "shrink"\n', "unknown pass 'shrink'; valid passes:"),
        ('[[passes]]\nname = "optimize_graph"\nlvl = 1\n', "has no option 'lvl'; valid options: level"),
        ('[[passes]\nname = "x"\n', "not valid TOML"),
    ],
)
def test_bad_recipe_one_line_exit_1(
    tmp_path: Path, convnet_path: Path, recipe: str, needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    p = tmp_path / "r.toml"
    p.write_text(recipe)
    out = tmp_path / "o.onnx"
    code, _, err = run_main(["optimize", str(convnet_path), "-o", str(out), "--recipe", str(p)], capsys)
    assert code == 1 and needle in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_output_equal_to_input_is_refused(convnet_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = sha(convnet_path)
    code, _, err = run_main(["optimize", str(convnet_path), "-o", str(convnet_path)], capsys)
    assert code == 2 and "input model" in err
    assert sha(convnet_path) == before


def test_real_subprocess_gate_failure(tmp_path: Path, convnet_path: Path, graph_recipe: Path) -> None:
    out = tmp_path / "o.onnx"
    r = subprocess.run(
        [sys.executable, "-m", "onnxopt", "optimize", str(convnet_path), "-o", str(out), "--recipe",
         str(graph_recipe), "--max-latency-ms", "0.000001", "--report-md", str(tmp_path / "s.md"), *FAST],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert r.returncode == 3, r.stderr
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("onnxopt: error: gate failed: max_latency_ms")
    assert "graph-optimized" in r.stdout and "GATE FAILED" in r.stdout
    assert out.exists() and (tmp_path / "s.md").exists()


def test_decisions_file_recorded_then_replayed_byte_identical(
    tmp_path: Path, digits_cnn: Path, digits_val: Path, digits_calib: Path
) -> None:
    decisions = tmp_path / "model.decisions.json"

    def args(out: Path) -> list[str]:
        return ["optimize", str(digits_cnn), "-o", str(out), "--data", str(digits_val), "--calib-data",
                str(digits_calib), "--decisions", str(decisions), *FAST]

    first = CliRunner().invoke(cli, args(tmp_path / "a.onnx"))
    assert first.exit_code == 0, first.output
    assert f"recorded the decisions in {decisions}" in first.output and decisions.exists()
    assert "benchmarking" in first.output  # progress lines are part of the output
    report = tmp_path / "r.json"
    second = CliRunner().invoke(cli, args(tmp_path / "b.onnx") + ["--report-json", str(report)])
    assert second.exit_code == 0, second.output
    assert "replayed the decisions" in second.output and "benchmarking" not in second.output
    assert sha(tmp_path / "a.onnx") == sha(tmp_path / "b.onnx")
    d = json.loads(report.read_text())
    assert d["replayed"] is True and d["decisions"] == json.loads(decisions.read_text())


def test_damaged_decisions_file_is_one_line_exit_1(
    tmp_path: Path, convnet_path: Path, graph_recipe: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "d.json"
    bad.write_text('{"version": 1}')
    out = tmp_path / "o.onnx"
    code, _, err = run_main(["optimize", str(convnet_path), "-o", str(out), "--recipe", str(graph_recipe),
                             "--decisions", str(bad), *FAST], capsys)
    assert code == 1 and "not an onnxopt decisions file" in err and "delete it" in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()
