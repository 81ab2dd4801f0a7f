"""optimize(): stages verified and benchmarked, measured candidates kept only when faster, gates, saving."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import ModelProto, helper, numpy_helper

from onnxopt.core.errors import InvalidInputError
from onnxopt.core.model import load_model
from onnxopt.measure.benchmark import BenchResult, LatencyStats
from onnxopt.measure.fidelity import load_eval_data
from onnxopt.optimization.decide import check_gates, decide_stages, never_slower
from onnxopt.optimization.recipe import parse_recipe
from onnxopt.optimization.run import default_output, default_recipe, optimize, save_result
from onnxopt.optimization.types import GATE_FAILED_KEY, RECIPE_KEY, Gates, OptimizeConfig, Stage

FAST = {"bench_runs": 5, "bench_seconds": 0.1, "warmup": 1}
GRAPH = parse_recipe('[[passes]]\nname = "optimize_graph"\n')
PRUNE = parse_recipe(
    '[[passes]]\nname = "optimize_graph"\n[[passes]]\nname = "prune_magnitude"\nsparsity = 0.6\nmin_elements = 16\n'
)
STATIC = parse_recipe(
    '[[passes]]\nname = "optimize_graph"\n[[passes]]\nname = "quantize"\nmode = "static"\nper_channel = true\n'
)


def cfg(**kw: object) -> OptimizeConfig:
    return OptimizeConfig(**{**FAST, **kw})  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def digits() -> tuple[ModelProto, tuple[dict[str, np.ndarray], np.ndarray | None], dict[str, np.ndarray]]:
    root = Path(__file__).resolve().parents[1] / "models"
    m = load_model(root / "digits_cnn.onnx")
    val = load_eval_data(m, root / "digits_val.npz")
    calib, _ = load_eval_data(m, root / "digits_calib.npz")
    return m, val, calib


def test_stages_are_verified_and_benchmarked(convnet_model: ModelProto) -> None:
    before = convnet_model.SerializeToString()
    r = optimize(convnet_model, GRAPH, cfg())
    assert [s.name for s in r.stages] == ["original", "graph-optimized"]
    assert r.final == "graph-optimized"
    s = r.stages[1]
    assert s.fidelity.min_cosine > 0.99999 and s.fidelity.max_abs < 1e-4
    assert s.bench is not None and r.stages[0].bench is not None and s.ratio is not None
    assert s.ratio.low <= s.ratio.ratio <= s.ratio.high
    assert r.gates == () and r.gates_passed
    assert {"passes", "verify", "benchmark", "total"} <= set(r.timings)
    assert convnet_model.SerializeToString() == before
    assert any(p.key == RECIPE_KEY for p in r.model.metadata_props)
    assert "synthetic" in r.data


def test_default_recipe_per_family(convnet_model: ModelProto, mlp_model: ModelProto) -> None:
    conv = default_recipe(convnet_model)
    assert [p.name for p in conv.passes] == ["optimize_graph", "quantize"]
    assert conv.passes[1].options == {"mode": "auto", "per_channel": True}
    assert "conv" in conv.description
    mlp = default_recipe(mlp_model)
    assert mlp.passes[1].options == {"mode": "auto"} and "dense" in mlp.description
    lstm = _lstm_model()
    assert "sequence" in default_recipe(lstm).description


def _lstm_model() -> ModelProto:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((1, 32, 8)).astype(np.float32), "W")
    r = numpy_helper.from_array(rng.standard_normal((1, 32, 8)).astype(np.float32), "R")
    node = helper.make_node("LSTM", ["x", "W", "R"], ["y"], hidden_size=8)
    g = helper.make_graph(
        [node], "lstm", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [5, 1, 8])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], [w, r],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_accuracy_gate_needs_labels(convnet_model: ModelProto) -> None:
    with pytest.raises(InvalidInputError, match="needs labelled data"):
        optimize(convnet_model, GRAPH, cfg(gates=Gates(max_accuracy_drop=1.0)))


def test_gates_pass_and_fail_on_a_lossy_stage(digits: tuple) -> None:
    model, val, _ = digits
    loose = Gates(max_accuracy_drop=100, min_cosine=-1, min_speedup=0, max_size_mb=10, max_latency_ms=1e6)
    r = optimize(model, PRUNE, cfg(gates=loose), val=val)
    assert r.gates_passed and len(r.gates) == 5
    final = r.final_stage
    assert final.name == "magnitude-pruned" and final.fidelity.accuracy_drop is not None
    tight = Gates(max_accuracy_drop=0.0, min_cosine=0.99999, min_speedup=50, max_size_mb=0.001, max_latency_ms=1e-6)
    failed = check_gates(tight, final, r.stages[0], r.model.ByteSize())
    assert {g.gate for g in failed if not g.passed} == {
        "min_cosine", "min_speedup", "max_size_mb", "max_latency_ms"
    } | ({"max_accuracy_drop"} if final.fidelity.accuracy_drop > 0 else set())
    assert any("min_speedup" in g.describe() and "<" in g.describe() for g in failed)


def test_gate_failure_marks_or_skips_the_output(tmp_path: Path, convnet_model: ModelProto) -> None:
    r = optimize(convnet_model, GRAPH, cfg(gates=Gates(min_speedup=1000.0)))
    assert not r.gates_passed and r.failed_gates[0].gate == "min_speedup"
    out = save_result(r, tmp_path / "m.onnx")
    assert out is not None
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert "min_speedup" in meta[GATE_FAILED_KEY]
    assert save_result(r, tmp_path / "n.onnx", write_on_gate_failure=False) is None
    assert not (tmp_path / "n.onnx").exists()


def test_same_recipe_and_seed_give_identical_bytes(tmp_path: Path, digits: tuple) -> None:
    model, val, calib = digits
    hashes = []
    for i in range(2):
        r = optimize(model, STATIC, cfg(benchmark=False), val=val, calib=calib)
        assert r.final.startswith("quantized")
        out = save_result(r, tmp_path / f"run{i}.onnx")
        assert out is not None
        hashes.append(hashlib.sha256(out.read_bytes()).hexdigest())
    assert hashes[0] == hashes[1]
    q = r.final_stage
    assert q.fidelity.accuracy_drop is not None and abs(q.fidelity.accuracy_drop) <= 0.5
    assert q.size_bytes < 0.35 * r.stages[0].size_bytes


def _bench(name: str, samples: list[float]) -> BenchResult:
    return BenchResult(name, None, 1, tuple(samples), LatencyStats.from_samples(samples), 0.0, None)


def _stage(name: str, samples: list[float], *, pass_name: str | None, measured: bool = False) -> Stage:
    m = ModelProto()
    return Stage(
        name, pass_name, {}, pass_name is not None, m, 1, 0.0, {"keep_if_faster": measured},
        bench=_bench(name, samples),
    )


def test_slower_measured_candidate_is_rejected_with_a_warning() -> None:
    rng = np.random.default_rng(0)
    base = list(1.0 + 0.01 * rng.standard_normal(200))
    stages = [
        _stage("original", base, pass_name=None),
        _stage("graph-optimized", [x * 0.99 for x in base], pass_name="optimize_graph"),
        _stage("quantized", [x * 1.3 for x in base], pass_name="quantize", measured=True),
    ]
    out, warnings = decide_stages(stages, (), cfg())
    assert [s.kept for s in out] == [True, True, False]
    assert len(warnings) == 1 and warnings[0].startswith("int8 is slower on this CPU")
    assert warnings[0].endswith("kept the float model (graph-optimized)")
    faster = [*stages[:2], _stage("quantized", [x * 0.5 for x in base], pass_name="quantize", measured=True)]
    out, warnings = decide_stages(faster, (), cfg())
    assert all(s.kept for s in out) and warnings == []
    assert out[2].ratio is not None and out[2].ratio.speedup == pytest.approx(2.0, rel=0.01)


def test_never_slower_guard_falls_back_to_the_input() -> None:
    rng = np.random.default_rng(1)
    base = list(1.0 + 0.01 * rng.standard_normal(200))
    stages = [
        _stage("original", base, pass_name=None),
        _stage("channel-pruned", [x * 1.2 for x in base], pass_name="prune_channels"),
    ]
    decided, _ = decide_stages(stages, (), cfg())
    assert decided[1].kept  # an explicit pass is kept by decide_stages ...
    out, warnings = never_slower(decided)
    assert not out[1].kept and "not measurably faster" in out[1].note  # ... but not past the guard
    assert warnings and warnings[0].endswith("kept the original model instead")
    fine = [stages[0], _stage("channel-pruned", [x * 0.7 for x in base], pass_name="prune_channels")]
    out, warnings = never_slower(decide_stages(fine, (), cfg())[0])
    assert out[1].kept and warnings == []


def test_default_output_is_beside_the_input() -> None:
    assert default_output(Path("a/b/model.onnx")) == Path("a/b/model.opt.onnx")
    assert default_output(Path("m")) == Path("m.opt.onnx")


@pytest.mark.parametrize(
    ("cls", "kw", "needle"),
    [
        (OptimizeConfig, {"objective": "speed"}, "--objective"),
        (OptimizeConfig, {"bench_runs": 1}, "--bench-runs"),
        (Gates, {"min_cosine": 2.0}, "--min-cosine"),
        (Gates, {"max_size_mb": -1.0}, "--max-size-mb"),
    ],
)
def test_config_validation(cls: type, kw: dict, needle: str) -> None:
    with pytest.raises(InvalidInputError, match=needle):
        cls(**kw)


def test_postprocessed_stages_are_verified_against_postprocessed_input(digits: tuple) -> None:
    model, val, _ = digits
    recipe = parse_recipe(
        '[[passes]]\nname = "add_postprocessing"\nsteps = ["softmax", "argmax"]\n'
        '[[passes]]\nname = "prune_magnitude"\nsparsity = 0.5\nmin_elements = 16\n'
    )
    r = optimize(model, recipe, cfg(), val=val)
    post, pruned = r.stages[1], r.stages[2]
    assert post.name == "post-processed" and post.fidelity.max_abs == 0.0
    assert post.fidelity.accuracy_drop == 0.0 and post.fidelity.accuracy_candidate > 95
    assert pruned.fidelity.accuracy_reference == post.fidelity.accuracy_reference
    assert r.model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.INT64


def test_conv_net_without_calibration_skips_int8_with_a_warning(convnet_model: ModelProto) -> None:
    r = optimize(convnet_model, None, cfg())
    q = next(s for s in r.stages if s.pass_name == "quantize")
    assert not q.modified and "calib" in q.note
    assert any(w.startswith("int8 quantization skipped") for w in r.warnings)
    assert r.final in ("graph-optimized", "original")
