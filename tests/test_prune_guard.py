"""The fidelity floor of pruning: repaired (lower sparsity/ratio), forced (--min-cosine 0) or rejected (exit 3).

The models are built so that 50% pruning breaks their outputs (half of each weight tensor, or
half of each layer's channels, is small but not negligible), and every cosine the tests rely
on is recomputed here with onnxruntime, one sample at a time, independently of onnxopt.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt.cli import main
from onnxopt.core.errors import GateFailedError, InvalidInputError
from onnxopt.core.feeds import synthesize_feed
from onnxopt.pruning.channels.prune import ChannelConfig, prune_channels
from onnxopt.pruning.guard import FidelityFloor
from onnxopt.pruning.magnitude import MagnitudeConfig, prune_magnitude


def _half_matter(rng: np.random.Generator, shape: tuple[int, ...], small: float, channels: bool = False) -> np.ndarray:
    """|w| in [0.5, 1.5], times `small` for a random quarter of the entries and times 0.001 for
    another quarter (or the last quarters of the output channels, axis 0, when `channels`),
    scaled by 1/sqrt(fan-in): pruning a quarter costs nothing, pruning half costs a lot."""
    w = rng.uniform(0.5, 1.5, shape) * rng.choice([-1.0, 1.0], shape)
    if channels:
        q = shape[0] // 4
        w[2 * q:3 * q] *= small
        w[3 * q:] *= 0.001
        fan_in = int(np.prod(shape[1:]))
    else:
        order = rng.permutation(w.size)
        w.reshape(-1)[order < w.size // 4] *= 0.001
        w.reshape(-1)[(order >= w.size // 4) & (order < w.size // 2)] *= small
        fan_in = shape[0]
    return (w / np.sqrt(fan_in)).astype(np.float32)


def _model(nodes: list, inputs: list, inits: dict[str, np.ndarray]) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "m", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])],
                              [numpy_helper.from_array(w, n) for n, w in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def make_mlp(seed: int = 0, gain_input: bool = False) -> onnx.ModelProto:
    """x[batch,32] -> MatMul 32x64 -> Relu -> MatMul 64x64 -> Relu -> MatMul 64x10: 50% sparsity
    gives output cosine ~0.97, 25% ~0.999998. With gain_input, x is first multiplied by a scalar input `gain`."""
    rng = np.random.default_rng(seed)
    inits = {"w1": _half_matter(rng, (32, 64), 0.12), "w2": _half_matter(rng, (64, 64), 0.12),
             "w3": _half_matter(rng, (64, 10), 0.12)}
    first = "x"
    nodes = []
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 32])]
    if gain_input:
        nodes.append(helper.make_node("Mul", ["x", "gain"], ["xg"]))
        inputs.append(helper.make_tensor_value_info("gain", TensorProto.FLOAT, []))
        first = "xg"
    nodes += [helper.make_node("MatMul", [first, "w1"], ["a"], name="fc1"), helper.make_node("Relu", ["a"], ["b"]),
              helper.make_node("MatMul", ["b", "w2"], ["c"], name="fc2"), helper.make_node("Relu", ["c"], ["d"]),
              helper.make_node("MatMul", ["d", "w3"], ["y"], name="fc3")]
    return _model(nodes, inputs, inits)


def make_convnet(seed: int = 0) -> onnx.ModelProto:
    """x[batch,3,8,8] -> Conv 16 -> Relu -> Conv 16 -> Relu -> GAP -> Flatten -> MatMul 16x10;
    a quarter of each conv's channels are negligible, a quarter weak: removing 50% of them gives
    output cosine ~0.96, removing 25% ~1."""
    rng = np.random.default_rng(seed)
    inits = {"c1": _half_matter(rng, (16, 3, 3, 3), 0.5, channels=True),
             "c2": _half_matter(rng, (16, 16, 3, 3), 0.5, channels=True),
             "fc": (rng.standard_normal((16, 10)) / 4).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "c1"], ["a"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("Conv", ["b", "c2"], ["c"], pads=[1, 1, 1, 1], name="conv2"),
             helper.make_node("Relu", ["c"], ["d"]), helper.make_node("GlobalAveragePool", ["d"], ["e"]),
             helper.make_node("Flatten", ["e"], ["f"]), helper.make_node("MatMul", ["f", "fc"], ["y"], name="fc")]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])], inits)


def min_cosine(reference: onnx.ModelProto | Path, candidate: onnx.ModelProto | Path, feed: dict[str, np.ndarray]) -> float:
    """Minimum over samples (each run at batch 1) of the cosine of the flattened outputs."""
    def session(m: onnx.ModelProto | Path) -> ort.InferenceSession:
        return ort.InferenceSession(m.SerializeToString() if isinstance(m, onnx.ModelProto) else str(m),
                                    providers=["CPUExecutionProvider"])

    a, b = session(reference), session(candidate)
    n = feed["x"].shape[0]
    worst = 1.0
    for i in range(n):
        one = {k: v[i:i + 1] if k == "x" else v for k, v in feed.items()}
        for ya, yb in zip(a.run(None, one), b.run(None, one)):
            ya, yb = ya.astype(np.float64).ravel(), yb.astype(np.float64).ravel()
            worst = min(worst, float(ya @ yb / (np.linalg.norm(ya) * np.linalg.norm(yb))))
    return worst


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main(args)
    out, err = capsys.readouterr()
    return int(e.value.code or 0), out, err


@pytest.fixture
def mlp_file(tmp_path: Path) -> Path:
    path = tmp_path / "mlp.onnx"
    onnx.save(make_mlp(), str(path))
    return path


@pytest.fixture
def val_x() -> np.ndarray:
    return np.random.default_rng(123).standard_normal((40, 32)).astype(np.float32)


def test_half_pruning_breaks_the_test_models() -> None:
    """The premise: without a floor, 50% puts both models below cosine 0.99."""
    feed = {"x": np.random.default_rng(1).standard_normal((16, 32)).astype(np.float32)}
    mlp = make_mlp()
    assert min_cosine(mlp, prune_magnitude(mlp, MagnitudeConfig()).model, feed) < 0.97
    conv = make_convnet()
    cfeed = {"x": np.random.default_rng(1).standard_normal((16, 3, 8, 8)).astype(np.float32)}
    assert min_cosine(conv, prune_channels(conv, ChannelConfig(ratio=0.5)).model, cfeed) < 0.99


def test_default_floor_lowers_sparsity_on_data(mlp_file: Path, val_x: np.ndarray, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    data, out = tmp_path / "val.npz", tmp_path / "sparse.onnx"
    np.savez(data, x=val_x)
    code, text, err = _run(["prune", str(mlp_file), "-o", str(out), "--data", str(data), "--json"], capsys)
    assert code == 0, err
    fid = json.loads(text)["fidelity"]
    assert fid["checked"] and fid["inputs"] == "data" and fid["samples"] == 40
    assert fid["requested"] == 0.5 and 0.0 < fid["applied"] < 0.5
    assert fid["message"].startswith("sparsity lowered from 50% to ")
    assert "to keep output cosine >= 0.99" in fid["message"] and "--min-cosine 0 to force 50%" in fid["message"]
    measured = min_cosine(mlp_file, out, {"x": val_x})
    assert measured >= 0.99
    assert measured == pytest.approx(fid["min_cosine"], abs=1e-5)
    zeros = sum(int((numpy_helper.to_array(t) == 0).sum()) for t in onnx.load(str(out)).graph.initializer)
    assert 0 < zeros < 0.5 * (32 * 64 + 64 * 64 + 64 * 10)


def test_default_floor_on_synthetic_inputs_is_tighter_and_says_so_in_one_line(
        mlp_file: Path, val_x: np.ndarray, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sparse.onnx"
    code, text, err = _run(["prune", str(mlp_file), "-o", str(out)], capsys)
    assert code == 0, err
    lines = [ln for ln in text.splitlines() if "lowered from 50%" in ln]
    assert len(lines) == 1 and lines[0].startswith("sparsity lowered from 50% to ")
    assert "cosine >= 0.99 (checked at >= 0.9999 on synthetic inputs: " in lines[0]
    assert "pass --data to check on your inputs, or --min-cosine 0 to force 50%" in lines[0]
    # the guard's samples: seeds 0..7 at batch 1 (the cosine is recomputed here), then other inputs
    samples = [synthesize_feed(make_mlp(), seed=i)["x"] for i in range(8)]
    assert min_cosine(mlp_file, out, {"x": np.concatenate(samples)}) >= 0.9999
    assert min_cosine(mlp_file, out, {"x": val_x}) >= 0.99


def test_min_cosine_0_forces_the_requested_sparsity(mlp_file: Path, val_x: np.ndarray, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "forced.onnx"
    code, text, err = _run(["prune", str(mlp_file), "-o", str(out), "--min-cosine", "0", "--json"], capsys)
    assert code == 0, err
    report = json.loads(text)
    assert report["total"]["sparsity_after"] == 0.5
    assert report["fidelity"] == {"checked": False, "parameter": "sparsity", "requested": 0.5, "applied": 0.5,
                                  "min_cosine_floor": 0.0}
    assert min_cosine(mlp_file, out, {"x": val_x}) < 0.99


def _error_lines(err: str) -> list[str]:
    """stderr without the '... step' progress lines of long work."""
    return [ln for ln in err.strip().splitlines() if not ln.startswith("... ")]


def test_impossible_floor_exits_3_and_writes_nothing(mlp_file: Path, val_x: np.ndarray, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    out, data = tmp_path / "never.onnx", tmp_path / "val.npz"
    code, text, err = _run(["prune", str(mlp_file), "-o", str(out), "--min-cosine", "1"], capsys)
    assert code == 3 and not out.exists() and text == ""
    lines = _error_lines(err)
    assert len(lines) == 1 and "no sparsity from 50% down to 0.8%" in lines[0] and "nothing written" in lines[0]
    assert "pruning cannot be shown safe on synthetic inputs" in lines[0] and "pass --data" in lines[0]
    np.savez(data, x=val_x)
    code, text, err = _run(["prune", str(mlp_file), "-o", str(out), "--min-cosine", "1", "--data", str(data)], capsys)
    assert code == 3 and not out.exists() and len(_error_lines(err)) == 1
    err = _error_lines(err)[0]
    assert err.startswith("onnxopt: error: pruning breaks the model: no sparsity from 50% down to 0.8% keeps "
                          "output cosine >= 1 (")


def test_channel_pruning_is_repaired(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model, path, out = make_convnet(), tmp_path / "conv.onnx", tmp_path / "slim.onnx"
    onnx.save(model, str(path))
    code, text, err = _run(["prune", str(path), "-o", str(out), "--method", "channels", "--ratio", "0.5", "--json"],
                           capsys)
    assert code == 0, err
    report = json.loads(text)
    fid = report["fidelity"]
    assert fid["parameter"] == "ratio" and fid["requested"] == 0.5 and 0.0 < fid["applied"] < 0.5
    assert fid["message"].startswith("ratio lowered from 50% to ")
    assert report["ratio"] == fid["applied"]
    kept = [g["channels_after"] for g in report["groups"]]
    assert all(8 < k < 16 for k in kept), kept  # some channels removed, fewer than half
    samples = [synthesize_feed(model, seed=i)["x"] for i in range(8)]
    assert min_cosine(path, out, {"x": np.concatenate(samples)}) >= 0.9999
    code, _, err = _run(["prune", str(path), "-o", str(tmp_path / "no.onnx"), "--method", "channels",
                         "--ratio", "0.5", "--min-cosine", "1"], capsys)
    assert code == 3 and not (tmp_path / "no.onnx").exists() and "no ratio from 50%" in err


def test_accuracy_floor_with_labels(mlp_file: Path, val_x: np.ndarray, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    sess = ort.InferenceSession(str(mlp_file), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(5).standard_normal((1000, 32)).astype(np.float32)
    logits = sess.run(None, {"x": x})[0]
    top2 = np.sort(logits, axis=1)[:, -2:]
    x = x[top2[:, 1] - top2[:, 0] > 0.2 * logits.std()][:400]  # no near-ties: a tiny change must not flip them
    labels = sess.run(None, {"x": x})[0].argmax(axis=1)  # the input model is 100% right
    data, out = tmp_path / "val.npz", tmp_path / "acc.onnx"
    np.savez(data, x=x, labels=labels)
    forced = tmp_path / "forced.onnx"
    code, text, err = _run(["prune", str(mlp_file), "-o", str(forced), "--data", str(data), "--min-cosine", "0",
                            "--max-accuracy-drop", "100", "--json"], capsys)
    assert code == 0, err
    assert json.loads(text)["accuracy"]["drop"] > 0.5  # 50% costs accuracy: the floor has work to do
    code, text, err = _run(["prune", str(mlp_file), "-o", str(out), "--data", str(data), "--min-cosine", "0",
                            "--json"], capsys)
    assert code == 0, err
    report = json.loads(text)
    assert report["fidelity"]["applied"] < 0.5 and "accuracy drop <= 0.5 pt" in report["fidelity"]["message"]
    assert "--max-accuracy-drop 100" in report["fidelity"]["message"]
    pred = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0].argmax(axis=1)
    accuracy = float((pred == labels).mean() * 100)
    assert accuracy >= 99.5 and accuracy == pytest.approx(report["accuracy"]["after"])


def test_max_accuracy_drop_needs_labels(mlp_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "x.onnx"
    code, _, err = _run(["prune", str(mlp_file), "-o", str(out), "--max-accuracy-drop", "1"], capsys)
    assert code == 1 and not out.exists() and "needs labelled data" in err


def test_library_floor_is_opt_in_and_deterministic() -> None:
    model = make_mlp()
    plain = prune_magnitude(model, MagnitudeConfig())
    assert "fidelity" not in plain.report and plain.report["total"]["sparsity_after"] == 0.5
    a = prune_magnitude(model, MagnitudeConfig(), floor=FidelityFloor())
    b = prune_magnitude(model, MagnitudeConfig(), floor=FidelityFloor())
    assert a.model.SerializeToString() == b.model.SerializeToString()
    assert a.report["fidelity"]["tried"][0] == {"value": 0.5, "min_cosine": pytest.approx(a.report["fidelity"]["tried"][0]["min_cosine"]),
                                                "accuracy": None, "ok": False}
    assert len(a.report["fidelity"]["tried"]) == 1 + FidelityFloor().steps
    assert a.report["target_sparsity"] == a.report["fidelity"]["applied"] < 0.5


def test_scalar_input_and_sparse_storage() -> None:
    """A scalar input is fed as it is; sparse storage (which does not change the numbers) still applies."""
    model = make_mlp(gain_input=True)
    r = prune_magnitude(model, MagnitudeConfig(sparse_storage=True), floor=FidelityFloor(samples=4))
    assert r.report["fidelity"]["samples"] == 4 and 0 < r.report["fidelity"]["applied"] < 0.5
    assert r.report["storage"]["format"] == "bitmask"
    samples = [synthesize_feed(model, seed=i) for i in range(4)]  # the guard's: x per seed, `gain` of seed 0
    feed = {"x": np.concatenate([s["x"] for s in samples]), "gain": samples[0]["gain"]}
    assert feed["gain"].shape == () and min_cosine(model, r.model, feed) >= 0.9999


def test_threshold_is_lowered_too() -> None:
    r = prune_magnitude(make_mlp(), MagnitudeConfig(sparsity=None, threshold=0.2), floor=FidelityFloor())
    fid = r.report["fidelity"]
    assert fid["parameter"] == "threshold" and 0 < fid["applied"] < 0.2 and r.report["threshold"] == fid["applied"]
    assert fid["message"].startswith("threshold lowered from 0.2 to ") and fid["min_cosine_checked"] == 0.9999


def test_nothing_to_prune_is_not_measured() -> None:
    r = prune_magnitude(make_mlp(), MagnitudeConfig(min_elements=10**6), floor=FidelityFloor())
    assert not r.modified and r.report["fidelity"]["checked"] is False


def test_floor_validation() -> None:
    with pytest.raises(InvalidInputError, match="min-cosine"):
        FidelityFloor(min_cosine=1.5)
    with pytest.raises(InvalidInputError, match="max-accuracy-drop"):
        FidelityFloor(max_accuracy_drop=-1)
    with pytest.raises(GateFailedError, match="nothing written"):
        prune_channels(make_convnet(), ChannelConfig(ratio=0.5), floor=FidelityFloor(min_cosine=1.0))


def test_probe_has_image_like_samples_and_sane_masks() -> None:
    from onnxopt.pruning.probe import synthetic_feed

    feed, described = synthetic_feed(make_convnet(), samples=6, seed=0)
    assert described == "6 noise + 6 image-like" and feed["x"].shape == (12, 3, 8, 8)
    images = feed["x"][6:].astype(np.float64)
    assert images[0].min() >= 0.0 and images[0].max() <= 1.0  # kinds cycle: [0, 1], [-1, 1], standardized
    assert images[1].min() >= -1.0 and images[1].max() <= 1.0 and images[1].min() < 0.0
    assert abs(images[2].mean()) < 1e-3 and images[2].std() == pytest.approx(1.0, abs=1e-3)
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("MatMul", ["f", "fc"], ["y"])]
    big = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 64, 64])],
                 {"fc": np.ones((3, 10), np.float32)})
    x = synthetic_feed(big, samples=3)[0]["x"]
    # smooth: neighbouring pixels of a standardized image-like sample differ far less than in noise
    assert np.abs(np.diff(x[5], axis=-1)).mean() < 0.2 * np.abs(np.diff(x[0], axis=-1)).mean()
    assert synthetic_feed(make_mlp(), samples=3)[1] == "3 noise"  # no image input
    mask = helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", 32])
    model = make_mlp()
    model.graph.input.append(mask)
    feed, _ = synthetic_feed(model, samples=2)
    assert feed["attention_mask"].shape == (2, 32) and (feed["attention_mask"] == 1).all()


def test_cosines_ignore_entries_the_reference_gives_no_finite_value_for() -> None:
    from onnxopt.pruning.guard import _cosines

    ref = np.array([[1.0, np.nan, 2.0], [3.0, 4.0, np.inf]])
    assert _cosines(ref, ref.copy(), 2) == pytest.approx([1.0, 1.0])
    cand = np.array([[1.0, 5.0, 2.0], [3.0, np.nan, 0.0]])  # NaN where the reference is finite: broken
    assert _cosines(ref, cand, 2) == pytest.approx([1.0, 0.0])
    assert _cosines(ref, cand[:, :2], 2).tolist() == [0.0]  # shape changed
