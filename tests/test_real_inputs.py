"""Real third-party model shapes go through (issue 14, items 3 and 4).

Scalar and non-batched inputs fed as they are, fixed batch + symbolic width timed on the real
samples, symbolic image height/width at 640, --batch/--shape, opset-9 upgrade with a parity
check, Constant-node weights pruned and quantized, subgraph ops reported, NHWC and int32 inputs.
Every model is built in code (tests/real_models.py); outputs are recomputed with numpy.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt.cli import main
from onnxopt.core.errors import InvalidInputError
from onnxopt.core.feeds import (
    add_batch_axis,
    batches,
    concat_feeds,
    feed_samples,
    first_batch,
    synthesize_feed,
)
from onnxopt.core.model import batch_axes, fixed_batch, sort_nodes
from onnxopt.core.runtime import create_session
from onnxopt.measure.benchmark import BenchConfig, benchmark, timing_feed
from onnxopt.measure.fidelity import compare_models, load_eval_data, run_batched
from onnxopt.optimization.recipe import PassSpec, Recipe
from onnxopt.optimization.run import optimize
from onnxopt.optimization.types import OptimizeConfig
from onnxopt.passes.graph import constants_to_initializers
from onnxopt.pruning.channels.prune import ChannelConfig, prune_channels
from onnxopt.pruning.magnitude import MagnitudeConfig, prune_magnitude
from onnxopt.quantization.api import quantize
from onnxopt.quantization.calibration import from_feed, open_calibration
from onnxopt.quantization.config import QuantizeConfig
from onnxopt.quantization.engine import OpsetUpgradeError
from tests.real_models import (
    VAD_STATE,
    VAD_WIDTH,
    constant_values,
    constant_weights_oracle,
    make_byte_classifier,
    make_constant_weights,
    make_crnn,
    make_detector,
    make_nhwc_opset9,
    make_vad,
    vad_oracle,
)

ROOT = Path(__file__).resolve().parents[1]
FAST = {"bench_runs": 2, "bench_seconds": 0.05, "warmup": 1}
GRAPH_ONLY = Recipe((PassSpec("optimize_graph", {}),), description="graph only")


def _run(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    return list(create_session(model, custom_ops=False).run(None, feed))


def _inputs_only(*inputs: onnx.ValueInfoProto) -> onnx.ModelProto:
    """A model that only declares inputs: enough for shapes and synthesis."""
    return helper.make_model(helper.make_graph([], "spec", list(inputs), []))


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(a.shape[0], -1).astype(np.float64), b.reshape(b.shape[0], -1).astype(np.float64)
    return float(np.min(np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


@pytest.fixture
def vad_files(tmp_path: Path) -> tuple[Path, Path, dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    data = {
        "input": rng.standard_normal((6, VAD_WIDTH)).astype(np.float32),
        "state": rng.standard_normal((2, 1, VAD_STATE)).astype(np.float32),
        "sr": np.array(16000, np.int64),
    }
    model, npz = tmp_path / "vad.onnx", tmp_path / "vad.npz"
    onnx.save(make_vad(), str(model))
    np.savez(npz, **data)
    return model, npz, data


# ---------------------------------------------------------------- batch axes and synthesis


def test_batch_axes_of_real_shapes() -> None:
    assert batch_axes(make_vad()) == {"input": 0, "state": None, "sr": None}
    assert fixed_batch(make_vad()) is None  # state's leading 2 is not a batch
    assert batch_axes(make_crnn()) == {"x": 0} and fixed_batch(make_crnn()) == 1
    v = helper.make_tensor_value_info
    lstm = _inputs_only(v("x", TensorProto.FLOAT, ["batch", 20, 8]), v("h0", TensorProto.FLOAT, [2, "batch", 64]))
    assert batch_axes(lstm) == {"x": 0, "h0": 1}
    assert synthesize_feed(lstm, batch=3)["h0"].shape == (2, 3, 64)
    every_fixed = _inputs_only(v("input", TensorProto.FLOAT, [1, 512]), v("state", TensorProto.FLOAT, [2, 1, 128]),
                               v("sr", TensorProto.INT64, []))
    assert batch_axes(every_fixed) == {"input": 0, "state": None, "sr": None} and fixed_batch(every_fixed) == 1


def test_synthesis_keeps_scalars_states_dtypes_and_uses_deployment_sizes() -> None:
    feed = synthesize_feed(make_vad(), batch=3)
    assert {k: (v.shape, v.dtype) for k, v in feed.items()} == {
        "input": ((3, VAD_WIDTH), np.float32), "state": ((2, 1, VAD_STATE), np.float32), "sr": ((), np.int64)}
    assert synthesize_feed(make_detector())["images"].shape == (1, 3, 640, 640)
    assert synthesize_feed(make_detector(batch="N"), batch=2)["images"].shape == (2, 3, 640, 640)
    assert synthesize_feed(make_crnn(), batch=4)["x"].shape == (1, 3, 8, 640)  # the batch is fixed at 1
    v = helper.make_tensor_value_info
    nhwc = _inputs_only(v("img", TensorProto.FLOAT, ["n", "unk__1", "unk__2", 3]))
    assert synthesize_feed(nhwc, batch=2)["img"].shape == (2, 640, 640, 3)
    assert synthesize_feed(make_nhwc_opset9(), batch=2)["input"].shape == (2, 16, 16, 3)
    ids = synthesize_feed(make_byte_classifier(), batch=5)["bytes"]
    assert ids.shape == (5, 64) and ids.dtype == np.int32 and ids.min() >= 0 and ids.max() < 100
    tokens = _inputs_only(v("ids", TensorProto.INT64, ["batch", "seq_len"]), v("mask", TensorProto.INT64, ["batch", "unk__7"]))
    assert {k: a.shape for k, a in synthesize_feed(tokens).items()} == {"ids": (1, 128), "mask": (1, 128)}
    odd = _inputs_only(v("feats", TensorProto.FLOAT, ["batch", 10, "k"]))
    with pytest.raises(InvalidInputError) as e:
        synthesize_feed(odd)
    assert len(str(e.value).splitlines()) == 1 and "--shape feats=N,10,N" in str(e.value)
    assert synthesize_feed(odd, overrides={"feats": (2, 10, 7)})["feats"].shape == (2, 10, 7)


def test_feed_helpers_split_only_batched_arrays() -> None:
    axes = batch_axes(make_vad())
    rng = np.random.default_rng(0)
    feed = {"input": rng.standard_normal((5, VAD_WIDTH)).astype(np.float32),
            "state": np.ones((2, 1, VAD_STATE), np.float32), "sr": np.array(8000, np.int64)}
    assert feed_samples(feed, axes) == 5
    parts = list(batches(feed, 2, axes))
    assert [p["input"].shape[0] for p in parts] == [2, 2, 1]
    assert all(p["state"].shape == (2, 1, VAD_STATE) and p["sr"].shape == () for p in parts)
    joined = concat_feeds(parts, axes)
    assert np.array_equal(joined["input"], feed["input"]) and joined["state"].shape == (2, 1, VAD_STATE)
    assert first_batch(feed, 1, axes)["state"].shape == (2, 1, VAD_STATE)
    one = add_batch_axis(make_vad(), {"input": feed["input"][0], "state": feed["state"], "sr": feed["sr"]})
    assert one["input"].shape == (1, VAD_WIDTH) and one["state"].shape == (2, 1, VAD_STATE) and one["sr"].ndim == 0


# ---------------------------------------------------------------- scalar + state model everywhere


def test_vad_runs_batched_and_compares_against_numpy() -> None:
    model = make_vad()
    rng = np.random.default_rng(2)
    feed = {"input": rng.standard_normal((7, VAD_WIDTH)).astype(np.float32),
            "state": rng.standard_normal((2, 1, VAD_STATE)).astype(np.float32), "sr": np.array(16000, np.int64)}
    out = run_batched(model, feed, batch_size=3)  # three runs; state and sr go whole into each
    want, _ = vad_oracle(model, feed["input"], feed["state"], 16000)
    np.testing.assert_allclose(out[0], want, rtol=1e-5, atol=1e-6)
    low, _ = vad_oracle(model, feed["input"], feed["state"], 8000)
    assert not np.allclose(low, want)  # the If really switches: the test could tell them apart
    rep = compare_models(model, model, feed)
    assert rep.samples == 7 and rep.min_cosine == pytest.approx(1.0)


def test_vad_calibration_readers(tmp_path: Path) -> None:
    model = make_vad()
    rng = np.random.default_rng(3)
    feed = {"input": rng.standard_normal((5, VAD_WIDTH)).astype(np.float32),
            "state": rng.standard_normal((2, 1, VAD_STATE)).astype(np.float32), "sr": np.array(16000, np.int64)}
    src = from_feed(model, feed, batch_size=2)
    got = list(src.batches())
    assert [b["input"].shape[0] for b in got] == [2, 2, 1]
    assert all(b["sr"].shape == () and b["state"].shape == (2, 1, VAD_STATE) for b in got)
    assert np.array_equal(src.head(4)["input"], feed["input"][:4])
    folder = tmp_path / "calib"
    folder.mkdir()
    for i in range(3):  # one sample per file, one rank short of the input: a batch axis is added
        np.savez(folder / f"{i}.npz", input=feed["input"][i], state=feed["state"], sr=feed["sr"])
    files = open_calibration(model, folder, batch_size=2)
    assert [b["input"].shape for b in files.batches()] == [(2, VAD_WIDTH), (1, VAD_WIDTH)]
    r = quantize(model, QuantizeConfig(mode="static"), calib=src)
    assert r.quantized
    want, _ = vad_oracle(model, feed["input"], feed["state"], 16000)
    assert _cos(run_batched(r.model, feed)[0], want) > 0.99


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "onnxopt", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)


def test_vad_through_every_command_of_the_cli(tmp_path: Path, vad_files: tuple[Path, Path, dict[str, np.ndarray]]) -> None:
    model, npz, data = vad_files
    q, o = tmp_path / "vad.q.onnx", tmp_path / "vad.opt.onnx"
    runs = [
        ("bench", _cli("bench", str(model), "--data", str(npz), "--runs", "3", "--warmup", "1", "--json")),
        ("quantize", _cli("quantize", str(model), "-o", str(q), "--mode", "dynamic", "--data", str(npz),
                          "--runs", "3", "--json")),
        ("optimize", _cli("optimize", str(model), "-o", str(o), "--data", str(npz), "--bench-runs", "2",
                          "--bench-seconds", "0.05", "--json")),
    ]
    runs.append(("compare", _cli("compare", str(model), str(q), "--data", str(npz), "--runs", "3", "--json")))
    for name, r in runs:
        assert r.returncode == 0 and "Traceback" not in r.stderr, f"{name}: {r.stderr}"
    docs: dict[str, Any] = {name: json.loads(r.stdout) for name, r in runs}
    assert docs["bench"]["results"][0]["stats"]["n"] == 3
    want, state_want = vad_oracle(make_vad(), data["input"], data["state"], 16000)
    for path in (q, o):
        got = run_batched(onnx.load(str(path)), data)
        assert _cos(got[0], want) > 0.99
        np.testing.assert_allclose(got[1], state_want, rtol=1e-5, atol=1e-6)
    assert docs["quantize"]["timed_shapes"] == {"input": [1, VAD_WIDTH], "state": [2, 1, VAD_STATE], "sr": []}
    assert docs["optimize"]["timed_shapes"] == {"input": [1, VAD_WIDTH], "state": [2, 1, VAD_STATE], "sr": []}
    assert docs["optimize"]["provenance"]["timed_shapes"] == docs["optimize"]["timed_shapes"]
    assert docs["compare"]["fidelity"]["samples"] == 6 and docs["compare"]["fidelity"]["min_cosine"] > 0.99


# ---------------------------------------------------------------- deployment shapes


def test_fixed_batch_symbolic_width_is_timed_on_the_real_samples(tmp_path: Path) -> None:
    model = make_crnn()
    npz = tmp_path / "lines.npz"
    np.savez(npz, x=np.random.default_rng(4).standard_normal((5, 3, 8, 40)).astype(np.float32))
    val = load_eval_data(model, npz)
    r = optimize(model, GRAPH_ONLY, OptimizeConfig(**FAST), val=val)
    assert dict(r.timed_shapes) == {"x": (1, 3, 8, 40)}  # one real sample, never a tiny width
    assert r.data == "5 samples from --data"  # verification runs them all, one at a time:
    assert run_batched(model, val[0])[0].shape == (5, 40, 5)
    assert all(s.bench.batch == 1 for s in r.stages if s.bench is not None)
    synth = optimize(model, GRAPH_ONLY, OptimizeConfig(**FAST))
    assert dict(synth.timed_shapes) == {"x": (1, 3, 8, 640)}
    shaped = optimize(model, GRAPH_ONLY, OptimizeConfig(**FAST, shape_overrides={"x": (1, 3, 8, 96)}))
    assert dict(shaped.timed_shapes) == {"x": (1, 3, 8, 96)}
    with pytest.raises(InvalidInputError, match="fixed batch of 1"):
        optimize(model, GRAPH_ONLY, OptimizeConfig(**FAST, batch=4), val=val)


def test_batch_option_times_that_batch() -> None:
    model = make_detector(batch="N")
    r = optimize(model, GRAPH_ONLY, OptimizeConfig(**FAST, batch=2, shape_overrides={"images": (2, 3, 32, 48)}))
    assert dict(r.timed_shapes) == {"images": (2, 3, 32, 48)}
    assert r.stages[0].bench.batch == 2
    data = {"images": np.zeros((5, 3, 16, 16), np.float32)}
    assert timing_feed(model, data, batch=3)["images"].shape == (3, 3, 16, 16)
    with pytest.raises(InvalidInputError, match="fewer than --batch 8"):
        timing_feed(model, data, batch=8)


def test_detector_symbolic_height_width_run_at_640(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    res = benchmark([make_detector()], BenchConfig(runs=2, warmup=0))  # tiny sides used to break Concat
    assert res[0].stats.n == 2
    path = tmp_path / "det.onnx"
    onnx.save(make_detector(batch="N"), str(path))
    out = tmp_path / "det.q.onnx"
    with pytest.raises(SystemExit) as e:
        main(["quantize", str(path), "-o", str(out), "--mode", "dynamic", "--shape", "images=1,3,64,32",
              "--runs", "2", "--json"])
    assert e.value.code in (0, None)
    doc = json.loads(capsys.readouterr().out)
    assert doc["timed_shapes"] == {"images": [1, 3, 64, 32]}
    m = make_byte_classifier()
    m.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "k"  # rank 2 axis 1 is a sequence: 128
    assert synthesize_feed(m)["bytes"].shape == (1, 128)


def test_missing_default_is_one_line_asking_for_shape(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("feats", TensorProto.FLOAT, ["batch", 4, "k"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4, "k"])
    m = helper.make_model(helper.make_graph([helper.make_node("Relu", ["feats"], ["y"])], "g", [x], [y]),
                          opset_imports=[helper.make_opsetid("", 17)])
    p = tmp_path / "m.onnx"
    onnx.save(m, str(p))
    for args in (["bench", str(p)], ["optimize", str(p), "-o", str(tmp_path / "o.onnx")]):
        r = _cli(*args)
        assert r.returncode == 1 and "Traceback" not in r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "--shape feats=N,4,N" in lines[0], r.stderr
    assert _cli("bench", str(p), "--shape", "feats=1,4,9", "--runs", "2").returncode == 0


# ---------------------------------------------------------------- old opsets


def test_opset9_is_upgraded_with_a_parity_check() -> None:
    model = make_nhwc_opset9()
    r = quantize(model, QuantizeConfig(mode="dynamic"))
    assert r.quantized
    notes = [n for n in r.report["notes"] if "upgraded opset 9 -> 13" in n]
    assert len(notes) == 1 and "outputs match the original" in notes[0]
    x = np.random.default_rng(5).standard_normal((4, 16, 16, 3)).astype(np.float32)
    assert _cos(_run(r.model, {"input": x})[0], _run(model, {"input": x})[0]) > 0.99


def test_opset_upgrade_that_changes_outputs_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    real = onnx.version_converter.convert_version

    def wrong(model: onnx.ModelProto, version: int) -> onnx.ModelProto:
        up = real(model, version)
        fw = next(t for t in up.graph.initializer if t.name == "fw")  # softmax ignores a bias shift
        fw.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(fw) * 2.0, "fw"))
        return up

    monkeypatch.setattr(onnx.version_converter, "convert_version", wrong)
    with pytest.raises(OpsetUpgradeError, match="changed its outputs"):
        quantize(make_nhwc_opset9(), QuantizeConfig(mode="dynamic"))


def test_failed_upgrade_skips_quantization_and_the_pipeline_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(onnx.version_converter, "convert_version", lambda *_: 1 / 0)
    recipe = Recipe((PassSpec("optimize_graph", {}), PassSpec("quantize", {"mode": "dynamic"})))
    r = optimize(make_nhwc_opset9(), recipe, OptimizeConfig(**FAST))
    quant = next(s for s in r.stages if s.pass_name == "quantize")
    assert not quant.modified and "could not upgrade" in quant.report["reason"]
    assert [w for w in r.warnings if "int8 quantization skipped" in w and "opset 9" in w]
    assert [s.pass_name for s in r.stages] == [None, "optimize_graph", "quantize"]
    x = np.random.default_rng(10).standard_normal((2, 16, 16, 3)).astype(np.float32)
    np.testing.assert_allclose(_run(r.model, {"input": x})[0], _run(make_nhwc_opset9(), {"input": x})[0],
                               rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- Constant-node weights, subgraphs


def test_constants_to_initializers_keeps_the_outputs() -> None:
    model = make_constant_weights()
    assert not model.graph.initializer
    moved, count = constants_to_initializers(model)
    assert count == 4 and not [n for n in moved.graph.node if n.op_type == "Constant"]
    onnx.checker.check_model(moved)
    x = np.random.default_rng(6).standard_normal((3, 4, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(_run(moved, {"x": x})[0], constant_weights_oracle(constant_values(model), x),
                               rtol=1e-5, atol=1e-5)
    scalar = helper.make_node("Constant", [], ["c"], value_floats=[1.0, 2.0])
    g = helper.make_graph([scalar, helper.make_node("Add", ["x", "c"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    m2, n2 = constants_to_initializers(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    assert n2 == 1 and numpy_helper.to_array(m2.graph.initializer[0]).tolist() == [1.0, 2.0]
    assert constants_to_initializers(m2) == (m2, 0)


def _zero_smallest(w: np.ndarray, sparsity: float) -> np.ndarray:
    flat = w.reshape(-1).copy()
    k = int(round(sparsity * flat.size))
    flat[np.argsort(np.abs(flat), kind="stable")[:k]] = 0
    return flat.reshape(w.shape)


def test_magnitude_pruning_reaches_constant_node_weights(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    model = make_constant_weights()
    r = prune_magnitude(model, MagnitudeConfig(sparsity=0.5, min_elements=16))
    assert r.modified and r.report["constants_to_initializers"] == 4
    assert {t["name"] for t in r.report["tensors"]} == {"w_conv", "w_fc"}
    assert r.report["total"]["sparsity_after"] == pytest.approx(0.5)
    pruned = {t.name: numpy_helper.to_array(t) for t in r.model.graph.initializer}
    weights = constant_values(model)
    oracle = {**weights, "w_conv": _zero_smallest(weights["w_conv"], 0.5), "w_fc": _zero_smallest(weights["w_fc"], 0.5)}
    for name in ("w_conv", "w_fc"):
        assert np.array_equal(pruned[name], oracle[name])
    x = np.random.default_rng(7).standard_normal((3, 4, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(_run(r.model, {"x": x})[0], constant_weights_oracle(oracle, x), rtol=1e-5, atol=1e-5)
    path, out = tmp_path / "paddle.onnx", tmp_path / "sparse.onnx"
    onnx.save(model, str(path))
    with pytest.raises(SystemExit) as e:
        main(["prune", str(path), "-o", str(out), "--sparsity", "0.5", "--min-elements", "16", "--json",
              "--min-cosine", "0"])  # exactly 50%: below the default fidelity floor on these random weights
    assert e.value.code in (0, None)
    assert json.loads(capsys.readouterr().out)["total"]["sparsity_after"] == pytest.approx(0.5)


def test_channel_pruning_reaches_constant_node_weights() -> None:
    model = make_constant_weights()
    r = prune_channels(model, ChannelConfig(ratio=0.5))
    assert r.modified and r.report["groups"][0]["channels_after"] == 8
    w = constant_values(model)
    keep = np.sort(np.argsort(-np.abs(w["w_conv"]).reshape(16, -1).sum(axis=1), kind="stable")[:8])
    oracle = {"w_conv": w["w_conv"][keep], "b_conv": w["b_conv"][keep], "w_fc": w["w_fc"][keep]}
    x = np.random.default_rng(8).standard_normal((2, 4, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(_run(r.model, {"x": x})[0], constant_weights_oracle(oracle, x), rtol=1e-5, atol=1e-5)


def test_quantization_reaches_constant_node_weights() -> None:
    r = quantize(make_constant_weights(), QuantizeConfig(mode="dynamic", op_types=("MatMul",)))
    assert r.quantized and "fc" in r.report["nodes"]["quantized"]


def test_subgraph_ops_are_reported_per_subgraph() -> None:
    model = make_vad()
    q = quantize(model, QuantizeConfig(mode="dynamic"))
    notes = [n for n in q.report["notes"] if "inside If 'rate_switch'" in n]
    assert sorted(notes) == [
        "1 MatMul inside If 'rate_switch' else_branch left in float (onnxruntime's quantizer does not enter If/Loop/Scan subgraphs)",
        "1 MatMul inside If 'rate_switch' then_branch left in float (onnxruntime's quantizer does not enter If/Loop/Scan subgraphs)",
    ]
    mag = prune_magnitude(model, MagnitudeConfig(min_elements=16))
    sub = {s["name"]: s["reason"] for s in mag.report["skipped"] if "If" in s["name"]}
    assert sub == {f"If 'rate_switch' {b}": "1 MatMul left alone (inside a subgraph; pruning covers the main graph)"
                   for b in ("then_branch", "else_branch")}
    ch = prune_channels(model, ChannelConfig())
    assert {g["layers"][0] for g in ch.report["left_alone"] if g["channels"] is None} == {
        "If 'rate_switch' then_branch", "If 'rate_switch' else_branch"}


def test_sort_nodes_counts_the_names_subgraphs_read() -> None:
    model = make_vad()
    nodes = list(model.graph.node)
    names = [n.name for n in nodes]
    unsorted = onnx.ModelProto()
    unsorted.CopyFrom(model)
    del unsorted.graph.node[:]
    moved = [nodes[names.index("rate_switch")]] + [n for n in nodes if n.name != "rate_switch"]
    unsorted.graph.node.extend(moved)  # the If comes before `h`, which its branches read
    with pytest.raises(onnx.checker.ValidationError):
        onnx.checker.check_model(unsorted)
    fixed = sort_nodes(unsorted)
    onnx.checker.check_model(fixed)
    order = [n.name for n in fixed.graph.node]
    assert order.index("rate_switch") > order.index("mix") and order.index("rate_switch") > order.index("is_hi")
    again = [n.name for n in sort_nodes(fixed).graph.node]
    assert again == order


# ---------------------------------------------------------------- integer inputs


def test_int32_inputs_from_int64_data(tmp_path: Path) -> None:
    model = make_byte_classifier()
    ids = np.random.default_rng(9).integers(0, 256, (6, 64))  # np.savez keeps int64
    npz = tmp_path / "bytes.npz"
    np.savez(npz, bytes=ids, labels=np.arange(6) % 4)
    feed, labels = load_eval_data(model, npz)
    assert feed["bytes"].dtype == np.int32 and labels is not None
    w = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    np.testing.assert_allclose(run_batched(model, feed)[0], w["emb"][ids].mean(axis=1) @ w["w"], rtol=1e-5, atol=1e-6)
    bench = _cli("bench", str(_save(model, tmp_path / "bytes.onnx")), "--data", str(npz), "--runs", "2")
    assert bench.returncode == 0, bench.stderr
    np.savez(npz, bytes=ids + 2**40)
    with pytest.raises(InvalidInputError, match="expected dtype int32"):
        load_eval_data(model, npz)  # values that do not fit are not cast silently


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def _stateful_vad() -> onnx.ModelProto:
    """input[batch, 8], state[2, ?, 8] (its ? must equal the batch, as silero-vad's LSTM state) ->
    out[batch, 4] = Concat(input, state[0]) @ w: the Concat fails when the two batches differ."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((16, 4)).astype(np.float32), "w")
    zero = numpy_helper.from_array(np.array(0, np.int64), "zero")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["state", "zero"], ["s0"], axis=0),
         helper.make_node("Concat", ["input", "s0"], ["cat"], axis=1),
         helper.make_node("MatMul", ["cat", "w"], ["out"], name="proj")],
        "stateful_vad",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 8]),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, None, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 4])],
        [w, zero],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_state_fed_once_with_a_symbolic_batch_runs_sample_by_sample(tmp_path: Path) -> None:
    """A state stored once for one sample (as silero-vad's [2, 1, 128] in a user's .npz) beside 6
    stacked inputs: every run is at batch 1 (before: 'initial_h must have shape {1,16,128}')."""
    from onnxopt.core.model import per_sample_inputs

    model = _stateful_vad()
    assert batch_axes(model) == {"input": 0, "state": None} and per_sample_inputs(model) == ["state"]
    rng = np.random.default_rng(3)
    feed = {"input": rng.standard_normal((6, 8)).astype(np.float32),
            "state": rng.standard_normal((2, 1, 8)).astype(np.float32)}
    out = run_batched(model, feed)
    want = np.concatenate([feed["input"], np.repeat(feed["state"][0], 6, axis=0)], axis=1) @ numpy_helper.to_array(
        model.graph.initializer[0])
    np.testing.assert_allclose(out[0], want, rtol=1e-5, atol=1e-5)
    r = quantize(model, QuantizeConfig(mode="static", min_cosine=0.0), calib=feed, val=(feed, None))  # calibration too
    assert r.quantized and r.report["fidelity"]["min_cosine"] > 0.9
