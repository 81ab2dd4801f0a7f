"""Reports of an optimize() run: JSON parses, Markdown has the table, HTML embeds PNG plots."""

from __future__ import annotations

import base64
import dataclasses
import json
import re
import sys
from pathlib import Path

import pytest

from onnxopt.core.errors import MissingExtraError
from onnxopt.optimization import report
from onnxopt.optimization.recipe import parse_recipe
from onnxopt.optimization.run import optimize
from onnxopt.optimization.types import Gates, OptimizeConfig, OptimizeResult

from .conftest import make_convnet

RECIPE = parse_recipe('[[passes]]\nname = "fold_constants"\n[[passes]]\nname = "optimize_graph"\n')


@pytest.fixture(scope="module")
def result() -> OptimizeResult:
    cfg = OptimizeConfig(
        bench_runs=5, bench_seconds=0.1, warmup=1, gates=Gates(min_cosine=0.99, min_speedup=1000.0)
    )
    r = optimize(make_convnet(), RECIPE, cfg)
    return dataclasses.replace(r, warnings=("int8 is slower on this CPU: quantized (int8 static) takes 1.20x; kept the float model (original)",))


def test_json_parses_and_has_every_stage(result: OptimizeResult, tmp_path: Path) -> None:
    p = report.write_text(tmp_path / "r.json", report.to_json(result))
    d = json.loads(p.read_text())
    assert [s["name"] for s in d["stages"]] == ["original", "constants-folded", "graph-optimized"]
    assert d["gates_passed"] is False
    assert {g["gate"]: g["passed"] for g in d["gates"]} == {"min_cosine": True, "min_speedup": False}
    assert len(d["stages"][0]["latency"]["samples_ms"]) >= 5
    assert d["timings_s"]["total"] > 0


def test_markdown_has_the_table_gates_and_warning(result: OptimizeResult) -> None:
    md = report.to_markdown(result)
    lines = md.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| stage |"))
    assert lines[header + 1].startswith("|---|")
    rows = [line for line in lines[header + 2 :] if line.startswith("| ")]
    assert [r.split("|")[1].strip() for r in rows] == ["original", "constants-folded", "graph-optimized"]
    assert all(r.count("|") == len(report.COLUMNS) + 1 for r in rows)
    assert "❌ min_speedup" in md and "✅ min_cosine" in md
    assert "> **Warning:** int8 is slower on this CPU" in md


def test_html_is_self_contained_with_png_plots(result: OptimizeResult, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    html = report.to_html(result)
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", html)
    assert len(images) == 2
    for img in images:
        assert base64.b64decode(img)[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<table>" in html and "graph-optimized" in html and "int8 is slower on this CPU" in html
    assert "http://" not in html and "https://" not in html  # nothing fetched from the network


def test_html_without_matplotlib_names_the_extra(result: OptimizeResult, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(MissingExtraError, match=r"onnxopt\[report\]"):
        report.to_html(result)


def test_headline_lists_warnings_and_failed_gates(result: OptimizeResult) -> None:
    lines = report.headline(result)
    assert lines[0].startswith("WARNING: int8 is slower")
    assert any(line.startswith("GATE FAILED: min_speedup") for line in lines)
    rows = report.stage_rows(result)
    assert rows[0]["speedup [95% CI]"] == "1.00x" and rows[-1]["kept"] == "final"
