"""Smoke test of examples/case_study.py (`make case-study`) with tiny budgets."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "case_study.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("case_study", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["case_study"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.torch
@pytest.mark.keras
def test_case_study_smoke(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("keras")
    pytest.importorskip("tf2onnx")
    pytest.importorskip("matplotlib")
    import onnx

    from onnxopt.core.model import load_model
    from onnxopt.measure.fidelity import run_batched

    cs = _load_script()
    out = tmp_path / "cs"
    assert cs.main(["--out", str(out), "--smoke", "--seed", "0"]) == 0

    results = json.loads((out / "results.json").read_text())
    names = [r["model"] for r in results["rows"]]
    assert names[0].startswith("1. teacher")
    assert any("Keras, distilled" in n for n in names)
    assert any("PyTorch, distilled from ONNX" in n for n in names)
    assert any(n.startswith("4. search best") for n in names)
    # every pass of the recipe that changed the model is a row, ending with int8
    assert [n for n in names if n.startswith("5.")][-1].startswith("5. + quantized")
    assert results["final"] in names and results["final"].endswith("= final")
    # each row's accuracy is the saved model's, recomputed here from the test split's labels
    x, y = cs.load_data(0)["test"]
    stage_files = sorted(out.glob("final_*_*.onnx"), key=lambda p: int(p.name.split("_")[1]))
    files = [out / f for f in ("teacher.onnx", "student_keras_labels_only.onnx", "student_keras.onnx",
                                "student_torch.onnx", "search_best.onnx")] + stage_files
    assert len(files) == len(results["rows"])
    for f, r in zip(files, results["rows"]):
        pred = run_batched(load_model(f), {"input": x})[0].argmax(axis=1)
        assert r["accuracy"] == pytest.approx(100.0 * float((pred == y).mean()), abs=1e-9), (f.name, r["model"])
        assert r["p50_ms"] > 0 and r["file_size"] > 0 and r["params"] > 0
        lo, hi = r["speedup_ci"]
        assert lo <= r["speedup"] <= hi
    assert set(results["targets"]) == {"smaller_20x", "faster_5x", "within_2_points"}
    assert results["smoke"] is True
    # the search evaluated population x generations distinct genomes, all successfully
    records = results["search"]["records"]
    assert len(records) == 2 and all(r["error"] is None for r in records)
    assert len({json.dumps(r["genome"], sort_keys=True) for r in records}) == 2
    # the conversion of the teacher passed the parity check
    assert results["distill"]["keras"]["parity"]["passed"]

    teacher = load_model(out / "teacher.onnx")
    final = load_model(out / "final.onnx")
    onnx.checker.check_model(final)
    int8 = load_model(next(out.glob("final_*_quantize.onnx")))
    ops = {n.op_type for n in int8.graph.node}
    assert ops & {"QuantizeLinear", "QLinearConv", "ConvInteger"}, ops  # the int8 stage is saved
    assert (out / "final.onnx").stat().st_size < (out / "teacher.onnx").stat().st_size
    # the final model answers for the 32x32 inputs like the teacher does (shape and batch)
    x = np.random.default_rng(0).random((3, 1, 32, 32), dtype=np.float32)
    assert run_batched(final, {"input": x})[0].shape == (3, 10)
    assert run_batched(teacher, {"input": x})[0].shape == (3, 10)
    for name in ("student_keras.onnx", "student_keras_labels_only.onnx", "student_torch.onnx",
                 "search_best.onnx", "search/checkpoint.json"):
        assert (out / name).is_file(), name

    assert "<table>" in (out / "optimize.html").read_text()
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3
    assert "Pareto front" in page


def test_case_study_splits_are_seeded_and_disjoint() -> None:
    """The data loader is pure: the same seed gives the same splits, disjoint fit/select."""
    cs = _load_script()
    a = cs.load_data(0)
    b = cs.load_data(0)
    for k in ("fit", "select", "test"):
        assert np.array_equal(a[k][0], b[k][0]) and np.array_equal(a[k][1], b[k][1])
        assert a[k][0].shape[1:] == (1, 32, 32)
    fit = {hashlib.sha1(r.tobytes()).hexdigest() for r in a["fit"][0]}
    sel = {hashlib.sha1(r.tobytes()).hexdigest() for r in a["select"][0]}
    assert len(a["fit"][1]) + len(a["select"][1]) == 1437
    # digits has a few duplicate images; the split is by sample, so overlap is at most those
    assert len(fit & sel) <= 5
    assert set(np.unique(a["select"][1])) == set(range(10))
