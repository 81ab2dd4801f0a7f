"""The `make realmodels` harness: manifest, cache, input synthesis, and a smoke run per cached model.

The per-model smoke tests never download: they run only when the corpus cache exists
(`make realmodels` fills it from the package index) and skip with the reason otherwise.
Everything else runs offline on data built here.
"""

from __future__ import annotations

import hashlib
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from realmodels import corpus, inputs, measure  # noqa: E402
from realmodels import run as harness  # noqa: E402

MANIFEST = corpus.load_manifest()
ORT_TYPES = {"tensor(float)": np.float32, "tensor(int32)": np.int32, "tensor(int64)": np.int64}


def test_manifest_covers_the_families_the_issue_asks_for() -> None:
    names = [m.name for m in MANIFEST.models]
    assert len(names) >= 8 and len(set(names)) == len(names)
    kinds = {spec["kind"] for m in MANIFEST.models for spec in m.inputs.values()}
    assert {"image", "bytes", "audio", "tokens", "scalar"} <= kinds
    assert any(spec.get("layout") == "NHWC" for m in MANIFEST.models for spec in m.inputs.values())
    for m in MANIFEST.models:
        assert m.license and m.family and m.version[0].isdigit(), m.name
        assert m.member.endswith(".onnx"), m.name


def test_select_rejects_unknown_names() -> None:
    assert [m.name for m in MANIFEST.select("silero-vad")] == ["silero-vad"]
    with pytest.raises(ValueError, match="unknown model"):
        MANIFEST.select("silero-vad,nope")


@pytest.mark.parametrize("entry", MANIFEST.models, ids=lambda m: m.name)
def test_synthesized_inputs_follow_the_spec_and_are_reproducible(entry: corpus.ModelEntry) -> None:
    first, again, second = (inputs.synthesize(entry.inputs, i) for i in (0, 0, 1))
    assert list(first) == list(entry.inputs)
    for name, spec in entry.inputs.items():
        expected_shape = tuple(spec.get("shape", ()))
        assert first[name].shape == expected_shape, name
        default = {"bytes": "int32", "tokens": "int64"}.get(spec["kind"], "float32")
        assert first[name].dtype == np.dtype(spec.get("dtype", default)), name
        assert np.isfinite(first[name].astype(np.float64)).all(), name
        np.testing.assert_array_equal(first[name], again[name])
        if spec["kind"] in ("image", "bytes", "audio", "tokens"):
            assert not np.array_equal(first[name], second[name]), f"{name}: samples do not vary"


def test_image_normalization_and_layout() -> None:
    spec = {"kind": "image", "shape": [1, 32, 48, 3], "layout": "NHWC", "scale": 1.0,
            "mean": [100.0, 100.0, 100.0], "std": [2.0, 2.0, 2.0]}
    x = inputs.synthesize({"x": spec}, 0)["x"]
    assert x.shape == (1, 32, 48, 3)
    assert x.min() >= -50.0 and x.max() <= 77.5  # (0-100)/2 .. (255-100)/2
    raw = inputs.synthesize({"x": {"kind": "image", "shape": [1, 1, 64, 96], "scene": "textline"}}, 0)["x"]
    assert raw.min() >= 0.0 and raw.max() <= 1.0 and raw.std() > 0.05  # ink on paper, scaled by 1/255


def test_bytes_features_pad_between_head_and_tail() -> None:
    x = inputs.synthesize({"b": {"kind": "bytes", "shape": [1, 2048], "dtype": "int32"}}, 0)["b"][0]
    assert x.min() >= 0 and x.max() <= 256
    head, tail = x[:1024], x[1024:]
    # a file shorter than 1 KiB is padded at the end of the head and at the start of the tail
    if (head == 256).any():
        first_pad = int(np.argmax(head == 256))
        assert (head[first_pad:] == 256).all()
    if (tail == 256).any():
        last_pad = 1023 - int(np.argmax(tail[::-1] == 256))
        assert (tail[: last_pad + 1] == 256).all()
    assert bytes(head[:4].astype(np.uint8)) == b"def "


def _entry(sha: str, member: str = "pkg/model.onnx") -> corpus.ModelEntry:
    return corpus.ModelEntry(name="fake", package="fake", version="1.0", member=member, sha256=sha,
                             family="test", license="MIT", inputs={"x": {"kind": "zeros", "shape": [1]}})


def test_cache_extracts_verifies_and_rejects_a_wrong_file(tmp_path: Path) -> None:
    payload = b"not really onnx but bytes all the same"
    good = _entry(hashlib.sha256(payload).hexdigest())
    archive = tmp_path / "fake-1.0-py3-none-any.whl"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("pkg/model.onnx", payload)
    cache = tmp_path / "cache"
    cache.mkdir()
    assert not corpus.is_cached(good, cache)
    assert corpus._install_one(good, archive, cache) == {}
    assert corpus.is_cached(good, cache)
    corpus.model_path(good, cache).write_bytes(payload + b"!")  # corrupted after the fact
    assert not corpus.is_cached(good, cache)
    bad = _entry("0" * 64)
    error = corpus._install_one(bad, archive, cache)
    assert "sha256 mismatch" in error["fake"]
    assert not corpus.model_path(bad, cache).with_suffix(".part").exists()
    missing = corpus._install_one(_entry("0" * 64, member="pkg/other.onnx"), archive, cache)
    assert "cannot extract" in missing["fake"]


def test_cache_extracts_from_an_sdist(tmp_path: Path) -> None:
    payload = b"model bytes in an sdist"
    entry = _entry(hashlib.sha256(payload).hexdigest())
    (tmp_path / "fake-1.0" / "pkg").mkdir(parents=True)
    (tmp_path / "fake-1.0" / "pkg" / "model.onnx").write_bytes(payload)
    archive = tmp_path / "fake-1.0.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(tmp_path / "fake-1.0", arcname="fake-1.0")
    assert corpus._install_one(entry, archive, tmp_path) == {}
    assert corpus.model_path(entry, tmp_path).read_bytes() == payload


def test_cache_dir_honours_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(corpus.CACHE_ENV, str(tmp_path / "elsewhere"))
    assert corpus.cache_dir() == tmp_path / "elsewhere"
    monkeypatch.delenv(corpus.CACHE_ENV)
    assert corpus.cache_dir() == ROOT / ".cache" / "realmodels"


def test_child_is_killed_on_timeout_and_logged(tmp_path: Path) -> None:
    log = tmp_path / "child.log"
    code, _, _, seconds = harness.run_child(
        [sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"], 1.0, log, tmp_path)
    assert code == "timeout" and seconds < 30
    assert "# exit timeout" in log.read_text() and "started" in log.read_text()


def test_failure_line_flags_tracebacks_and_prefers_error_lines() -> None:
    tb = "Traceback (most recent call last):\n  File \"x.py\", line 1\nIndexError: tuple index out of range\n"
    assert harness.failure_line(tb, "") == "TRACEBACK IndexError: tuple index out of range"
    assert harness.failure_line("... loading\nerror: opset 9 < 10\n", "") == "error: opset 9 < 10"
    assert harness.failure_line("", "only stdout\n") == "only stdout"


def test_cosine_edge_cases() -> None:
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert measure.cosine(a, a) == pytest.approx(1.0)
    assert measure.cosine(a, -a) == pytest.approx(-1.0)
    assert measure.cosine(a, a.reshape(3, 2)) == 0.0
    assert measure.cosine(np.zeros(3), np.zeros(3)) == 1.0
    assert measure.cosine(np.zeros(3), np.ones(3)) == 0.0


def test_table_renders_every_row_and_flags_low_cosine() -> None:
    rows = [harness.Row("m", "quantize", "0", 3.0, 0.5, 0.45, 0.55, 10.0, 5.0, 0.3, 0.95),
            harness.Row("m", "prune", "1", 1.0, traceback=True, note="TRACEBACK ValueError: x")]
    text, md = harness.render_text(rows), harness.render_markdown(rows)
    assert "0.50 [0.45, 0.55]" in text and "0.9500 !" in text
    assert md.count("\n") == len(rows) + 1
    tail = harness.summary(rows)
    assert tail[0].startswith("tracebacks: 1") and tail[1].startswith("outputs below 0.99 cosine: 1")


def test_npz_stacks_batched_inputs_and_keeps_constants_once(tmp_path: Path) -> None:
    entry = MANIFEST.select("silero-vad")[0]
    path = harness.write_npz(entry, tmp_path / "vad.npz", samples=3, seed=0)
    with np.load(path) as data:
        assert data["input"].shape == (3, 576)
        assert data["state"].shape == (2, 1, 128) and data["sr"].shape == ()
        assert not np.array_equal(data["input"][0], data["input"][1])
        # drawn apart from the samples the harness measures fidelity on
        assert not np.array_equal(data["input"][:1], inputs.synthesize(entry.inputs, 0)["input"])


# ---------------------------------------------------------------- the cached corpus (no download)

CACHE = corpus.cache_dir()


@pytest.mark.parametrize("entry", MANIFEST.models, ids=lambda m: m.name)
def test_cached_model_runs_at_batch_1_on_synthesized_inputs(entry: corpus.ModelEntry) -> None:
    if not CACHE.is_dir():
        pytest.skip(f"realmodels cache absent at {CACHE}: run `make realmodels` (needs the package index)")
    if not corpus.is_cached(entry, CACHE):
        pytest.skip(f"{entry.name} not in the cache (or its sha256 differs): run `make realmodels`")
    sess = measure.session(corpus.model_path(entry, CACHE), threads=1)
    declared = {i.name: i for i in sess.get_inputs()}
    assert set(declared) == set(entry.inputs), "the manifest must feed exactly the model's inputs"
    feed = inputs.synthesize(entry.inputs, 0)
    for name, arg in declared.items():
        assert feed[name].dtype == ORT_TYPES[arg.type], name
        assert len(feed[name].shape) == len(arg.shape), name
        for got, want in zip(feed[name].shape, arg.shape):
            assert not isinstance(want, int) or want in (0, got), f"{name}: {feed[name].shape} vs {arg.shape}"
    outputs = measure.run_once(sess, feed)
    assert len(outputs) == len(sess.get_outputs())
    assert all(np.isfinite(o.astype(np.float64)).all() for o in outputs)


def test_optimize_and_quantize_outputs_are_compared_side_by_side(tmp_path: Path) -> None:
    entry = MANIFEST.select("silero-vad")[0]
    rows = [harness.Row(entry.name, "optimize+data", "0"), harness.Row(entry.name, "quantize+data", "0")]
    args = harness.parse_args(["--out", str(tmp_path)])
    assert harness.compare_outputs(entry, rows, tmp_path, args) is None  # neither wrote a file
    import onnx
    from onnx import helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    for label, note in (("optimize+data", "decisions"), ("quantize+data", "")):
        model = helper.make_model(graph)
        if note:  # optimize records its decisions in the metadata: the same graph all the same
            helper.set_model_props(model, {"onnxopt.decisions": note})
        onnx.save(model, str(tmp_path / f"{entry.name}.{label}.onnx"))
    pair = harness.compare_outputs(entry, rows, tmp_path, args)
    assert pair is not None and pair.command == "optimize/quantize" and pair.note == "the same graph"
    behind = harness.Row("m", "optimize/quantize", "-", latency_ratio=1.2, ci_low=1.1, ci_high=1.3, min_cosine=0.98)
    level = harness.Row("m", "optimize/quantize", "-", latency_ratio=1.03, ci_low=0.99, ci_high=1.07)
    low = harness.Row("m", "quantize+data", "0", latency_ratio=0.9, ci_low=0.8, ci_high=0.95, min_cosine=0.98)
    tail = harness.summary([behind, level, low])
    assert tail[1] == "outputs below 0.99 cosine: 1 ['m/quantize+data (0.9800)']"  # two outputs' cosine: no output
    assert tail[2].startswith("outputs slower than their input (CI above 1): 0")  # the pair is no output
    assert tail[3].startswith("optimize more than 5% slower than quantize") and "m (1.20)" in tail[3]
