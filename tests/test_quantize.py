"""Quantization library: modes and formats, known quantizer breakage, the accuracy fallback, auto mode."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt.core.errors import InvalidInputError, UnsupportedModelError
from onnxopt.core.model import op_histogram
from onnxopt.core.runtime import SessionConfig
from onnxopt.measure.benchmark import BenchConfig
from onnxopt.measure.fidelity import load_eval_data, run_batched
from onnxopt.quantization.api import quantize
from onnxopt.quantization.config import QuantizeConfig
from onnxopt.quantization.engine import quant_ops_in

FAST_BENCH = BenchConfig(session=SessionConfig(intra_op_threads=1, allow_spinning=False), warmup=1, runs=4)
FAST_AUTO: dict[str, Any] = {"quick_runs": 3, "final_runs": 4, "finalists": 1}


def _feed(model: onnx.ModelProto, n: int = 64, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    spec = model.graph.input[0].type.tensor_type.shape.dim
    shape = [n] + [d.dim_value for d in spec[1:]]
    return {"input": rng.standard_normal(shape).astype(np.float32)}


def _sensitive_mlp() -> onnx.ModelProto:
    """fc1 has huge weights on an input feature that is always 0: int8 scales wipe out its other weights."""
    rng = np.random.default_rng(1)
    w1 = (rng.standard_normal((16, 32)) * 0.3).astype(np.float32)
    w1[15, :] = 1000.0  # every output channel: per-channel scales cannot dodge it either
    w2 = (rng.standard_normal((32, 10)) * 0.3).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["input", "w1"], ["h"], name="fc1"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w2"], ["logits"], name="fc2"),
    ]
    g = helper.make_graph(
        nodes, "sensitive",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _sensitive_feed(n: int = 96) -> dict[str, np.ndarray]:
    x = np.random.default_rng(2).standard_normal((n, 16)).astype(np.float32)
    x[:, 15] = 0.0
    return {"input": x}


def test_dynamic_mlp_quantizes_and_keeps_input(mlp_model: onnx.ModelProto) -> None:
    before = mlp_model.SerializeToString()
    # at batch 1 the worst of these 64 noise samples is at cosine ~0.985 (the mean 0.9994)
    r = quantize(mlp_model, QuantizeConfig(mode="dynamic", min_cosine=0.98), calib=_feed(mlp_model))
    assert mlp_model.SerializeToString() == before  # the input is never modified
    assert r.quantized and r.meets_budget
    hist = op_histogram(r.model)
    assert "MatMulInteger" in hist or "com.microsoft.DynamicQuantizeMatMul" in hist
    quantized = r.report["nodes"]["quantized"]
    assert "fc2" in quantized and any(n.startswith("fc1") for n in quantized)  # MatMul+Add fused by onnxruntime
    assert r.report["fidelity"]["min_cosine"] >= 0.98
    assert r.report["size_after"] < r.report["size_before"]


@pytest.mark.parametrize(
    ("fmt", "act", "per_channel", "expect"),
    [("qdq", "int8", False, "QuantizeLinear"), ("qdq", "uint8", True, "QuantizeLinear"),
     ("qoperator", "uint8", False, "QLinearConv")],
)
def test_static_formats_convnet(convnet_model: onnx.ModelProto, fmt: str, act: str, per_channel: bool, expect: str) -> None:
    feed = _feed(convnet_model, 48)
    cfg = QuantizeConfig(mode="static", format=fmt, activation_type=act, per_channel=per_channel)
    r = quantize(convnet_model, cfg, calib=feed)
    assert r.quantized
    assert expect in op_histogram(r.model)
    assert {"conv1", "conv2"} <= set(r.report["nodes"]["quantized"])
    ref = run_batched(convnet_model, feed)[0]
    out = run_batched(r.model, feed)[0]
    cos = (ref * out).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(out, axis=1)
    assert cos.mean() > 0.98
    assert r.report["calibration"]["samples"] == 48


def test_digits_cnn_static_int8_accuracy_within_half_a_point(digits_cnn: Path, digits_val: Path, digits_calib: Path) -> None:
    model = onnx.load(str(digits_cnn))
    val = load_eval_data(model, digits_val)
    calib, _ = load_eval_data(model, digits_calib)
    cfg = QuantizeConfig(mode="static", activation_type="uint8", reduce_range=True, max_accuracy_drop=0.5)
    r = quantize(model, cfg, calib=calib, val=val)
    assert r.quantized and r.meets_budget
    assert quant_ops_in(r.model)
    # accuracy recomputed from the labels, not read from the tool's report
    feed, labels = val
    acc_float = 100.0 * float((run_batched(model, feed)[0].argmax(axis=1) == labels).mean())
    acc_int8 = 100.0 * float((run_batched(r.model, feed)[0].argmax(axis=1) == labels).mean())
    assert acc_float > 99.0
    assert acc_float - acc_int8 <= 0.5
    assert r.report["fidelity"]["accuracy_drop"] == pytest.approx(acc_float - acc_int8)


def test_fallback_returns_the_sensitive_node_to_float() -> None:
    model = _sensitive_mlp()
    feed = _sensitive_feed()
    plain = quantize(model, QuantizeConfig(mode="dynamic", min_cosine=0.0), calib=feed)  # the floor off
    assert plain.report["fidelity"]["min_cosine"] < 0.9  # the outlier really wrecks per-tensor int8
    assert plain.report["nodes"]["quantized"] == ["fc1", "fc2"]
    guarded = quantize(model, QuantizeConfig(mode="dynamic"), calib=feed)  # the default floor: 0.99
    assert guarded.meets_budget and guarded.report["fidelity"]["min_cosine"] >= 0.99
    assert guarded.report["nodes"]["quantized"] == ["fc2"]
    r = quantize(model, QuantizeConfig(mode="dynamic", min_cosine=0.99), calib=feed)
    assert r.meets_budget and r.quantized
    floats = {n["node"] for n in r.report["nodes"]["float"]}
    assert "fc1" in floats and r.report["nodes"]["quantized"] == ["fc2"]
    fb = r.report["fallback"]
    assert fb["sensitivity"][0]["node"] == "fc1"  # ranked most harmful
    assert r.report["fidelity"]["min_cosine"] >= 0.99


def test_budget_not_met_keeps_the_closest(convnet_model: onnx.ModelProto) -> None:
    feed = _feed(convnet_model, 32)
    r = quantize(convnet_model, QuantizeConfig(mode="static", min_cosine=1.0), calib=feed)
    assert not r.meets_budget
    assert r.quantized and quant_ops_in(r.model)
    fb = r.report["fallback"]
    # cosine 1.0 is out of reach even with every node in float: one bounding build, no per-node ranking
    assert fb["bound"]["meets_budget"] is False and "sensitivity" not in fb and not fb["steps"]
    assert "NOT met" in r.report["why"]


def test_weights_from_nodes_and_conv_without_bias_are_folded() -> None:
    rng = np.random.default_rng(0)
    wt = numpy_helper.from_array((rng.standard_normal((8, 16)) * 0.3).astype(np.float32), "w_t")
    cw = numpy_helper.from_array((rng.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32), "cw")
    nodes = [
        helper.make_node("Conv", ["input", "cw"], ["c"], name="conv_nobias", pads=[1, 1, 1, 1]),
        helper.make_node("Flatten", ["c"], ["f"], name="flat"),
        helper.make_node("Slice", ["f", "st", "en", "ax"], ["s"], name="slice"),
        helper.make_node("Transpose", ["w_t"], ["w"], name="transpose_w", perm=[1, 0]),  # weight from a node
        helper.make_node("MatMul", ["s", "w"], ["logits"], name="fc"),
    ]
    consts = [numpy_helper.from_array(np.array(v, np.int64), n) for v, n in (([0], "st"), ([16], "en"), ([1], "ax"))]
    g = helper.make_graph(
        nodes, "fromnodes",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 4, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 8])],
        [wt, cw, *consts],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    feed = {"input": rng.standard_normal((16, 3, 4, 4)).astype(np.float32)}
    for mode in ("dynamic", "static"):
        r = quantize(m, QuantizeConfig(mode=mode), calib=feed)
        assert "fc" in r.report["nodes"]["quantized"], mode
        assert "conv_nobias" in r.report["nodes"]["quantized"], mode
        assert r.report["fidelity"]["min_cosine"] > 0.98


def _if_model() -> onnx.ModelProto:
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((16, 16)).astype(np.float32), "w")
    then_g = helper.make_graph([helper.make_node("MatMul", ["input", "w"], ["y1"], name="mm_then")], "then", [],
                               [helper.make_tensor_value_info("y1", TensorProto.FLOAT, None)])
    else_g = helper.make_graph([helper.make_node("Relu", ["input"], ["y2"], name="relu_else")], "else", [],
                               [helper.make_tensor_value_info("y2", TensorProto.FLOAT, None)])
    nodes = [
        helper.make_node("ReduceSum", ["input"], ["s"], keepdims=0, name="sum"),
        helper.make_node("Greater", ["s", "zero"], ["cond"], name="gt"),
        helper.make_node("If", ["cond"], ["out"], then_branch=then_g, else_branch=else_g, name="if"),
    ]
    g = helper.make_graph(nodes, "ifm", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 16])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 16])],
                          [w, numpy_helper.from_array(np.array(-1e9, np.float32), "zero")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def test_ops_inside_if_subgraph_are_never_reported_as_quantized() -> None:
    m = _if_model()
    feed = {"input": np.random.default_rng(0).standard_normal((8, 16)).astype(np.float32)}
    for mode in ("dynamic", "static"):
        try:
            r = quantize(m, QuantizeConfig(mode=mode), calib=feed)
        except UnsupportedModelError as e:
            assert "nothing was quantized" in str(e) and "If" in str(e)
        else:  # if a future quantizer handles subgraphs, the int8 ops must really be there
            assert quant_ops_in(r.model) and r.quantized
    auto = quantize(m, QuantizeConfig(mode="auto", **FAST_AUTO), calib=feed, bench=FAST_BENCH)
    assert not auto.quantized and auto.report["winner"] in ("float", "input")
    assert all(c["status"] == "failed" for c in auto.report["candidates"] if c["name"] != "float")


def test_per_channel_qdq_on_opset_11_is_upgraded(convnet_model: onnx.ModelProto) -> None:
    m = onnx.ModelProto()
    m.CopyFrom(convnet_model)
    m.opset_import[0].version = 11
    onnx.checker.check_model(m)
    r = quantize(m, QuantizeConfig(mode="static", per_channel=True), calib=_feed(m, 16))
    assert r.quantized
    assert any("opset 13" in n for n in r.report["notes"])
    run_batched(r.model, _feed(m, 4))  # loads and runs


def test_bad_inputs(convnet_model: onnx.ModelProto, mlp_model: onnx.ModelProto, monkeypatch: pytest.MonkeyPatch) -> None:
    old = onnx.ModelProto()
    old.CopyFrom(mlp_model)
    old.opset_import[0].version = 9

    def no_converter(*_args: object) -> None:
        raise RuntimeError("no adapter")

    with monkeypatch.context() as mp:  # opset 9 is upgraded (tests/test_real_inputs.py) unless that fails
        mp.setattr(onnx.version_converter, "convert_version", no_converter)
        with pytest.raises(InvalidInputError, match="opset >= 10.*opset 9.*could not upgrade"):
            quantize(old, QuantizeConfig(mode="dynamic"))
    q = quantize(mlp_model, QuantizeConfig(mode="dynamic")).model
    with pytest.raises(InvalidInputError, match="already quantized.*--force"):
        quantize(q, QuantizeConfig(mode="dynamic"))
    with pytest.raises(InvalidInputError, match="calibration data"):
        quantize(convnet_model, QuantizeConfig(mode="static"))
    with pytest.raises(InvalidInputError, match="labels"):
        quantize(convnet_model, QuantizeConfig(mode="dynamic", max_accuracy_drop=1.0))
    with pytest.raises(InvalidInputError, match="expected shape"):
        quantize(convnet_model, QuantizeConfig(mode="static"),
                 calib={"input": np.zeros((4, 3, 8, 8), np.float32)})
    with pytest.raises(InvalidInputError, match="uint8 weights"):
        QuantizeConfig(mode="static", activation_type="int8", weight_type="uint8")
    with pytest.raises(InvalidInputError, match="--min-cosine"):
        QuantizeConfig(min_cosine=1.5)


def test_auto_latency_never_returns_a_slower_model(convnet_model: onnx.ModelProto) -> None:
    feed = _feed(convnet_model, 32)
    r = quantize(convnet_model, QuantizeConfig(**FAST_AUTO), calib=feed, bench=FAST_BENCH)
    rep = r.report
    names = [c["name"] for c in rep["candidates"]]
    assert "float" in names and any(n.startswith("static") for n in names) and any(n.startswith("dynamic") for n in names)
    for c in rep["candidates"]:
        if c["status"] == "ok":
            assert "quick" in c and c["size"] > 0 and "min_cosine" in c["fidelity"]
    assert rep["winner"] in names + ["input"]
    if rep["winner"] != "input":
        assert rep["latency"]["high"] <= 1.02
    assert r.quantized == (rep["winner"] not in ("float", "input"))
    assert rep["why"]
    assert rep["fidelity"]["min_cosine"] >= 0.99


def test_auto_size_objective_picks_the_smallest_within_budget(digits_cnn: Path, digits_val: Path) -> None:
    model = onnx.load(str(digits_cnn))
    val = load_eval_data(model, digits_val)
    cfg = QuantizeConfig(objective="size", max_accuracy_drop=0.5, **FAST_AUTO)
    r = quantize(model, cfg, val=val, bench=FAST_BENCH)  # no calibration data: dynamic candidates only
    assert r.quantized and r.meets_budget
    rep = r.report
    ok = [c for c in rep["candidates"] if c["status"] == "ok" and c.get("meets_budget") and c["name"] != "float"]
    assert ok and all(c["name"].startswith("dynamic") for c in ok)
    assert rep["size_after"] == min(c["size"] for c in ok)
    assert rep["size_ratio"] < 0.35
    assert rep["fidelity"]["accuracy_drop"] <= 0.5
    assert "ratio" in rep["latency"]
    assert any("static candidates skipped" in n for n in rep["notes"])


def test_candidate_refused_by_onnxruntime_is_retried_on_the_folded_model(tmp_path: Path, mlp_model: onnx.ModelProto) -> None:
    from onnxopt.quantization.engine import Candidate, Prepared, prepare
    from onnxopt.quantization.evaluate import Evaluator
    from onnxopt.quantization.session import QuantSession

    notes: list[str] = []
    good = prepare(mlp_model, tmp_path, notes)[-1]
    broken = onnx.ModelProto()
    broken.CopyFrom(good.model)
    relu = next(n for n in broken.graph.node if n.op_type == "Relu")
    relu.attribute.append(helper.make_attribute("not_an_attribute", 1))  # onnxruntime: INVALID_GRAPH
    bad_path = tmp_path / "broken.onnx"
    onnx.save(broken, str(bad_path))
    feed = _feed(mlp_model, 16)
    ev = Evaluator(mlp_model, feed, None, "test")
    sess = QuantSession(mlp_model, [Prepared("preprocessed", bad_path, broken), good], None, ev, tmp_path, notes)
    built = sess.build(Candidate("dynamic"))
    assert built.variant == "folded"
    assert any("retried on the folded model" in n for n in built.notes)
    assert built.fidelity.min_cosine > 0.99


def test_unknown_op_is_left_in_float_with_a_reason() -> None:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array((rng.standard_normal((16, 16)) * 0.3).astype(np.float32), "w")
    e = numpy_helper.from_array((rng.standard_normal((16, 8)) * 0.3).astype(np.float32), "e")
    nodes = [
        helper.make_node("MatMul", ["input", "w"], ["h"], name="fc"),
        helper.make_node("Einsum", ["h", "e"], ["logits"], name="einsum", equation="bi,ij->bj"),
    ]
    g = helper.make_graph(nodes, "einsum", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 16])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 8])], [w, e])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    r = quantize(m, QuantizeConfig(mode="dynamic"), calib={"input": rng.standard_normal((8, 16)).astype(np.float32)})
    assert r.report["nodes"]["quantized"] == ["fc"]
    (left,) = r.report["nodes"]["float"]
    assert left["node"] == "einsum" and "does not support Einsum" in left["reason"]


def test_fixed_batch_model_takes_many_samples(convnet_model: onnx.ModelProto) -> None:
    m = onnx.ModelProto()
    m.CopyFrom(convnet_model)
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    m.graph.output[0].type.tensor_type.shape.dim[0].dim_value = 1
    feed = _feed(convnet_model, 12)
    r = quantize(m, QuantizeConfig(mode="static"), calib=feed)
    assert r.quantized and r.report["calibration"]["samples"] == 12
    assert r.report["fidelity"]["samples"] == 12 and r.report["fidelity"]["min_cosine"] > 0.98


def test_auto_size_runs_the_fallback_on_a_sensitive_model() -> None:
    feed = _sensitive_feed()
    cfg = QuantizeConfig(objective="size", min_cosine=0.97, **FAST_AUTO)  # int4 fc2: worst sample ~0.98
    r = quantize(_sensitive_mlp(), cfg, calib=feed, bench=FAST_BENCH)
    assert r.meets_budget and r.quantized
    assert "fc1" in {n["node"] for n in r.report["nodes"]["float"]}
    assert any("fallback" in c for c in r.report["candidates"])


def _bench_result(name: str, samples: list[float]) -> Any:
    from onnxopt.measure.benchmark import BenchResult, LatencyStats

    return BenchResult(name, None, 1, tuple(samples), LatencyStats.from_samples(samples), 0.0, None)


def test_auto_keeps_int8_only_when_clearly_faster_than_float() -> None:
    from onnxopt.measure.stats import latency_ratio
    from onnxopt.quantization.auto import _clearly_faster
    from onnxopt.quantization.config import INT8_MARGIN

    base = list(1.0 + 0.002 * np.random.default_rng(3).standard_normal(400))
    for factor, expect in ((0.99, "float"), (0.90, "q")):  # 1% faster is inside the margin: float is kept
        by_name = {"input": _bench_result("input", base), "float": _bench_result("float", base),
                   "q": _bench_result("q", [x * factor for x in base])}
        final = {n: latency_ratio(by_name[n], by_name["input"]) for n in ("float", "q")}
        vs_float = {n: latency_ratio(by_name[n], by_name["float"]) for n in ("float", "q")}
        notes: list[str] = []
        extra: dict[str, Any] = {}
        assert _clearly_faster("q", vs_float, final, True, extra, notes) == expect
        assert extra["winner_vs_float"]["high"] < 1.0  # significantly faster in both cases
        assert bool(notes) == (expect == "float") and all(f"<= {INT8_MARGIN}" in n for n in notes)


def test_fallback_tries_all_float_but_one() -> None:
    from onnxopt.quantization.fallback import _steps

    assert _steps(1) == [] and _steps(2) == [1] and _steps(5) == [1, 2, 3, 4]
    assert _steps(49)[-1] == 48 and _steps(49)[:5] == [1, 2, 3, 4, 6]


def test_budget_argument_overrides_the_config_and_repairs() -> None:
    from onnxopt.quantization.evaluate import Budget

    feed = _sensitive_feed()
    plain = quantize(_sensitive_mlp(), QuantizeConfig(mode="dynamic", min_cosine=0.0), val=(feed, None))
    assert plain.report["fidelity"]["min_cosine"] < 0.99 and "fallback" not in plain.report
    r = quantize(_sensitive_mlp(), QuantizeConfig(mode="dynamic"), val=(feed, None), budget=Budget(min_cosine=0.99))
    assert r.meets_budget and r.report["fidelity"]["min_cosine"] >= 0.99
    assert r.report["quantizer"]["exclude_nodes"] == ["fc1"] and r.report["budget"] == "cosine >= 0.99"


def test_auto_reports_the_quantizer_it_built_or_its_runner_up(convnet_model: onnx.ModelProto) -> None:
    feed = _feed(convnet_model, 32)
    r = quantize(convnet_model, QuantizeConfig(**FAST_AUTO), calib=feed, bench=FAST_BENCH)
    rep = r.report
    if r.quantized:
        assert rep["quantizer"]["name"] == rep["winner"] and rep["built_from"] in ("preprocessed", "folded")
        assert r.runner_up is None
    elif "runner_up" in rep:  # float won: the fastest int8 finalist is handed back for callers to show
        assert r.runner_up is not None and quant_ops_in(r.runner_up)
        assert rep["runner_up"]["quantizer"]["name"] == rep["runner_up"]["name"] != rep["winner"]


def test_evaluator_subset_of_a_fixed_batch_model_with_time_major_output() -> None:
    """A CRNN-like model (batch fixed at 1, output [time, 1, classes]): run sample by sample, its
    outputs concatenate to time * samples rows; a subset must take whole samples' rows (a real
    CRNN failed with 'reference shape (16, 1, C) differs from candidate shape (384, 1, C)')."""
    from onnxopt.quantization.evaluate import Evaluator

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Transpose", ["x"], ["t"], perm=[2, 0, 1]), helper.make_node("MatMul", ["t", "w"], ["y"])],
        "crnn_like",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4, "width"])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["time", 1, 8])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    feed = {"x": np.random.default_rng(1).standard_normal((6, 4, 5)).astype(np.float32)}
    ev = Evaluator(model, feed, None, "test")
    sub = ev.subset(2)
    rep = sub.score(model)
    assert rep.samples == 2 and rep.min_cosine > 0.999999
    q = quantize(model, QuantizeConfig(mode="dynamic", min_cosine=0.999999), calib=feed)  # forces the fallback
    assert q.report["fallback"]["needed"]
