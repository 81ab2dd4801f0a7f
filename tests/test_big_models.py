"""Models with external data: commands leave the input and its data file as they were, write
loadable outputs, keep peak memory bounded, and never write onto the input's data file."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxopt.core.external import data_files, same_graph, write_external
from onnxopt.core.model import load_model, save_model
from onnxopt.core.runtime import create_session

ROOT = Path(__file__).resolve().parents[1]
WIDTH, LAYERS = 2048, 4  # 4 x 16 MiB of float32 weights


def external_mlp(path: Path, width: int = WIDTH, layers: int = LAYERS, seed: int = 0,
                 outliers_in: int | None = None) -> Path:
    """An MLP (MatMul + Relu) x layers without node names, weights in `<name>.data` beside path;
    outliers_in: a layer whose weights get a sparse grid of 30x outliers (int8-sensitive)."""
    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "input"
    for i in range(layers):
        w = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
        if i == outliers_in:
            w[::37, ::11] *= 30
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes += [helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"]), helper.make_node("Relu", [f"m{i}"], [f"r{i}"])]
        x = f"r{i}"
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", width])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["batch", width])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path), save_as_external_data=True, location=path.name + ".data")
    return path


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _min_cosine(ref: Path, out: Path) -> float:
    x = np.random.default_rng(5).standard_normal((4, WIDTH)).astype(np.float32)
    a = create_session(ref).run(None, {"input": x})[0].astype(np.float64)
    b = create_session(out).run(None, {"input": x})[0].astype(np.float64)
    return float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).min())


def _peak_rss_mb(args: list[str]) -> tuple[int, float]:
    """(exit code, peak RSS in MB) of `onnxopt ARGS` run in a child of a fresh interpreter."""
    probe = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]).returncode; "
             "print(r, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    cli = [sys.executable, "-c", "import sys; from onnxopt.cli import main; main(sys.argv[1:])"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", probe, *cli, *args], capture_output=True, text=True, env=env,
                         check=True, timeout=600)
    code, kb = out.stdout.split()[-2:]
    return int(code), int(kb) / 1024


@pytest.mark.slow
def test_quantize_external_data_model(tmp_path: Path) -> None:
    src = external_mlp(tmp_path / "big.onnx")
    data = tmp_path / "big.onnx.data"
    before = (_digest(src), _digest(data))
    out = tmp_path / "out" / "q.onnx"
    code, peak = _peak_rss_mb(["quantize", str(src), "-o", str(out), "--mode", "dynamic", "--no-bench", "--json"])
    assert code == 0
    assert (_digest(src), _digest(data)) == before  # input and its data file untouched
    size = src.stat().st_size + data.stat().st_size
    assert peak < 3 * size / 2**20 + 1024  # the bound: 3x the model on disk + 1 GB
    assert _min_cosine(src, out) > 0.99  # loads in onnxruntime and answers like the input
    assert "MatMulInteger" in {n.op_type for n in onnx.load(str(out)).graph.node}


def test_inspect_compare_read_weights_from_the_files(tmp_path: Path) -> None:
    src = external_mlp(tmp_path / "m.onnx", width=256, layers=2)
    from click.testing import CliRunner

    from onnxopt.cli import cli

    r = CliRunner().invoke(cli, ["inspect", str(src), "--json"])
    assert r.exit_code == 0, r.output
    desc = json.loads(r.output)
    assert desc["external_data"] and desc["parameter_count"] == 2 * 256 * 256
    r = CliRunner().invoke(cli, ["compare", str(src), str(src), "--no-latency", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["fidelity"]["min_cosine"] > 0.99999


def _main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """(exit code, stderr) of the CLI entry point, errors mapped as for a user."""
    from onnxopt.cli import main

    with pytest.raises(SystemExit) as e:
        main(list(args))
    return int(e.value.code or 0), capsys.readouterr().err


def test_missing_data_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = external_mlp(tmp_path / "m.onnx", width=64, layers=1)
    (tmp_path / "m.onnx.data").unlink()
    code, err = _main(capsys, "inspect", str(src))
    assert code == 1 and "external data file missing" in err and len(err.strip().splitlines()) == 1


def test_output_never_overwrites_the_input_data_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A model whose data file is named like the output's would be: refused before any work."""
    model = onnx.load(str(external_mlp(tmp_path / "m.onnx", width=64, layers=1)))  # data loaded
    onnx.save(model, str(tmp_path / "in.onnx"), save_as_external_data=True, location="q.onnx.data",
              size_threshold=0)
    data = tmp_path / "q.onnx.data"
    before = _digest(data)
    code, err = _main(capsys, "quantize", str(tmp_path / "in.onnx"), "-o", str(tmp_path / "q.onnx"),
                      "--mode", "dynamic", "--no-bench")
    assert code == 2 and "external data" in err
    assert _digest(data) == before and not (tmp_path / "q.onnx").exists()
    assert data_files(tmp_path / "in.onnx") == [data]


def test_write_external_leaves_the_model_untouched(tmp_path: Path) -> None:
    src = external_mlp(tmp_path / "m.onnx", width=128, layers=2)
    model = load_model(src)
    snapshot = model.SerializeToString()
    out = save_model(model, tmp_path / "out" / "saved.onnx", external_data=True)
    assert model.SerializeToString() == snapshot  # no tensor moved out of the caller's proto
    assert (out.parent / "saved.onnx.data").stat().st_size >= 2 * 128 * 128 * 4
    reloaded = load_model(out)
    assert same_graph(reloaded.graph, model.graph)
    # a graph-only proto (weights still in the input's file) is written from its base directory
    graph_only = load_model(src, load_external_data=False)
    write_external(graph_only, tmp_path / "copy.onnx", base_dir=tmp_path)
    assert same_graph(load_model(tmp_path / "copy.onnx").graph, model.graph)
    assert _min_cosine_small(src, tmp_path / "copy.onnx") > 0.999999


def _min_cosine_small(a: Path, b: Path) -> float:
    x = np.random.default_rng(0).standard_normal((2, 128)).astype(np.float32)
    ya, yb = (create_session(p).run(None, {"input": x})[0].ravel() for p in (a, b))
    return float(ya @ yb / (np.linalg.norm(ya) * np.linalg.norm(yb)))


def test_big_proto_session_goes_through_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Above LARGE a proto reaches onnxruntime as a file (the result is the same model)."""
    import onnxopt.core.external as ext

    src = external_mlp(tmp_path / "m.onnx", width=128, layers=2)
    model = load_model(src)
    monkeypatch.setattr(ext, "LARGE", 1024)
    assert ext.needs_file(model)
    x = np.ones((1, 128), np.float32)
    got = create_session(model).run(None, {"input": x})[0]
    want = create_session(src).run(None, {"input": x})[0]
    np.testing.assert_array_equal(got, want)


def _scratch(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A private temporary folder for the run's work directories (tempfile's default)."""
    import tempfile

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    return scratch


def test_optimize_keeps_stage_models_in_files_and_removes_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stages above KEEP_BYTES live in optimize's work directory (the run holds their graphs only),
    sessions load them from there, and the directory is gone when optimize returns."""
    from onnxopt.optimization.recipe import parse_recipe
    from onnxopt.optimization.run import optimize
    from onnxopt.optimization.store import KEEP_BYTES, PREFIX
    from onnxopt.optimization.types import OptimizeConfig

    scratch = _scratch(monkeypatch, tmp_path)
    src = external_mlp(tmp_path / "m.onnx", width=1024, layers=5)  # 20 MiB of weights
    model = load_model(src)
    assert model.ByteSize() > KEEP_BYTES
    seen: list[list[str]] = []

    def progress(line: str) -> None:  # the work directory's files while the stages are verified
        if line.startswith("verifying"):
            seen.extend(sorted(p.name for p in d.iterdir()) for d in scratch.glob(PREFIX + "*"))

    recipe = parse_recipe('[[passes]]\nname = "optimize_graph"\n')
    r = optimize(model, recipe, OptimizeConfig(benchmark=False), progress=progress)
    assert seen == [["1-optimize_graph.onnx", "1-optimize_graph.onnx.data", "input.onnx", "input.onnx.data"]]
    assert list(scratch.iterdir()) == []  # removed after success
    stage = r.stages[1]
    assert stage.modified and stage.kept and stage.path is None and r.final == stage.name
    # the run held the stage's graph only: every weight refers to the (deleted) work directory
    assert all(t.data_location == TensorProto.EXTERNAL for t in stage.model.graph.initializer)
    assert stage.size_bytes > KEEP_BYTES and stage.fidelity.min_cosine > 0.9999
    # the result has its weights, and answers like the input
    assert not any(t.data_location == TensorProto.EXTERNAL for t in r.model.graph.initializer)
    x = np.random.default_rng(1).standard_normal((3, 1024)).astype(np.float32)
    want = create_session(src).run(None, {"input": x})[0]
    np.testing.assert_allclose(create_session(r.model).run(None, {"input": x})[0], want, rtol=1e-4, atol=1e-5)
    assert r.model.ByteSize() == pytest.approx(stage.size_bytes, rel=0.01)


@dataclass(frozen=True)
class _FailingPass:
    """A pass that raises (registered by the test that needs it only)."""

    name: ClassVar[str] = "fail_for_test"

    def __call__(self, model: onnx.ModelProto, context: object) -> object:
        raise RuntimeError("this pass always fails")


def test_optimize_removes_its_work_directory_after_a_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from onnxopt.core.errors import PassError
    from onnxopt.optimization.recipe import parse_recipe
    from onnxopt.optimization.run import optimize
    from onnxopt.optimization.types import OptimizeConfig
    from onnxopt.passes.base import REGISTRY, register_pass

    scratch = _scratch(monkeypatch, tmp_path)
    register_pass(_FailingPass)
    try:
        recipe = parse_recipe('[[passes]]\nname = "optimize_graph"\n[[passes]]\nname = "fail_for_test"\n')
        model = load_model(external_mlp(tmp_path / "m.onnx", width=256, layers=2))
        with pytest.raises(PassError, match="fail_for_test failed after passes \\[optimize_graph\\]"):
            optimize(model, recipe, OptimizeConfig(benchmark=False))
    finally:
        REGISTRY.pop("fail_for_test", None)
    assert list(scratch.iterdir()) == []  # the stages written before the failure are gone


def test_optimize_with_every_model_in_files_answers_like_the_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default recipe (graph optimization, then auto int8) with every stage and every quantized
    candidate kept in a file (thresholds at 0): the result still has its weights and answers like
    the input, the reports give the full models' sizes, and no work directory is left."""
    import onnxopt.optimization.store as store
    import onnxopt.quantization.session as qsession
    from onnxopt.optimization.run import optimize
    from onnxopt.optimization.types import OptimizeConfig

    monkeypatch.setattr(store, "KEEP_BYTES", 0)
    monkeypatch.setattr(qsession, "KEEP_BYTES", 0)
    scratch = _scratch(monkeypatch, tmp_path)
    src = external_mlp(tmp_path / "m.onnx", width=256, layers=2)
    r = optimize(load_model(src), None, OptimizeConfig(bench_runs=5, bench_seconds=0.2, warmup=1))
    assert list(scratch.iterdir()) == []
    q = next(s for s in r.stages if s.pass_name == "quantize")
    built = [c for c in q.report["candidates"] if c.get("status") == "ok" and c["name"] != "float"]
    assert built and all(c["size"] > 0.1 * r.stages[0].size_bytes for c in built)  # full sizes, not the graphs'
    assert not any(t.data_location == TensorProto.EXTERNAL for t in r.model.graph.initializer)
    x = np.random.default_rng(2).standard_normal((8, 256)).astype(np.float32)
    a = create_session(src).run(None, {"input": x})[0].astype(np.float64)
    b = create_session(r.model).run(None, {"input": x})[0].astype(np.float64)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cos.min() >= 0.99


def test_load_external_gives_back_the_model_written(tmp_path: Path) -> None:
    """What optimize and quantize load back from their work directories is the model they wrote,
    byte for byte (sizes and outputs stay what they were when models lived in memory)."""
    from onnxopt.core.external import load_external

    w = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.ones(4, np.float32), "s")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    write_external(model, tmp_path / "x.onnx")
    assert onnx.load(str(tmp_path / "x.onnx"), load_external_data=False).graph.initializer[0].data_location == TensorProto.EXTERNAL
    back = load_external(tmp_path / "x.onnx")
    assert back.SerializeToString() == model.SerializeToString()


@pytest.mark.parametrize("recipe_text", ['[[passes]]\nname = "optimize_graph"\n', '[[passes]]\nname = "fold_constants"\n'])
def test_optimize_from_a_path_holds_the_graph_only_and_gives_the_same_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recipe_text: str
) -> None:
    """optimize(path) (what the CLI runs) keeps the input's graph only, yet records the same input
    hash and writes the same bytes as optimize(proto): a changed model (optimize_graph) and the
    input itself when no pass changed it (fold_constants on a model without constants)."""
    import onnxopt.optimization.store as store
    from onnxopt.optimization.recipe import parse_recipe
    from onnxopt.optimization.run import optimize
    from onnxopt.optimization.types import OptimizeConfig

    monkeypatch.setattr(store, "KEEP_BYTES", 0)
    scratch = _scratch(monkeypatch, tmp_path)
    src = external_mlp(tmp_path / "m.onnx", width=256, layers=2)
    recipe, cfg = parse_recipe(recipe_text), OptimizeConfig(benchmark=False)
    by_path, by_proto = optimize(src, recipe, cfg), optimize(load_model(src), recipe, cfg)
    assert list(scratch.iterdir()) == []
    assert all(t.data_location == TensorProto.EXTERNAL for t in by_path.stages[0].model.graph.initializer)
    assert by_path.stages[0].size_bytes == by_proto.stages[0].size_bytes == load_model(src).ByteSize()
    assert by_path.decisions.to_json() == by_proto.decisions.to_json()
    assert by_path.final == by_proto.final
    assert by_path.model.SerializeToString() == by_proto.model.SerializeToString()
    final = next(s for s in by_path.stages if s.name == by_path.final)
    assert (final.pass_name is None) == ("fold_constants" in recipe_text)  # the input kept: loaded again
    assert final.pass_name is None or final.fidelity.min_cosine > 0.9999


def test_loaded_size_and_hash_without_loading_the_weights(tmp_path: Path) -> None:
    """A graph-only proto gives the size and model_sha256 its loaded model has (the decisions
    record's hash, computed tensor by tensor), and same_computation compares two files' models."""
    from onnxopt.core.external import (
        initializers_only,
        load_external,
        loaded_sha256,
        loaded_size,
        same_computation,
    )
    from onnxopt.optimization.decisions import model_sha256

    m = load_model(external_mlp(tmp_path / "m.onnx", width=128, layers=2))
    m.metadata_props.add(key="k", value="v")
    m.doc_string, m.graph.doc_string = "doc", "graph doc"
    m.graph.initializer.append(numpy_helper.from_array(np.arange(5, dtype=np.float32), "small"))
    for threshold in (0, 1024):  # every tensor external, or the small ones inline
        path = tmp_path / f"t{threshold}.onnx"
        onnx.save(m, str(path), save_as_external_data=True, location=f"t{threshold}.data", size_threshold=threshold)
        graph = load_model(path, load_external_data=False)
        assert initializers_only(graph)
        assert loaded_size(graph, tmp_path) == load_model(path).ByteSize()
        assert loaded_size(graph, tmp_path, default_location=False) == load_external(path).ByteSize()
        assert loaded_sha256(graph, tmp_path) == model_sha256(load_model(path))
    assert same_computation(tmp_path / "m.onnx", tmp_path / "t0.onnx") is False  # an extra initializer
    assert same_computation(tmp_path / "t0.onnx", tmp_path / "t1024.onnx")  # same model, other layout and names
    changed = load_model(tmp_path / "t0.onnx")
    w = numpy_helper.to_array(changed.graph.initializer[1]).copy()
    w[3, 4] += 1e-3
    changed.graph.initializer[1].CopyFrom(numpy_helper.from_array(w, changed.graph.initializer[1].name))
    write_external(changed, tmp_path / "changed.onnx")
    assert not same_computation(tmp_path / "t0.onnx", tmp_path / "changed.onnx")  # one weight differs


def _quantize_in_file_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, src: Path | onnx.ModelProto,
                           mode: str, seen: list[list[str]]) -> object:
    """quantize() with the file-mode threshold at 0, the quantize work directory's files listed at
    the first timing (or at the end of a single-mode run)."""
    import tempfile

    import onnxopt.quantization.api as api
    import onnxopt.quantization.auto as auto
    from onnxopt.core.progress import listening
    from onnxopt.measure.benchmark import BenchConfig
    from onnxopt.quantization.config import QuantizeConfig

    monkeypatch.setattr(api, "FROM_FILE_BYTES", 0)
    monkeypatch.setattr(auto, "GROUP_SHARE", 0.0)  # both timing rounds: one candidate per group
    scratch = _scratch(monkeypatch, tmp_path)
    real_bench = auto._bench

    def grouped(sess: object, models: list, names: list[str], *args: object) -> object:
        assert names[:2] == ["input", "float"] and len(names) <= 3, names  # input, float, one candidate
        return real_bench(sess, models, names, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(auto, "_bench", grouped)

    def listen(line: str) -> None:
        if "timing" in line and not seen:
            seen.extend(sorted(p.name for p in d.iterdir() if p.is_file()) for d in scratch.glob("onnxopt-quantize-*"))

    bench = BenchConfig(runs=3, warmup=1)
    with listening(listen):
        result = api.quantize(src, QuantizeConfig(mode=mode, quick_runs=3, final_runs=3), bench=bench)
    assert list(Path(tempfile.gettempdir()).iterdir()) == []  # the work directory is gone
    return result


def test_quantize_in_file_mode_holds_the_graph_only_and_answers_like_memory_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A big model (threshold lowered) is quantized from its file: a named input is not copied
    (sessions and the quantizer read it where it is), the float model that computes the same is
    timed once, sizes are the loaded model's, and the result is the one memory mode builds."""
    from onnxopt.quantization.api import quantize
    from onnxopt.quantization.config import QuantizeConfig
    from onnxopt.quantization.result import int8_floor

    src = external_mlp(tmp_path / "m.onnx", width=256, layers=3)
    named = save_model(load_model(src), tmp_path / "named" / "n.onnx", external_data=True)  # every node named
    before = (_digest(named), _digest(named.with_name("n.onnx.data")))
    seen: list[list[str]] = []
    r = _quantize_in_file_mode(tmp_path, monkeypatch, named, "auto", seen)
    assert (_digest(named), _digest(named.with_name("n.onnx.data"))) == before
    assert seen and "input.onnx" not in seen[0] and "float_folded.onnx.data" in seen[0]  # the input read in place
    kept = [n for n in seen[0] if n.endswith(".onnx") and n != "float_folded.onnx"]  # candidates: the quantizer's files
    assert kept and all(f"{n}.data" in seen[0] for n in kept)
    assert all(n[: -len(".data")] in seen[0] for n in seen[0] if n.endswith(".data"))  # no data file left alone
    full = load_model(named)
    assert r.report["size_before"] == full.ByteSize() and r.report["int8_floor"] == int8_floor(full)
    assert any("timed once" in n for n in r.report["notes"])
    briefly = [c for c in r.report["candidates"] if c["status"] == "ok" and "-float" not in c["name"]]  # not fallback's
    assert len(briefly) >= 3 and all("quick" in c for c in briefly)  # timed one group each (GROUP_SHARE 0)
    # unnamed input: a named copy in the work directory; dynamic int8 gives memory mode's outputs
    seen.clear()
    monkeypatch.undo()
    in_memory = quantize(load_model(src), QuantizeConfig(mode="dynamic"))
    (tmp_path / "b").mkdir()
    by_file = _quantize_in_file_mode(tmp_path / "b", monkeypatch, src, "dynamic", seen)
    assert by_file.report["nodes"]["quantized"] == in_memory.report["nodes"]["quantized"]  # the same names
    x = np.random.default_rng(3).standard_normal((4, 256)).astype(np.float32)
    np.testing.assert_array_equal(create_session(by_file.model).run(None, {"input": x})[0],
                                  create_session(in_memory.model).run(None, {"input": x})[0])
    assert by_file.report["size_before"] == in_memory.report["size_before"]


def test_brief_timing_groups_add_up_to_the_budget() -> None:
    from onnxopt.quantization.auto import _groups

    assert _groups([], 10) == [[]]
    assert _groups([4, 4, 4, 20, 1], 8) == [[0, 1], [2], [3], [4]]
    assert _groups([4, 4, 4], 100) == [[0, 1, 2]]


@dataclass(frozen=True)
class _FilePass:
    """A pass that reads its model from the file (Pipeline.run hands over the graph and the path)."""

    name: ClassVar[str] = "file_pass_for_test"
    reads_file: ClassVar[bool] = True
    got: list = dataclasses.field(default_factory=list, compare=False)

    def __call__(self, model: onnx.ModelProto, context: object) -> object:
        from onnxopt.passes.base import PassResult

        self.got.append((model, getattr(context, "model_path", None)))
        return PassResult(model, False, {})


@dataclass(frozen=True)
class _WeightsPass:
    """A pass that needs the weights (records whether it got them)."""

    name: ClassVar[str] = "weights_pass_for_test"
    got: list = dataclasses.field(default_factory=list, compare=False)

    def __call__(self, model: onnx.ModelProto, context: object) -> object:
        from onnxopt.passes.base import PassResult, model_has_weights

        self.got.append(model_has_weights(model))
        return PassResult(model, False, {})


def test_pipeline_hands_a_file_reading_pass_the_graph_and_reloads_for_the_next(tmp_path: Path) -> None:
    """With a store that keeps graphs only, a reads_file pass (optimize_graph too) gets the stage's
    graph and its file; a pass that needs the weights after it gets them back from the file."""
    from onnxopt.optimization.store import StageStore
    from onnxopt.passes.base import PassContext, Pipeline, model_has_weights
    from onnxopt.passes.graph import OptimizeGraphPass

    src = external_mlp(tmp_path / "m.onnx", width=128, layers=2)
    file_pass = _FilePass()
    with StageStore(str(tmp_path)) as store:
        def keep_graph(model: onnx.ModelProto, name: str) -> tuple[Path, onnx.ModelProto]:
            path = store.dir / f"{name}.onnx"
            write_external(model, path)
            return path, onnx.load(str(path), load_external_data=False)

        weights_pass = _WeightsPass()
        result = Pipeline([OptimizeGraphPass(), file_pass, weights_pass, OptimizeGraphPass()]).run(
            load_model(src), PassContext(), store=keep_graph)
        (model, path), = file_pass.got
        assert not model_has_weights(model) and path == result.stages[0].path and path.exists()
        assert weights_pass.got == [True]  # loaded again from the file
        last = result.stages[-1].path
        assert last is not None
        x = np.ones((1, 128), np.float32)
        want = create_session(src).run(None, {"input": x})[0]
        np.testing.assert_allclose(create_session(last).run(None, {"input": x})[0], want, rtol=1e-5)


def test_optimize_a_big_model_from_files_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """optimize(path) with every threshold at 0 (as for a big model): the input is hashed without
    loading it (the hash of the loaded model), the quantize pass works from the stage file (its
    float model is that file: timed once), a stage computing what an earlier one does is timed
    once, as it, and the result answers like the input."""
    import onnxopt.optimization.run as run
    import onnxopt.optimization.store as store
    import onnxopt.quantization.api as api
    from onnxopt.optimization.decisions import model_sha256
    from onnxopt.optimization.types import OptimizeConfig

    for module, name in ((store, "KEEP_BYTES"), (api, "FROM_FILE_BYTES"), (run, "TWIN_BYTES")):
        monkeypatch.setattr(module, name, 0)
    scratch = _scratch(monkeypatch, tmp_path)
    src = external_mlp(tmp_path / "m.onnx", width=256, layers=2)
    said: list[str] = []
    r = run.optimize(src, None, OptimizeConfig(bench_runs=5, bench_seconds=0.2, warmup=1), progress=said.append)
    assert list(scratch.iterdir()) == []
    assert r.decisions.input_sha256 == model_sha256(load_model(src))
    q = next(s for s in r.stages if s.pass_name == "quantize")
    assert any("timed once, as the input" in n for n in q.report["notes"])
    graph = next(s for s in r.stages if s.pass_name == "optimize_graph")
    assert graph.modified  # onnxruntime rewrote the file (the computation is the input's)
    assert any(line.startswith(f"{graph.name} computes what original does") for line in said)
    assert graph.bench is not None and r.stages[0].bench is not None
    assert graph.bench.samples_ms == r.stages[0].bench.samples_ms
    x = np.random.default_rng(2).standard_normal((8, 256)).astype(np.float32)
    a = create_session(src).run(None, {"input": x})[0].astype(np.float64)
    b = create_session(r.model).run(None, {"input": x})[0].astype(np.float64)
    assert ((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).min() >= 0.99


def test_optimize_graph_from_the_file_gives_what_it_gives_from_the_proto(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """optimize_graph handed the file (graph only + context.model_path) writes the same model and
    the same report as when handed the loaded model (which, above LARGE, it writes to a file too)."""
    import onnxopt.core.external as ext
    from onnxopt.passes.base import PassContext
    from onnxopt.passes.graph import OptimizeGraphPass

    monkeypatch.setattr(ext, "LARGE", 1024)
    src = save_model(load_model(external_mlp(tmp_path / "m.onnx", width=128, layers=2)),  # named, as stages are
                     tmp_path / "named" / "n.onnx", external_data=True)
    by_proto = OptimizeGraphPass()(load_model(src), PassContext())
    graph = load_model(src, load_external_data=False)
    by_file = OptimizeGraphPass()(graph, PassContext(model_path=src))
    assert by_file.model.SerializeToString() == by_proto.model.SerializeToString()
    assert (by_file.modified, by_file.report) == (by_proto.modified, by_proto.report)
    assert not any(t.data_location == TensorProto.EXTERNAL for t in by_file.model.graph.initializer)


@pytest.mark.parametrize("per_channel", [False, True])
def test_lean_shape_inference_writes_what_onnxruntime_writes(tmp_path: Path, per_channel: bool) -> None:
    """Dynamic int8 of onnxruntime with its shape re-inference done on the graph (big models,
    engine.lean_shape_inference) writes the same files, byte for byte, as with its deep-copy
    save-and-reload."""
    from onnxruntime.quantization import quantize_dynamic

    from onnxopt.quantization.engine import lean_shape_inference, quiet_quantizer

    src = external_mlp(tmp_path / "m.onnx", width=256, layers=3)
    outs = []
    for lean in (False, True):
        out = tmp_path / ("lean" if lean else "plain") / "q.onnx"
        out.parent.mkdir()
        with quiet_quantizer(), lean_shape_inference() if lean else contextlib.nullcontext():
            quantize_dynamic(str(src), str(out), per_channel=per_channel, use_external_data_format=True,
                             extra_options={"MatMulConstBOnly": True})
        outs.append((out.read_bytes(), out.with_name("q.onnx.data").read_bytes()))
    assert outs[0] == outs[1]
    from onnxruntime.quantization import (  # the block restored onnxruntime's function
        onnx_quantizer,
        quant_utils,
    )

    assert onnx_quantizer.save_and_reload_model_with_shape_infer is quant_utils.save_and_reload_model_with_shape_infer


def test_sizes_and_writes_of_a_whole_proto_one_tensor_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """byte_size equals ByteSize() and a big model's inline save writes SerializeToString()'s bytes,
    both without protobuf serializing the whole model (upb's ByteSize() does)."""
    import onnxopt.core.external as ext

    m = load_model(external_mlp(tmp_path / "m.onnx", width=200, layers=3))
    m.graph.initializer.append(numpy_helper.from_array(np.arange(3, dtype=np.int64), "small"))
    m.metadata_props.add(key="k", value="v")
    assert ext.byte_size(m) == m.ByteSize() and ext.graph_byte_size(m.graph) == m.graph.ByteSize()
    assert ext.byte_size(onnx.ModelProto()) == 0
    monkeypatch.setattr(ext, "LARGE", 1024)  # save_model writes above LARGE piece by piece
    out = save_model(m, tmp_path / "out" / "m.onnx", external_data=False)
    assert out.read_bytes() == m.SerializeToString()
