"""FilePlan refuses unsafe plans before work; Outputs writes all or nothing; scratch_cwd cleans up;
the option and data validators refuse what they must."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from onnxopt.core.checks import check_data, check_finite, check_labels, check_number
from onnxopt.core.errors import InvalidInputError, InvalidOptionError, OnnxoptError
from onnxopt.core.files import FilePlan, Outputs, scratch_cwd, staged


def _tiny() -> onnx.ModelProto:
    node = helper.make_node("Relu", ["x"], ["y"])
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", 1, [1, 2])],
                          [helper.make_tensor_value_info("y", 1, [1, 2])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def test_write_onto_a_read_file_is_refused(tmp_path: Path) -> None:
    model = tmp_path / "in.onnx"
    model.write_bytes(b"x")
    with pytest.raises(InvalidInputError, match="--report-md .*is the model this command reads"):
        FilePlan.of(reads={"model": model}, writes={"-o": tmp_path / "o.onnx", "--report-md": model}).check()


def test_links_to_a_read_file_are_the_same_file(tmp_path: Path) -> None:
    model = tmp_path / "in.onnx"
    model.write_bytes(b"x")
    (tmp_path / "sym.onnx").symlink_to(model)
    os.link(model, tmp_path / "hard.onnx")
    for alias in ("sym.onnx", "hard.onnx"):
        with pytest.raises(InvalidInputError, match="never overwrites its inputs"):
            FilePlan.of(reads={"model": model}, writes={"-o": tmp_path / alias}).check()


def test_two_writes_to_one_path_are_refused(tmp_path: Path) -> None:
    out = tmp_path / "o.onnx"
    with pytest.raises(InvalidInputError, match="name the same file"):
        FilePlan.of(writes={"-o": out, "--report": tmp_path / "." / "o.onnx"}).check()


def test_unwritable_destination_is_refused(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as a user that can write anywhere (root)")
        with pytest.raises(InvalidInputError, match="cannot write into"):
            FilePlan.of(writes={"-o": ro / "sub" / "o.onnx"}).check()
    finally:
        ro.chmod(0o700)


def test_a_directory_as_output_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="is a directory"):
        FilePlan.of(writes={"-o": tmp_path}).check()


def test_outputs_commit_writes_everything(tmp_path: Path) -> None:
    plan = FilePlan.of(writes={"-o": tmp_path / "m.onnx", "--report": tmp_path / "r.md"})
    with staged(plan) as out:
        out.model(tmp_path / "m.onnx", _tiny())
        out.text(tmp_path / "r.md", "# ok\n")
        assert not (tmp_path / "m.onnx").exists()  # nothing visible before commit
    assert onnx.load(str(tmp_path / "m.onnx")).graph.node[0].op_type == "Relu"
    assert (tmp_path / "r.md").read_text() == "# ok\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "r.md"]


def test_outputs_failure_leaves_nothing_and_keeps_old_files(tmp_path: Path) -> None:
    old = tmp_path / "m.onnx"
    old.write_bytes(b"previous")
    with pytest.raises(RuntimeError), Outputs() as out:
        out.model(old, _tiny())
        out.text(tmp_path / "r.md", "report")
        raise RuntimeError("a later step failed")
    assert old.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_options_are_usage_errors(value: float) -> None:
    with pytest.raises(InvalidOptionError, match="finite") as e:
        check_number("--min-cosine", value, low=0, high=1)
    assert e.value.exit_code == 2


def test_range_messages_state_the_range() -> None:
    with pytest.raises(InvalidOptionError, match=r"must be in \(0, 1\]"):
        check_number("--min-cosine", 0.0, low=0, high=1, low_open=True)
    with pytest.raises(InvalidOptionError, match=">= 0"):
        check_number("--seed", -1, low=0)
    check_number("--min-cosine", 1.0, low=0, high=1, low_open=True)


def test_nan_in_data_names_key_and_sample() -> None:
    x = np.zeros((4, 3), np.float32)
    x[2, 1] = np.nan
    with pytest.raises(InvalidInputError, match="'input'.*first at sample 2"):
        check_finite({"input": x, "ids": np.zeros((4, 3), np.int64)}, "val.npz")


@pytest.mark.parametrize(
    "labels, needle",
    [
        (np.zeros((4, 10)), "1-D"),
        (np.array([0, 1, np.nan, 2]), "sample 2"),
        (np.array([0, -1, 1, 2]), "start at 0"),
        (np.array([0, 1, 10, 2]), "10 classes"),
        (np.array([0, 1, 2]), "3 labels for 4 samples"),
        (np.array(["a", "b", "c", "d"]), "must be integers"),
    ],
)
def test_bad_labels_are_rejected(labels: np.ndarray, needle: str) -> None:
    with pytest.raises(InvalidInputError, match=needle):
        check_labels(labels, 4, "val.npz", classes=10)


def test_good_labels_pass_as_int64() -> None:
    out = check_labels(np.array([0.0, 3.0, 9.0]), 3, "val.npz", classes=10)
    assert out.dtype == np.int64 and out.tolist() == [0, 3, 9]


def test_outputs_error_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OnnxoptError, match="cannot write"), Outputs() as out:
        out.text(blocker / "r.md", "x")


def test_a_file_in_the_way_of_the_output_folder_is_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(InvalidInputError, match="cannot write into .*file"):
        FilePlan.of(writes={"--report-json": blocker / "sub" / "r.json"}).check()


def test_clashing_paths_are_usage_errors(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    with pytest.raises(InvalidOptionError) as e:
        FilePlan.of(reads={"input model": model}, writes={"-o": model}).check()
    assert e.value.exit_code == 2


def test_work_dirs_are_planned_too(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    with pytest.raises(InvalidOptionError, match="--workdir .*is a file"):
        FilePlan.of(dirs={"--workdir": model}).check()
    with pytest.raises(InvalidOptionError, match="is the input model"):
        FilePlan.of(reads={"input model": model}, dirs={"--workdir": model}).check()
    with pytest.raises(InvalidInputError, match="cannot write into"):
        FilePlan.of(dirs={"--workdir": model / "w"}).check()
    FilePlan.of(dirs={"--workdir": tmp_path / "new" / "w"}).check()
    assert not (tmp_path / "new").exists()  # checking creates nothing


def test_failed_outputs_remove_the_folders_they_made(tmp_path: Path) -> None:
    (tmp_path / "keep").mkdir()
    with pytest.raises(RuntimeError), Outputs() as out:
        out.model(tmp_path / "a" / "b" / "m.onnx", _tiny())
        out.text(tmp_path / "keep" / "r.md", "report")
        raise RuntimeError("a later step failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep"] and not any((tmp_path / "keep").iterdir())


def test_outputs_path_is_for_code_that_writes_the_file_itself(tmp_path: Path) -> None:
    with Outputs() as out:
        staged_path = out.path(tmp_path / "plots" / "p.png")
        assert staged_path.name == "p.png" and staged_path.parent != tmp_path / "plots"
        staged_path.write_bytes(b"png")
        (staged_path.parent / "p.png.extra").write_bytes(b"sibling")
        out.commit()
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["p.png", "p.png.extra"]


def test_scratch_cwd_is_removed_and_the_cwd_restored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RuntimeError), scratch_cwd() as scratch:
        assert Path.cwd() == scratch.resolve()
        Path("sym_shape_infer_temp.onnx").write_bytes(b"left by a tool")
        raise RuntimeError("the tool failed")
    assert Path.cwd() == tmp_path.resolve() and not scratch.exists() and not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("array", "needle"),
    [
        (np.array(["a", "b"]), "holds <U1 values"),
        (np.array([1 + 2j]), "holds complex128 values"),
        (np.array([[0.0], [np.inf]], dtype=np.float32), "first at sample 1"),
    ],
)
def test_check_data_refuses_what_no_model_can_use(array: np.ndarray, needle: str) -> None:
    with pytest.raises(InvalidInputError, match=needle):
        check_data({"input": array}, "d.npz")


def test_check_data_checks_labels_against_the_classes() -> None:
    x = np.zeros((3, 2), np.float32)
    assert check_data({"x": x}, "d.npz", labels=np.array([0.0, 1.0, 2.0]), classes=3).dtype == np.int64  # type: ignore[union-attr]
    with pytest.raises(InvalidInputError, match="label of sample 2 is 3 but the model has 3 classes"):
        check_data({"x": x}, "d.npz", labels=np.array([0, 1, 3]), classes=3)


def test_empty_data_is_one_line() -> None:
    from onnxopt.core.checks import check_sample_counts

    with pytest.raises(InvalidInputError, match="'x' holds no samples"):
        check_sample_counts(_tiny_batched(), {"x": np.zeros((0, 2), np.float32)}, "val.npz")


def test_absurd_declared_dims_are_refused_before_allocating() -> None:
    from onnxopt.core.feeds import synthesize_feed

    model = _tiny_batched(width=2**62)
    with pytest.raises(InvalidInputError, match="would take .* bytes; pass --shape"):
        synthesize_feed(model)


def _tiny_batched(width: int = 2) -> onnx.ModelProto:
    node = helper.make_node("Relu", ["x"], ["y"])
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", 1, ["batch", width])],
                          [helper.make_tensor_value_info("y", 1, ["batch", width])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
