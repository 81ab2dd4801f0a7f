"""The case study (`make case-study`): its choice of the kept model, its data, its cost model, its reproducibility."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxopt.core.errors import InvalidInputError
from onnxopt.nas.cost import FEATURES, CostModel, calibrate, model_features

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def _load(name: str):
    """An examples/ module by file name (examples/ is not a package)."""
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------- the choice


def test_choice_keeps_the_best_feasible_model_and_flags_a_worse_stage() -> None:
    sel = _load("case_study_select")
    C = sel.Candidate
    teacher = C("teacher", "1", 90.0, 2.0, 3_000_000)
    cands = [
        C("labels", "2", 85.0, 0.30, 100_000),  # 5 points below: not feasible
        C("distilled", "2", 89.5, 0.30, 100_000, parent="labels"),  # feasible
        C("search", "3", 89.8, 0.25, 80_000, parent="distilled"),  # better on all three
        C("pruned", "4", 88.5, 0.20, 60_000, parent="search"),  # faster and smaller, within 2 points
        C("pruned-more", "4", 86.0, 0.15, 40_000, parent="search"),  # too inaccurate
        C("int8", "5", 88.0, 0.40, 20_000, parent="pruned"),  # slower than 5x? 2.0/0.4 = 5x exactly: feasible
        C("worse", "5", 88.0, 0.22, 60_000, parent="pruned"),  # dominated by its parent
    ]
    t = sel.Targets(min_smaller=20, min_faster=5, max_drop=2)
    best, ok = sel.choose(cands, teacher, t, "latency")
    assert ok and best.name == "pruned"  # the fastest feasible one
    best, ok = sel.choose(cands, teacher, t, "size")
    assert ok and best.name == "int8"  # the smallest feasible one
    # recomputed: the kept model meets every target against the teacher
    assert teacher.size_bytes / best.size_bytes >= 20 and teacher.latency_ms / best.latency_ms >= 5
    assert teacher.accuracy - best.accuracy <= 2
    front = sel.pareto(cands)
    assert "distilled" not in front and "worse" not in front  # dominated by search / by pruned
    assert {"search", "pruned", "pruned-more", "int8"} <= set(front)
    verdicts = sel.stage_verdicts(cands)
    assert verdicts["distilled"] == "improved"  # more accurate at the same cost
    assert verdicts["search"] == "improved"
    assert verdicts["worse"].startswith("worse: dominated by pruned")
    assert "labels" not in verdicts  # no parent
    # a stage that only repeats its input is not an improvement either
    same = [C("a", "1", 80.0, 0.2, 10), C("b", "2", 80.0, 0.2, 10, parent="a")]
    assert sel.stage_verdicts(same)["b"].startswith("worse")


def test_choice_without_a_feasible_model_keeps_the_most_accurate_fast_small_one() -> None:
    sel = _load("case_study_select")
    C = sel.Candidate
    teacher = C("teacher", "1", 95.0, 2.0, 3_000_000)
    cands = [C("big", "2", 94.9, 1.0, 2_000_000), C("small", "2", 90.0, 0.3, 100_000),
             C("smaller", "3", 89.0, 0.2, 50_000)]
    best, ok = sel.choose(cands, teacher, sel.Targets(), "latency")
    assert not ok and best.name == "small"  # 'big' misses size and speed; 'small' is the most accurate of the rest
    with pytest.raises(ValueError):
        sel.choose(cands, teacher, sel.Targets(), "energy")
    with pytest.raises(ValueError):
        sel.choose([], teacher, sel.Targets(), "latency")


def test_stage_lines_say_which_stage_paid() -> None:
    rep = _load("case_study_report")

    def row(model: str, stage: str, parent: str | None = None, verdict: str = "") -> dict:
        return {"model": model, "stage": stage, "parent": parent, "verdict": verdict}

    rows = [row("teacher", "1. teacher"), row("labels", "2. student"),
            row("distilled", "2. distillation", "labels", "improved"),
            row("search", "3. search", "distilled", "worse: dominated by distilled"),
            row("pruned", "4. pruning", "distilled", "trade-off")]
    lines = rep.stage_lines({"rows": rows, "final": "pruned"})
    assert len(lines) == 4  # one per stage after the teacher
    paid = {ln.split(":")[0][2:]: "**paid**" in ln for ln in lines}
    # the kept model's lineage: pruned <- distilled <- labels; the search is off it
    assert paid == {"2. student": False, "2. distillation": True, "3. search": False, "4. pruning": True}
    assert "the control" in lines[0]  # the labels-only student has no input to improve on
    assert "worse: dominated by distilled" in next(ln for ln in lines if ln.startswith("- 3. search"))


# ---------------------------------------------------------------- the data


def test_hard_digits_are_seeded_disjoint_and_hard() -> None:
    hd = _load("hard_digits")
    a = hd.hard_digits(3, size=16, copies={"fit": 1, "select": 1, "test": 2})
    b = hd.hard_digits(3, size=16, copies={"fit": 1, "select": 1, "test": 2})
    c = hd.hard_digits(4, size=16, copies={"fit": 1, "select": 1, "test": 2})
    for k in hd.SPLITS:
        assert np.array_equal(a[k][0], b[k][0]) and np.array_equal(a[k][1], b[k][1])
        assert a[k][0].shape[1:] == (1, 16, 16) and a[k][0].dtype == np.float32
        assert a[k][0].min() >= 0.0 and a[k][0].max() <= 1.0
        assert set(np.unique(a[k][1])) == set(range(10))
    assert not np.array_equal(a["fit"][0], c["fit"][0])
    assert len(a["test"][1]) == 2 * len(hd.source_splits(3)["test"][1])  # two draws per test image
    # the source images of the three splits are disjoint (up to digits' own duplicate images)
    src = hd.source_splits(3)
    keys = {k: {hashlib.sha1(x.tobytes()).hexdigest() for x in v[0]} for k, v in src.items()}
    assert len(keys["fit"] & keys["test"]) <= 5 and len(keys["select"] & keys["test"]) <= 5
    assert sum(len(v[1]) for v in src.values()) == 1797
    # two draws of the same test image differ (the distortion is random per draw)
    n = len(src["test"][1])
    order_free = sorted(np.abs(a["test"][0][:n] - a["test"][0][n:]).reshape(n, -1).max(axis=1))
    assert order_free[n // 2] > 0.1


# ---------------------------------------------------------------- the cost model


def _conv_model(width: int, hidden: int) -> onnx.ModelProto:
    rng = np.random.default_rng(width)
    w = rng.standard_normal((width, 1, 3, 3)).astype(np.float32)
    g = rng.standard_normal((width * 64, hidden)).astype(np.float32)
    return onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
         onnx.helper.make_node("Relu", ["c"], ["r"]),
         onnx.helper.make_node("Flatten", ["r"], ["f"]),
         onnx.helper.make_node("MatMul", ["f", "g"], ["y"])],
        "toy", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 1, 8, 8])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [onnx.numpy_helper.from_array(w, "w"), onnx.numpy_helper.from_array(g, "g")]),
        opset_imports=[onnx.helper.make_opsetid("", 17)])


def test_cost_model_features_fit_and_roundtrip(tmp_path: Path) -> None:
    m = _conv_model(4, 10)
    f = model_features(m)
    assert f["conv_macs"] == 4 * 64 * 9 and f["gemm_macs"] == 4 * 64 * 10 and f["nodes"] == 4
    assert f["elementwise"] == 2 * 4 * 64  # Relu and Flatten outputs
    assert model_features(m, batch=3)["conv_macs"] == 3 * f["conv_macs"]
    models = [_conv_model(w, h) for w in (2, 4, 8, 16) for h in (5, 20)]
    truth = {"conv_macs": 2e-6, "depthwise_macs": 0.0, "gemm_macs": 5e-6, "elementwise": 1e-6, "nodes": 0.01}
    lat = [0.05 + sum(truth[k] * model_features(x)[k] for k in FEATURES) for x in models]
    cm = calibrate(models, lat, cpu="toy")
    assert cm.fit["max_rel_error"] < 1e-6  # an exact linear law is recovered
    assert all(v >= 0 for v in cm.coef.values())
    assert cm.predict(models[3]) == pytest.approx(lat[3], rel=1e-6)
    path = cm.save(tmp_path / "cost.json")
    again = CostModel.load(path)
    assert again.predict(models[5]) == cm.predict(models[5])  # deterministic, survives the round trip
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(InvalidInputError, match="recalibrate"):
        CostModel.load(tmp_path / "bad.json")
    with pytest.raises(InvalidInputError, match="at least"):
        calibrate(models[:2], lat[:2])
    # a feature with a negative pull is dropped (coefficient 0), never negative
    neg = calibrate(models, [max(1e-3, t - 3e-6 * model_features(x)["elementwise"]) for t, x in zip(lat, models)])
    assert all(v >= 0 for v in neg.coef.values())


# ---------------------------------------------------------------- reproducibility on a toy


@pytest.mark.torch
def test_search_with_the_cost_model_is_reproducible(tmp_path: Path) -> None:
    """The same seed gives the same candidates, metrics and model bytes (the latency term is predicted)."""
    pytest.importorskip("torch")
    hd = _load("hard_digits")
    from onnxopt.nas.engine import Objective, SearchConfig, search
    from onnxopt.nas.evaluate import EvalConfig, TorchEvaluator
    from onnxopt.nas.space import space_from_dict

    data = hd.hard_digits(0, size=16, copies={"fit": 1, "select": 1, "test": 1})
    fit = (data["fit"][0][:96], data["fit"][1][:96])
    sel = (data["select"][0][:64], data["select"][1][:64])
    space = space_from_dict({"genes": {"depth": {"type": "int", "low": 1, "high": 2},
                                       "width": {"type": "choice", "options": [4, 8]},
                                       "head": {"type": "choice", "options": ["flatten", "gap"]}}}, "toy")
    cm_path = tmp_path / "cost.json"
    CostModel(coef=dict.fromkeys(FEATURES, 1e-6) | {"nodes": 0.01}, intercept_ms=0.05).save(cm_path)

    def once(out: Path) -> tuple[list[dict], str]:
        ev = TorchEvaluator(fit, sel, EvalConfig(epochs=1, seed=5, latency_model=str(cm_path)), workdir=out)
        cfg = SearchConfig(population=2, generations=2, elite=1, seed=5, pareto=True,
                           objectives=(Objective("accuracy"), Objective("latency_ms", maximize=False)))
        res = search(space, ev, cfg)
        best = max(res.front, key=lambda r: (r.value("accuracy"), -r.value("latency_ms")))
        digest = hashlib.sha256(Path(best.metrics["model_path"]).read_bytes()).hexdigest()
        return [{k: v for k, v in r.to_dict().items() if k not in ("seconds",)} | {
            "metrics": {k: v for k, v in r.metrics.items() if k not in ("train_s", "model_path")}}
            for r in res.records], digest

    a, ha = once(tmp_path / "a")
    b, hb = once(tmp_path / "b")
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    assert ha == hb
    # the latency term is the cost model's prediction of the saved model, recomputed here
    cm = CostModel.load(cm_path)
    for r in a:
        assert r["metrics"]["latency_ms"] == pytest.approx(
            cm.predict(onnx.load(tmp_path / "a" / f"{_genome_id(r['genome'])}.onnx")))


def _genome_id(genome: dict) -> str:
    from onnxopt.nas.evaluate import genome_id

    return genome_id(genome)


# ---------------------------------------------------------------- the whole script, tiny budgets


@pytest.mark.torch
@pytest.mark.slow
def test_case_study_quick(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("matplotlib")
    from onnxopt.core.model import load_model
    from onnxopt.measure.fidelity import run_batched

    cs = _load("case_study")
    out = tmp_path / "cs"
    readme = tmp_path / "README.md"
    rep = _load("case_study_report")
    readme.write_text(f"# x\n\n{rep.BEGIN}\nstale-table-placeholder\n{rep.END}\n\nafter\n")
    assert cs.main(["--out", str(out), "--quick", "--seed", "0", "--readme", str(readme)]) == 0

    results = json.loads((out / "results.json").read_text())
    rows = results["rows"]
    assert rows[0]["stage"] == "1. teacher"
    stages = {r["stage"] for r in rows}
    assert {"2. distillation", "3. search", "4. pruning"} <= stages
    finals = [r for r in rows if r["final"]]
    assert len(finals) == 1 and finals[0]["model"] == results["final"]
    # the kept model is final.onnx, and its hash is the one reported
    final_bytes = load_model(out / "final.onnx").SerializeToString(deterministic=True)
    assert hashlib.sha256(final_bytes).hexdigest() == results["final_sha256"]
    # each row's test accuracy is its saved model's, recomputed from the labels
    x, y = cs.load_data(cs.QUICK, 0)["test"]
    for r in rows:
        pred = run_batched(load_model(out / r["file"]), {"input": x})[0].argmax(axis=1)
        assert r["test_accuracy"] == pytest.approx(100.0 * float((pred == y).mean()), abs=1e-9), r["model"]
        lo, hi = r["speedup_ci"]
        assert lo <= r["speedup"] <= hi and r["p50_ms"] > 0
    assert set(results["targets"]) == {"smaller_20x", "faster_5x", "within_2_points"}
    text = readme.read_text()
    assert "stale-table-placeholder" not in text and "after" in text and results["final"] in text
    assert (out / "report.html").read_text().count("data:image/png;base64,") == 2


def test_finetune_module_exports_back_to_the_same_ops_and_outputs() -> None:
    """The fine-tuning replay of a HardSwish CNN exports back node for node (HardSigmoid stays one
    node, Gemm stays Gemm: a slower pruned model otherwise) with the same outputs."""
    torch = pytest.importorskip("torch")
    import io

    import onnxruntime as ort

    finetune = _load("case_study_finetune")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Hardswish(), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 6 * 6, 3)).eval()
    x = torch.randn(2, 1, 8, 8)

    def export(module: object) -> onnx.ModelProto:
        buf = io.BytesIO()
        torch.onnx.export(module, (x,), buf, dynamo=False, opset_version=13, input_names=["x"])
        return onnx.load_from_string(buf.getvalue())

    source = export(net)
    replayed = export(finetune.onnx_module(source))
    assert [n.op_type for n in replayed.graph.node] == [n.op_type for n in source.graph.node]
    outs = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})[0]
            for m in (source, replayed)]
    np.testing.assert_allclose(outs[1], outs[0], rtol=1e-5, atol=1e-6)
