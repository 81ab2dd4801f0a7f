"""Pass registry, recipe loading (clear errors), Pipeline checks, graph optimization and constant folding."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import onnx
import pytest
from onnx import ModelProto, parser

from onnxopt.core.errors import InvalidInputError, PassError
from onnxopt.core.model import copy_model
from onnxopt.core.runtime import create_session
from onnxopt.optimization.recipe import available_passes, load_recipe, make_pass, parse_recipe
from onnxopt.passes.base import PassContext, PassResult, Pipeline
from onnxopt.passes.graph import FoldConstantsPass, OptimizeGraphPass, fold_constants

ROOT = Path(__file__).resolve().parents[1]


def run(model: ModelProto, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    return list(create_session(model, custom_ops=False).run(None, feed))


def test_registry_has_every_capability() -> None:
    names = set(available_passes())
    assert {"optimize_graph", "fold_constants", "quantize", "prune_magnitude", "prune_channels"} <= names


def test_unknown_pass_lists_valid_ones() -> None:
    with pytest.raises(InvalidInputError) as e:
        parse_recipe('[[passes]]\nname = "quantise"\n', "r.toml")
    msg = str(e.value)
    assert "r.toml" in msg and "'quantise'" in msg and "optimize_graph" in msg and "quantize" in msg


def test_unknown_option_lists_valid_ones() -> None:
    with pytest.raises(InvalidInputError) as e:
        parse_recipe('[[passes]]\nname = "quantize"\nper_chanel = true\n', "r.toml")
    msg = str(e.value)
    assert "'per_chanel'" in msg and "per_channel" in msg and "passes[0]" in msg


def test_invalid_toml_names_line_and_column() -> None:
    with pytest.raises(InvalidInputError) as e:
        parse_recipe('[[passes]]\nname = "optimize_graph"\nlevel = = "basic"\n', "bad.toml")
    msg = str(e.value)
    assert "bad.toml" in msg and "line 3" in msg and "column" in msg


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('[[passes]]\nname = "quantize"\nper_channel = 3\n', "expected true or false"),
        ('[[passes]]\nname = "optimize_graph"\nlevel = "fast"\n', "level must be one of"),
        ('[[passes]]\nname = "quantize"\nmode = "magic"\n', "mode .magic.: choose one of auto, dynamic, static"),
        ('[[passes]]\nlevel = "basic"\n', "has no name"),
        ('description = "nothing"\n', "no passes"),
        ('[[pass]]\nname = "optimize_graph"\n', "unknown key 'pass'"),
    ],
)
def test_bad_recipes_are_one_clear_error(text: str, needle: str) -> None:
    with pytest.raises(InvalidInputError, match=needle):
        parse_recipe(text, "r.toml")


def test_recipe_round_trips_through_toml() -> None:
    r = parse_recipe(
        'description = "x"\n[[passes]]\nname = "optimize_graph"\n[[passes]]\nname = "quantize"\n'
        'mode = "static"\nper_channel = true\nexclude_nodes = ["a", "b"]\nmax_accuracy_drop = 1\n'
    )
    again = parse_recipe(r.to_toml())
    assert again == r
    q = again.passes[1].build()
    assert q.exclude_nodes == ("a", "b") and q.max_accuracy_drop == 1.0  # type: ignore[attr-defined]


def test_example_recipes_load() -> None:
    files = sorted((ROOT / "examples" / "recipes").glob("*.toml"))
    assert len(files) >= 4
    for f in files:
        assert load_recipe(f).passes


def test_missing_recipe_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="no such recipe file"):
        load_recipe(tmp_path / "nope.toml")


@dataclass(frozen=True)
class BreakGraphPass:
    """A pass that returns an invalid model (an output nobody produces)."""

    name: ClassVar[str] = "break_graph"

    def __call__(self, model: ModelProto, context: PassContext) -> PassResult:
        m = copy_model(model)
        m.graph.output[0].name = "does_not_exist"
        return PassResult(m, True, {})


def test_pipeline_wraps_failures_with_passes_before(convnet_model: ModelProto) -> None:
    before = convnet_model.SerializeToString()
    pipe = Pipeline([OptimizeGraphPass(), BreakGraphPass()])
    with pytest.raises(PassError) as e:
        pipe.run(convnet_model)
    assert str(e.value).startswith("break_graph failed after passes [optimize_graph]")
    assert isinstance(e.value.__cause__, Exception)
    assert convnet_model.SerializeToString() == before


def test_pipeline_runs_passes_in_order_without_touching_input(convnet_model: ModelProto) -> None:
    before = convnet_model.SerializeToString()
    res = Pipeline([FoldConstantsPass(), OptimizeGraphPass()]).run(convnet_model)
    assert [s.pass_name for s in res.stages] == ["fold_constants", "optimize_graph"]
    assert convnet_model.SerializeToString() == before
    assert all(s.wall_s >= 0 for s in res.stages)
    assert res.model is res.stages[-1].result.model


def test_optimize_graph_basic_is_portable_and_exact(convnet_model: ModelProto) -> None:
    r = OptimizeGraphPass()(convnet_model, PassContext())
    assert r.modified
    ops = {n.op_type for n in r.model.graph.node}
    assert "BatchNormalization" not in ops  # folded into the conv
    assert {n.domain for n in r.model.graph.node} <= {""}
    assert [o.domain for o in r.model.opset_import] == [""]
    onnx.checker.check_model(r.model)
    x = np.random.default_rng(0).standard_normal((4, 3, 16, 16)).astype(np.float32)
    a = run(convnet_model, {"input": x})[0]
    b = run(r.model, {"input": x})[0]
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert r.report["ops_removed"] == {"BatchNormalization": 1}


def test_optimize_graph_all_writes_cpu_specific_ops(convnet_model: ModelProto) -> None:
    r = make_pass("optimize_graph", {"level": "all"})(convnet_model, PassContext())
    assert any(n.domain.startswith("com.microsoft") for n in r.model.graph.node)


FOLDABLE = """<ir_version: 8, opset_import: ["" : 17]>
g (float[N,4] x) => (float[N,4] y) <float[4] w = {1.0, 4.0, 9.0, 16.0}> {
  two = Constant<value = float {2.0}>()
  w2 = Mul(w, two)
  w3 = Sqrt(w2)
  y = Add(x, w3)
}"""


def test_fold_constants_replaces_constant_nodes_by_values() -> None:
    m = parser.parse_model(FOLDABLE)
    r = fold_constants(m)
    assert r.modified and r.report["folded_nodes"] == 3
    assert [n.op_type for n in r.model.graph.node] == ["Add"]
    assert [t.name for t in r.model.graph.initializer] == ["w3"]
    onnx.checker.check_model(r.model)
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    np.testing.assert_array_equal(run(m, {"x": x})[0], run(r.model, {"x": x})[0])
    np.testing.assert_allclose(
        onnx.numpy_helper.to_array(r.model.graph.initializer[0]), np.sqrt([2, 8, 18, 32]), rtol=1e-6
    )


def test_fold_constants_nothing_to_do(mlp_model: ModelProto) -> None:
    r = fold_constants(mlp_model)
    assert not r.modified and r.model is mlp_model and "reason" in r.report


def test_fold_constants_respects_max_bytes() -> None:
    m = parser.parse_model(FOLDABLE)
    r = FoldConstantsPass(max_bytes=8)(m, PassContext())
    # Each folded tensor (4 floats, 16 bytes) is above the limit; the scalar Constant (4 bytes) is not.
    assert r.modified and r.report["folded_nodes"] == 1 and r.report["folded_ops"] == {"Constant": 1}
    assert r.report["skipped_too_big"] == 2
    assert [n.op_type for n in r.model.graph.node] == ["Mul", "Sqrt", "Add"]
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    np.testing.assert_array_equal(run(m, {"x": x})[0], run(r.model, {"x": x})[0])


def test_fold_constants_option_validation() -> None:
    with pytest.raises(InvalidInputError, match="max_bytes"):
        make_pass("fold_constants", {"max_bytes": 0})


def test_add_postprocessing_appends_softmax_and_argmax(mlp_model: ModelProto) -> None:
    before = mlp_model.SerializeToString()
    p = make_pass("add_postprocessing", {"steps": ["softmax", "argmax"]})
    r = p(mlp_model, PassContext())
    assert r.modified and r.changes_outputs
    assert mlp_model.SerializeToString() == before
    out = r.model.graph.output[0]
    assert out.type.tensor_type.elem_type == onnx.TensorProto.INT64
    x = np.random.default_rng(0).standard_normal((6, 16)).astype(np.float32)
    logits = run(mlp_model, {"input": x})[0]
    np.testing.assert_array_equal(run(r.model, {"input": x})[0], logits.argmax(axis=1))
    probs = make_pass("add_postprocessing", {})(mlp_model, PassContext()).model
    p_out = run(probs, {"input": x})[0]
    np.testing.assert_allclose(p_out.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(p_out.argmax(axis=1), logits.argmax(axis=1))


@pytest.mark.parametrize(
    ("steps", "needle"), [(["sigmoid"], "unknown step 'sigmoid'"), (["argmax", "softmax"], "argmax must be the last")]
)
def test_add_postprocessing_rejects_bad_steps(steps: list[str], needle: str) -> None:
    with pytest.raises(InvalidInputError, match=needle):
        make_pass("add_postprocessing", {"steps": steps})
