"""The public API as documented: every name in onnxopt.__all__ resolves to the documented object
(never to a submodule that shadows it) in any import order, resolving stays light, and every
public function works when called on a tiny model built in code."""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
import subprocess
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import onnx
import pytest

import onnxopt

from .conftest import MODELS, ROOT, make_convnet, make_mlp

HEAVY = ("torch", "tensorflow", "keras", "transformers")

# Every public function, by how this file exercises it. A new public function must be added
# here (test_every_public_function_is_exercised fails otherwise) and to a test below.
CALLED = {
    "load_model", "save_model", "describe", "validate_model", "benchmark", "latency_ratio",
    "compare_models", "accuracy", "quantize", "open_calibration", "prune_magnitude",
    "prune_channels", "optimize", "default_recipe", "parse_recipe", "load_recipe",
    "available_passes", "register_pass", "load_space", "search", "random_search",
    "from_torch", "convert_source", "distill_model",
}
# Keras paths import TensorFlow (~10 s); tests/test_convert_keras.py and test_distill_keras.py
# call them for real. distill_sources is distill_model behind file loading (tests/test_distill.py).
CALLABLE_ONLY = {"from_keras", "distill_sources"}


def _import_every_submodule() -> list[str]:
    """Import every module of the package (frameworks ones too: they import torch lazily)."""
    names = []
    for info in pkgutil.walk_packages(onnxopt.__path__, "onnxopt."):
        try:
            importlib.import_module(info.name)
        except ImportError as e:  # only a missing framework extra may excuse a module
            if info.name.startswith("onnxopt.frameworks.") and (e.name or "").split(".")[0] in HEAVY:
                continue
            raise
        names.append(info.name)
    return names


@pytest.fixture(scope="module")
def api() -> types.ModuleType:
    """onnxopt after every submodule was imported (the order that used to shadow functions)."""
    _import_every_submodule()
    return onnxopt


def test_all_public_names_resolve_without_frameworks() -> None:
    code = (
        "import sys, onnxopt\n"
        "missing = [n for n in onnxopt.__all__ if not hasattr(onnxopt, n)]\n"
        "heavy = [m for m in ('torch', 'tensorflow', 'keras') if m in sys.modules]\n"
        "print(missing, heavy)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[] []", r.stdout


def test_names_are_the_documented_objects_after_every_submodule_is_imported() -> None:
    """In a fresh interpreter (nothing resolved yet): import every submodule first, then every
    public name must be its documented function/class, not a module bound by an import."""
    code = (
        "import importlib, json, sys, types, onnxopt\n"
        "from tests.test_public_api import _import_every_submodule\n"
        "mods = _import_every_submodule()\n"
        "bad = []\n"
        "for n in onnxopt.__all__:\n"
        "    v = getattr(onnxopt, n)\n"
        "    home = onnxopt._LAZY.get(n)\n"
        "    if isinstance(v, types.ModuleType) or (home and v is not getattr(importlib.import_module(home), n)):\n"
        "        bad.append(n)\n"
        "heavy = [m for m in ('torch', 'tensorflow', 'keras', 'transformers') if m in sys.modules]\n"
        "print(json.dumps({'modules': len(mods), 'bad': bad, 'heavy': heavy}))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["modules"] > 40  # the walk really imported the package's modules
    assert out["bad"] == [], "public names shadowed by a module or not the documented object"
    assert out["heavy"] == [], "importing onnxopt's modules imported a framework"


def test_no_subpackage_is_named_like_a_public_name(api: types.ModuleType) -> None:
    # importing onnxopt.X binds X on the package: X must not be a public name
    clashes = [m for m in _import_every_submodule() if m.split(".")[1] in api.__all__]
    assert clashes == []


def test_every_public_name_is_not_a_module(api: types.ModuleType) -> None:
    for name in api.__all__:
        value = getattr(api, name)
        assert not isinstance(value, types.ModuleType), name
        if name in api._LAZY:
            assert value is getattr(importlib.import_module(api._LAZY[name]), name), name


def test_every_public_function_is_exercised(api: types.ModuleType) -> None:
    functions = {n for n in api.__all__ if inspect.isfunction(getattr(api, n))}
    assert functions == CALLED | CALLABLE_ONLY
    for name in CALLABLE_ONLY:
        assert callable(getattr(api, name)) and getattr(api, name).__doc__


def test_unknown_attribute_raises() -> None:
    try:
        onnxopt.no_such_thing  # noqa: B018
    except AttributeError as e:
        assert "no_such_thing" in str(e)
    else:
        raise AssertionError("expected AttributeError")


# ------------------------------------------------------------------ calling every function


@pytest.fixture(scope="module")
def tiny() -> dict[str, Any]:
    """A tiny conv net, a seeded feed, and labels that the model itself predicts."""
    model = make_convnet()
    feed = {"input": np.random.default_rng(0).random((16, 3, 16, 16), dtype=np.float32)}
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    labels = sess.run(None, feed)[0].argmax(axis=1)
    return {"model": model, "feed": feed, "labels": labels}


def test_model_io(api: types.ModuleType, tiny: dict[str, Any], tmp_path: Path) -> None:
    path = api.save_model(tiny["model"], tmp_path / "m.onnx")
    loaded = api.load_model(path)
    assert loaded.graph.SerializeToString() == tiny["model"].graph.SerializeToString()
    assert api.validate_model(loaded) is None
    d = api.describe(path)
    assert isinstance(d, api.ModelDescription) and d.parameter_count == sum(
        int(np.prod(t.dims)) for t in tiny["model"].graph.initializer
    )
    with pytest.raises(api.InvalidModelError):
        api.load_model(tmp_path / "missing.onnx")


def test_measure(api: types.ModuleType, tiny: dict[str, Any]) -> None:
    m, feed, labels = tiny["model"], tiny["feed"], tiny["labels"]
    results = api.benchmark([m, m], api.BenchConfig(runs=5, warmup=1), names=["a", "b"])
    assert [r.name for r in results] == ["a", "b"] and all(len(r.samples_ms) >= 5 for r in results)
    ratio = api.latency_ratio(results[1], results[0])
    assert isinstance(ratio, api.RatioCI) and ratio.low <= ratio.ratio <= ratio.high
    fid = api.compare_models(m, m, feed, labels)
    assert isinstance(fid, api.FidelityReport) and fid.min_cosine > 0.99999 and fid.samples == 16
    assert api.accuracy(m, feed, labels) == 100.0


def test_quantize_and_calibration(api: types.ModuleType, tiny: dict[str, Any], tmp_path: Path) -> None:
    m, feed = tiny["model"], tiny["feed"]
    q = api.quantize(m, api.QuantizeConfig(mode="static"), calib=feed)
    assert isinstance(q, api.QuantizeResult) and q.quantized
    assert any(n.op_type == "QuantizeLinear" for n in q.model.graph.node)
    np.savez(tmp_path / "calib.npz", input=feed["input"])
    source = api.open_calibration(m, tmp_path / "calib.npz", samples=8)
    batches = list(source.batches())
    assert sum(b["input"].shape[0] for b in batches) == 8


def test_pruning(api: types.ModuleType, tiny: dict[str, Any]) -> None:
    m = tiny["model"]
    mag = api.prune_magnitude(m, api.MagnitudeConfig(sparsity=0.5, min_elements=1))
    assert isinstance(mag, api.PruneResult) and mag.modified
    w = onnx.numpy_helper.to_array(next(t for t in mag.model.graph.initializer if t.name == "c2_w"))
    assert (w == 0).mean() == pytest.approx(0.5, abs=0.01)
    ch = api.prune_channels(m, api.ChannelConfig(ratio=0.5))
    conv1 = next(n for n in ch.model.graph.node if n.name == "conv1")
    w1 = next(t for t in ch.model.graph.initializer if t.name == conv1.input[1])
    assert ch.modified and w1.dims[0] == 4  # 8 output channels -> 4


def test_recipes_passes_and_optimize(api: types.ModuleType, tiny: dict[str, Any], tmp_path: Path) -> None:
    m, feed, labels = tiny["model"], tiny["feed"], tiny["labels"]
    assert {"optimize_graph", "quantize", "prune_channels"} <= set(api.available_passes())
    recipe = api.parse_recipe('[[passes]]\nname = "fold_constants"\n[[passes]]\nname = "optimize_graph"\n')
    (tmp_path / "r.toml").write_text(recipe.to_toml())
    assert api.load_recipe(tmp_path / "r.toml") == recipe
    assert [p.name for p in api.default_recipe(m).passes] == ["optimize_graph", "quantize"]
    cfg = api.OptimizeConfig(bench_runs=3, bench_seconds=0.05, warmup=1, gates=api.Gates(min_cosine=0.99))
    res = api.optimize(m, recipe, cfg, val=(feed, labels))
    assert isinstance(res, api.OptimizeResult) and res.gates_passed
    assert [s.name for s in res.stages] == ["original", "constants-folded", "graph-optimized"]
    pipeline = api.Pipeline(recipe.pipeline().passes)
    assert pipeline.run(m).model.graph.node  # the same passes, run directly

    api.register_pass(RenameGraph)
    try:
        custom = api.parse_recipe('[[passes]]\nname = "rename_graph_test"\nto = "x"\n')
        assert api.Pipeline(custom.pipeline().passes).run(m).model.graph.name == "x"
        assert m.graph.name == "convnet"  # the input is never modified
    finally:
        from onnxopt.passes.base import REGISTRY

        REGISTRY.pop("rename_graph_test", None)


@dataclass(frozen=True)
class RenameGraph:
    """A user-defined pass (registered by the test that uses it)."""

    name: ClassVar[str] = "rename_graph_test"
    to: str = "renamed"

    def __call__(self, model: onnx.ModelProto, context: Any) -> Any:
        out = onnx.ModelProto()
        out.CopyFrom(model)
        out.graph.name = self.to
        return onnxopt.PassResult(out, True, {"to": self.to})


def _fitness(genome: dict[str, Any]) -> float:
    return -abs(genome["w"] - 24) - (0 if genome["act"] == "silu" else 1)


def test_search(api: types.ModuleType) -> None:
    space = api.load_space(ROOT / "examples" / "search_space.toml")
    assert isinstance(space, api.SearchSpace) and "depth" in [g.name for g in space.genes]
    small = api.SearchSpace((api.IntGene("w", 8, 64, step=8), api.ChoiceGene("act", ("relu", "silu"))))
    cfg = api.SearchConfig(population=6, generations=4, seed=0)
    res = api.search(small, _fitness, cfg)
    assert isinstance(res, api.SearchResult) and res.best is not None
    assert res.best.value("fitness") == 0  # w = 24, silu: the optimum of a 16-genome space
    rnd = api.random_search(small, _fitness, 8, cfg)
    assert rnd.evaluations == 8


def test_torch_conversion_and_distillation(api: types.ModuleType, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    module = torch.nn.Sequential(torch.nn.Linear(16, 10)).eval()
    x = np.random.default_rng(0).random((1, 16), dtype=np.float32)
    conv = api.from_torch(module, (x,), output=tmp_path / "lin.onnx", exporter="torchscript")
    assert isinstance(conv, api.ConvertResult) and conv.parity.passed and (tmp_path / "lin.onnx").exists()
    src = api.convert_source(f"{MODELS / 'digits_cnn.py'}:build", weights=str(MODELS / "digits_cnn.pt"),
                             exporter="torchscript")
    assert isinstance(src.parity, api.ParityReport) and src.parity.passed

    teacher = make_mlp()
    onnx.save(teacher, str(tmp_path / "teacher.onnx"))
    rng = np.random.default_rng(1)
    xs = rng.standard_normal((96, 16)).astype(np.float32)
    import onnxruntime as ort

    ys = ort.InferenceSession(teacher.SerializeToString()).run(None, {"input": xs})[0].argmax(1)
    res = api.distill_model(str(tmp_path / "teacher.onnx"), torch.nn.Sequential(torch.nn.Linear(16, 10)),
                            (xs[:64], ys[:64]), (xs[64:], ys[64:]),
                            api.DistillConfig(epochs=2, patience=0, threads=1),
                            baseline=False, benchmark_latency=False)
    assert isinstance(res, api.DistillResult) and res.model.graph.node and res.parity.passed
    assert issubclass(api.TorchEvaluator, object) and issubclass(api.KerasEvaluator, object)
