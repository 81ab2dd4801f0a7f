"""The Keras search path: genome -> Keras CNN (same genes as PyTorch), ONNX parity, a tiny digits search."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from onnxopt.nas.evaluate import EvalConfig, evaluator_for, load_split

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
TRAIN, VAL = MODELS / "digits_train.npz", MODELS / "digits_val.npz"

pytestmark = pytest.mark.keras

GENOMES = [
    {"depth": 3, "width_1": 16, "width_2": 32, "width_3": 64, "hidden": 128},  # the digits baseline shape
    {"depth": 2, "width": 8, "kernel_2": 5, "separable": True, "head": "gap", "activation": "hardswish"},
    {"depth": 2, "width": 6, "batchnorm": False, "activation": "gelu", "dropout": 0.2, "hidden": 16,
     "pool_1": True, "pool_2": False},
    {"depth": 1, "width_1": 4, "kernel_1": 1, "activation": "leaky_relu", "head": "flatten"},
]

TINY_TOML = """
[genes.depth]
type = "int"
low = 1
high = 2
[genes.width]
options = [4, 8]
[genes.head]
options = ["flatten", "gap"]
[train]
epochs = 1
train_limit = 200
bench_runs = 10
bench_warmup = 2
"""


@pytest.mark.parametrize("genome", GENOMES, ids=lambda g: f"depth{g['depth']}-{g.get('activation', 'relu')}")
def test_keras_genome_shape_and_onnx_parity(genome: dict) -> None:
    pytest.importorskip("keras")
    from onnxopt.conversion.api import from_keras
    from onnxopt.frameworks.keras_genome import build, param_count

    model = build(genome, (1, 8, 8), 10, seed=0)
    assert model.inputs[0].shape[1:] == (1, 8, 8)  # NCHW like the PyTorch build and the data
    x = np.random.default_rng(0).standard_normal((5, 1, 8, 8)).astype(np.float32)
    out = np.asarray(model(x, training=False))
    assert out.shape == (5, 10)
    assert param_count(model) > 0
    res = from_keras(model, example_inputs=(x[:1],), input_names=["input"], output_names=["logits"], simplify=True)
    assert res.parity.passed, res.parity
    sess = ort.InferenceSession(res.model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["input"]
    got = sess.run(None, {"input": x})[0]  # dynamic batch: 5 samples though exported with 1
    np.testing.assert_allclose(got, out, atol=1e-4, rtol=1e-3)


def test_keras_genome_same_genes_as_torch() -> None:
    pytest.importorskip("keras")
    from onnxopt.core.errors import InvalidInputError
    from onnxopt.frameworks.keras_genome import build

    with pytest.raises(InvalidInputError, match="widht"):
        build({"depth": 1, "widht": 8}, (1, 8, 8), 10)
    with pytest.raises(InvalidInputError, match="kernel_1 must be odd"):
        build({"depth": 1, "width": 8, "kernel_1": 2}, (1, 8, 8), 10)
    # same parameter count as the PyTorch build when BatchNorm is off (Keras also counts BN statistics)
    from onnxopt.frameworks.keras_genome import param_count
    from onnxopt.frameworks.torch_genome import count_params

    g = {"depth": 2, "width_1": 8, "width_2": 16, "batchnorm": False, "separable": True, "hidden": 32}
    assert param_count(build(g, (1, 8, 8), 10)) == count_params(g, (1, 8, 8), 10)


def test_keras_search_end_to_end_on_digits(tmp_path: Path) -> None:
    pytest.importorskip("keras")
    from onnxopt.nas.engine import Objective, SearchConfig, search
    from onnxopt.nas.space import load_space

    (tmp_path / "space.toml").write_text(TINY_TOML)
    space = load_space(tmp_path / "space.toml")
    cfg = EvalConfig(epochs=1, train_limit=200, bench_runs=10, bench_warmup=2)
    evaluator = evaluator_for("keras")(load_split(TRAIN), load_split(VAL), cfg, workdir=tmp_path)
    result = search(
        space, evaluator,
        SearchConfig(population=3, generations=2, elite=1, seed=0,
                     objectives=(Objective("accuracy"), Objective("latency_ms", maximize=False))),
    )
    assert all(r.ok for r in result.records), [r.error for r in result.records]
    assert result.best is not None and result.best.metrics is not None
    m = result.best.metrics
    assert 10 < m["accuracy"] <= 100  # better than chance after one epoch on 200 samples
    assert m["latency_ms"] > 0 and Path(m["model_path"]).exists()
    from onnxopt.measure.fidelity import accuracy

    xv, yv = load_split(VAL)
    assert accuracy(m["model_path"], {"input": xv}, yv) == pytest.approx(m["accuracy"])


def test_cli_framework_keras(tmp_path: Path) -> None:
    pytest.importorskip("keras")
    from onnxopt.cli import cli

    space = tmp_path / "space.toml"
    space.write_text(TINY_TOML)
    out = tmp_path / "best.onnx"
    r = CliRunner().invoke(cli, [
        "search", "--space", str(space), "--data", str(TRAIN), "--val", str(VAL), "-o", str(out),
        "--framework", "keras", "--population", "2", "--generations", "1", "--elite", "1",
        "--remeasure-runs", "10", "--json",
    ])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout[r.stdout.index("{"):])
    assert summary["framework"] == "keras" and summary["written"] == [str(out)]
    assert out.exists() and summary["models"][0]["accuracy"] > 10


