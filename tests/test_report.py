"""Reports of an optimize() run: JSON parses, Markdown has the table, HTML embeds PNG plots; all carry provenance."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import html as html_lib
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from onnxopt.cli import cli
from onnxopt.core.errors import MissingExtraError
from onnxopt.optimization import report
from onnxopt.optimization.recipe import parse_recipe
from onnxopt.optimization.run import optimize
from onnxopt.optimization.types import Gates, OptimizeConfig, OptimizeResult

from .conftest import ROOT, make_convnet

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
    end = next(i for i in range(header, len(lines)) if not lines[i].startswith("|"))  # the stage table
    rows = [line for line in lines[header + 2 : end] if line.startswith("| ")]
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


# ------------------------------------------------------------------ provenance


def _readme_keys(section: str) -> list[str]:
    """The backticked first-column keys of the table right after `section` in the README."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index(section)
    rows = []
    for line in text[start:].splitlines()[1:]:
        if line.startswith("|"):
            rows.append(line)
        elif rows:
            break
    return [m.group(1) for r in rows[2:] if (m := re.match(r"\|\s*`([^`]+)`", r))]


@pytest.fixture(scope="module")
def cli_reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """`onnxopt optimize` on the bundled digits model, writing all three reports."""
    tmp = tmp_path_factory.mktemp("reports")
    model = ROOT / "models" / "digits_cnn.onnx"
    paths = {k: tmp / f"r.{k}" for k in ("json", "md", "html")}
    args = ["optimize", str(model), "-o", str(tmp / "out.onnx"), "--data", str(ROOT / "models" / "digits_val.npz"),
            "--calib-data", str(ROOT / "models" / "digits_calib.npz"), "--bench-runs", "5", "--bench-seconds", "0.1",
            "--threads", "1", "--report-json", str(paths["json"]), "--report-md", str(paths["md"]),
            "--report-html", str(paths["html"])]
    r = CliRunner().invoke(cli, args, prog_name="onnxopt")
    assert r.exit_code == 0, r.output
    return {"model": model, "paths": paths, "json": json.loads(paths["json"].read_text())}


def test_json_report_has_the_documented_keys(cli_reports: dict[str, Any]) -> None:
    d = cli_reports["json"]
    documented = _readme_keys("#### JSON report")
    assert "provenance" in documented and "output" in documented
    assert set(d) == set(documented) - {"output"}  # `output`: only in `--json` on stdout
    assert set(d["provenance"]) == set(_readme_keys("#### The `provenance` object"))


def test_json_report_provenance_values(cli_reports: dict[str, Any]) -> None:
    import numpy
    import onnx
    import onnxruntime

    import onnxopt
    from onnxopt.core.cpu import detect_cpu
    from onnxopt.core.provenance import cpu_model_name

    prov, model = cli_reports["json"]["provenance"], cli_reports["model"]
    assert prov["model"] == {
        "name": "digits_cnn.onnx",
        "path": str(model),
        "sha256": hashlib.sha256(model.read_bytes()).hexdigest(),
        "size_bytes": os.path.getsize(model),
    }
    m = prov["machine"]
    assert m["cpu_model"] == cpu_model_name() and m["cpu_model"]
    assert m["isa"] == detect_cpu().to_dict() and "avx2" in m["isa"] and "vnni" in m["isa"]
    assert m["threads"] == 1  # --threads 1, as the stages were timed
    assert m["threads"] == cli_reports["json"]["stages"][0]["latency"]["threads"]
    assert m["logical_cpus"] == os.cpu_count() and m["physical_cores"] >= 1
    assert prov["versions"] == {
        "onnxopt": onnxopt.__version__, "onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__,
        "numpy": numpy.__version__, "python": platform.python_version(),
    }
    assert prov["timed_shapes"] == {"input": [1, 1, 8, 8]} and prov["batch"] == 1
    date = datetime.fromisoformat(prov["date_utc"])
    assert date.utcoffset() == timedelta(0)
    assert abs(datetime.now(UTC) - date) < timedelta(hours=1)
    inv = shlex.split(prov["invocation"])
    assert inv[:3] == ["onnxopt", "optimize", str(model)]
    assert inv[inv.index("--report-json") + 1] == str(cli_reports["paths"]["json"])
    assert inv[inv.index("--threads") + 1] == "1"


def test_markdown_and_html_reports_show_provenance(cli_reports: dict[str, Any]) -> None:
    digest = cli_reports["json"]["provenance"]["model"]["sha256"]
    md = cli_reports["paths"]["md"].read_text()
    html = cli_reports["paths"]["html"].read_text()
    versions = cli_reports["json"]["provenance"]["versions"]
    for text in (md, html):
        assert digest in text and "digits_cnn.onnx" in text
        assert f"onnxruntime {versions['onnxruntime']}" in text and "input 1x1x8x8 (batch 1)" in text
        assert cli_reports["json"]["provenance"]["date_utc"] in text
        assert "onnxopt optimize" in text
    assert f"| sha256 | `{digest}` |" in md


def test_api_reports_name_the_api_call(result: OptimizeResult) -> None:
    d = json.loads(report.to_json(result, samples=False))
    prov = d["provenance"]
    assert prov["invocation"].startswith("onnxopt.optimize(model, ")
    assert "OptimizeConfig(" in prov["invocation"]
    serialized = result.stages[0].model.SerializeToString()
    assert prov["model"]["path"] is None and prov["model"]["size_bytes"] == len(serialized)
    assert prov["model"]["sha256"] == hashlib.sha256(serialized).hexdigest()
    assert prov["timed_shapes"] == {"input": [1, 3, 16, 16]}  # synthesized at batch 1


def test_provenance_helpers() -> None:
    from onnxopt.core.feeds import synthesize_feed
    from onnxopt.core.provenance import cpu_model_name, timed_shapes

    assert cpu_model_name("processor\t: 0\nmodel name\t: Example CPU @ 3.0GHz\nflags\t: avx2\n") == "Example CPU @ 3.0GHz"
    assert cpu_model_name("Hardware\t: BCM2835\n") == "BCM2835"
    model = make_convnet()
    feed = synthesize_feed(model, batch=7, overrides={"input": (7, 3, 16, 16)})
    assert timed_shapes(model, feed) == {"input": (1, 3, 16, 16)}
    fixed = make_convnet()
    fixed.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 4  # static batch: the model's shape
    assert timed_shapes(fixed, feed) == {"input": (4, 3, 16, 16)}


CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium") or "") if p and os.path.exists(p)), None)

# Appended to a copy of the report: after the page loaded, write what the browser saw into the DOM.
_PROBE = """<script>
window.addEventListener('load', () => {
  const table = document.querySelector('table');
  const rows = [...table.querySelectorAll('tr')].filter(r => r.querySelector('td'))
    .map(r => r.querySelector('td').textContent);
  const imgs = [...document.images].map(i => ({complete: i.complete, w: i.naturalWidth, h: i.naturalHeight}));
  const out = document.createElement('pre');
  out.id = 'probe';
  out.textContent = JSON.stringify({rows, imgs});
  document.body.appendChild(out);
});
</script>"""


def test_html_report_renders_in_headless_chromium(cli_reports: dict[str, Any], tmp_path: Path) -> None:
    if CHROMIUM is None:
        pytest.skip("headless Chromium not found at /usr/bin/chromium (apt-get install chromium): HTML not rendered")
    page = tmp_path / "probe.html"
    page.write_text(cli_reports["paths"]["html"].read_text().replace("</body>", _PROBE + "</body>"))
    r = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    match = re.search(r'<pre id="probe">(.*?)</pre>', r.stdout, re.S)
    assert match, f"Chromium exited {r.returncode} without running the probe: {r.stderr[-2000:]}"
    seen = json.loads(html_lib.unescape(match.group(1)))
    stages = [s["name"] for s in cli_reports["json"]["stages"]]
    assert seen["rows"] == stages  # one table row per stage, in order
    assert len(seen["imgs"]) == 2
    assert all(i["complete"] and i["w"] > 0 and i["h"] > 0 for i in seen["imgs"]), seen["imgs"]
