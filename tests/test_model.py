"""Tests for onnxopt.model: load, validate, describe, atomic save."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from onnxopt.core.errors import InvalidModelError, OnnxoptError
from onnxopt.core.model import describe, load_model, save_model, validate_model
from onnxopt.core.runtime import create_session
from tests.conftest import make_mlp


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_describe_mlp(mlp_path: Path) -> None:
    d = describe(mlp_path)
    assert [i.name for i in d.inputs] == ["input"]
    assert d.inputs[0].shape == ("batch", 16)
    assert d.inputs[0].dtype == "float"
    assert d.outputs[0].shape == ("batch", 10)
    assert d.opsets == {"ai.onnx": 17}
    assert d.op_histogram == {"Add": 1, "Gemm": 1, "MatMul": 1, "Relu": 1}
    assert d.parameter_count == 16 * 32 + 32 + 32 * 10 + 10
    assert d.initializer_bytes == 4 * d.parameter_count
    assert d.file_size == mlp_path.stat().st_size


def test_describe_digits_cnn(digits_cnn: Path) -> None:
    d = describe(digits_cnn)
    assert d.inputs[0].shape[1:] == (1, 8, 8)
    assert "Conv" in d.op_histogram
    assert d.parameter_count > 10_000


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "file is empty"),
        (b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, "not"),
        (b"hello world, this is text\n", "not"),
    ],
)
def test_load_rejects_bad_files(tmp_path: Path, content: bytes, message: str) -> None:
    p = tmp_path / "bad.onnx"
    p.write_bytes(content)
    with pytest.raises(InvalidModelError, match=message) as e:
        load_model(p)
    assert str(p) in str(e.value)


def test_load_rejects_missing_and_directory(tmp_path: Path) -> None:
    with pytest.raises(InvalidModelError, match="no such file"):
        load_model(tmp_path / "missing.onnx")
    with pytest.raises(InvalidModelError, match="directory"):
        load_model(tmp_path)


def test_load_rejects_truncated(tmp_path: Path, digits_cnn: Path) -> None:
    p = tmp_path / "trunc.onnx"
    p.write_bytes(digits_cnn.read_bytes()[:5000])
    with pytest.raises(InvalidModelError):
        validate_model(load_model(p))


def test_validate_rejects_checker_failure(tmp_path: Path) -> None:
    model = make_mlp()
    model.graph.node[0].input[1] = "does_not_exist"
    with pytest.raises(InvalidModelError, match="checker"):
        validate_model(model)


def test_external_data_roundtrip_and_missing(tmp_path: Path, mlp_model: onnx.ModelProto) -> None:
    out = save_model(mlp_model, tmp_path / "ext.onnx", external_data=True)
    data = tmp_path / "ext.onnx.data"
    assert data.exists()
    assert not list(tmp_path.glob(".ext.onnx.*")), "temporary files left behind"
    loaded = load_model(out)
    validate_model(loaded)
    sess = create_session(out)
    x = np.ones((2, 16), np.float32)
    ref = create_session(mlp_model).run(None, {"input": x})[0]
    np.testing.assert_allclose(sess.run(None, {"input": x})[0], ref, rtol=1e-6)
    data.unlink()
    with pytest.raises(InvalidModelError, match="external data"):
        load_model(out)


def test_save_is_atomic_and_refuses_input(tmp_path: Path, mlp_path: Path) -> None:
    before = _sha(mlp_path)
    model = load_model(mlp_path)
    with pytest.raises(OnnxoptError, match="refusing to overwrite"):
        save_model(model, mlp_path, input_path=mlp_path)
    assert _sha(mlp_path) == before
    out = save_model(model, tmp_path / "sub" / "copy.onnx", input_path=mlp_path)
    assert load_model(out).graph.node[0].op_type == "MatMul"
    assert sorted(p.name for p in out.parent.iterdir()) == ["copy.onnx"]


def test_save_failure_leaves_no_file(
    tmp_path: Path, mlp_model: onnx.ModelProto, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that dies half-way (disk full) leaves neither the target nor temp files."""
    import onnxopt.core.model as m

    def half_write(path: Path, data: bytes) -> None:
        path.write_bytes(data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(m, "_write_bytes", half_write)
    with pytest.raises(OSError):
        save_model(mlp_model, tmp_path / "x.onnx")
    assert list(tmp_path.iterdir()) == []


def test_custom_ops_from_onnxruntime_extensions_load() -> None:
    """A model using an onnxruntime-extensions op validates and runs (the library is registered)."""
    node = helper.make_node("StringUpper", ["x"], ["y"], domain="ai.onnx.contrib")
    graph = helper.make_graph(
        [node],
        "strings",
        [helper.make_tensor_value_info("x", onnx.TensorProto.STRING, [None])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.STRING, [None])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.contrib", 1)]
    )
    model.ir_version = 8
    validate_model(model)
    out = create_session(model).run(None, {"x": np.array(["abc"], dtype=object)})[0]
    assert out.tolist() == ["ABC"]
    with pytest.raises(InvalidModelError, match="not a registered"):
        create_session(model, custom_ops=False)


def test_load_npz_rejects_non_numpy_files(tmp_path: Path) -> None:
    from onnxopt.core.errors import InvalidInputError
    from onnxopt.core.feeds import load_npz

    p = tmp_path / "data.npz"
    p.write_text('{"not": "numpy"}')
    with pytest.raises(InvalidInputError, match="not an .npz or .npy file"):
        load_npz(p)
    good = tmp_path / "good.npz"
    np.savez(good, input=np.ones((2, 3), np.float32))
    assert load_npz(good)["input"].shape == (2, 3)
    single = tmp_path / "x.npy"
    np.save(single, np.zeros(4, np.float32))
    assert load_npz(single)[""].shape == (4,)
