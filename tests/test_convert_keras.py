"""Keras -> ONNX conversion: parity, dynamic batch, metadata, sources (.keras, .h5, SavedModel, factory), bad input."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxopt.conversion.api import convert_source, from_keras
from onnxopt.core.errors import InvalidInputError, OnnxoptError
from onnxopt.core.runtime import create_session

pytestmark = pytest.mark.keras
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def keras():  # type: ignore[no-untyped-def]
    pytest.importorskip("tensorflow")
    from onnxopt.frameworks import require_keras

    k = require_keras()
    k.utils.set_random_seed(0)
    return k


def _sequential(keras):  # type: ignore[no-untyped-def]
    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input((6, 6, 2)),
        keras.layers.Conv2D(4, 3, padding="same"),
        keras.layers.BatchNormalization(),
        keras.layers.ReLU(),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(3),
    ])


def _two_inputs(keras):  # type: ignore[no-untyped-def]
    keras.utils.set_random_seed(1)
    a = keras.Input((8,), name="a")
    b = keras.Input((4,), name="b")
    h = keras.layers.Dense(16, activation="tanh")(a) * keras.layers.Dense(16, activation="sigmoid")(b)
    return keras.Model([a, b], [keras.layers.Dense(2, name="score")(h), keras.layers.Dense(5, name="emb")(h)])


def _residual(keras):  # type: ignore[no-untyped-def]
    keras.utils.set_random_seed(2)
    x = inp = keras.Input((8, 8, 4), name="image")
    y = keras.layers.Conv2D(4, 3, padding="same", use_bias=False)(x)
    y = keras.layers.BatchNormalization()(y)
    y = keras.layers.ReLU()(y)
    y = keras.layers.Conv2D(4, 3, padding="same")(y)
    x = keras.layers.ReLU()(keras.layers.Add()([x, y]))
    out = keras.layers.Dense(3, name="logits")(keras.layers.GlobalAveragePooling2D()(x))
    return keras.Model(inp, out)


def _check_batches(model: onnx.ModelProto, keras_model, shapes: dict[str, tuple[int, ...]]) -> None:  # type: ignore[no-untyped-def]
    sess = create_session(model)
    for batch in (1, 5):
        rng = np.random.default_rng(batch)
        feed = {n: rng.standard_normal((batch, *s)).astype(np.float32) for n, s in shapes.items()}
        got = sess.run(None, feed)
        args = list(feed.values())
        want = keras_model(args[0] if len(args) == 1 else args, training=False)
        want = want if isinstance(want, (list, tuple)) else [want]
        for g, w in zip(got, want):
            assert g.shape[0] == batch
            np.testing.assert_allclose(g, np.asarray(w), atol=1e-4)


def test_sequential_parity_dynamic_batch_metadata(keras, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    m = _sequential(keras)
    out = tmp_path / "seq.onnx"
    r = from_keras(m, output=out)
    assert r.framework == "keras" and r.exporter == "keras"
    assert r.parity.passed and r.parity.max_abs < 1e-5
    saved = onnx.load(str(out))
    meta = {p.key: p.value for p in saved.metadata_props}
    assert meta["onnxopt.source_framework"] == "keras"
    assert meta["onnxopt.source_framework_version"] == keras.__version__
    assert meta["onnxopt.exporter"] == "keras"
    assert "onnxopt.parity_max_abs" in meta and "onnxopt.version" in meta
    assert saved.graph.input[0].name == "input"
    assert saved.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert {o.version for o in saved.opset_import if o.domain in ("", "ai.onnx")} == {17}
    _check_batches(saved, m, {"input": (6, 6, 2)})


def test_functional_two_inputs_two_outputs(keras) -> None:  # type: ignore[no-untyped-def]
    m = _two_inputs(keras)
    r = from_keras(m)
    assert [i.name for i in r.model.graph.input] == ["a", "b"]
    assert [o.name for o in r.model.graph.output] == ["score", "emb"]
    assert r.parity.passed and set(r.parity.per_output) == {"score", "emb"}
    _check_batches(r.model, m, {"a": (8,), "b": (4,)})


def test_residual_block_static_batch(keras) -> None:  # type: ignore[no-untyped-def]
    m = _residual(keras)
    r = from_keras(m, example_inputs=(np.zeros((2, 8, 8, 4), np.float32),), dynamic_batch=False)
    assert r.parity.passed and r.parity.max_abs < 1e-4
    assert r.model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2
    assert r.report["outputs"][0]["name"] == "logits"


def test_saved_files_and_savedmodel(keras, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    m = _residual(keras)
    m.save(tmp_path / "m.keras")
    m.save(tmp_path / "m.h5")
    m.export(str(tmp_path / "sm"), format="tf_saved_model", verbose=False)
    r1 = convert_source(str(tmp_path / "m.keras"), output=tmp_path / "a.onnx")
    r2 = convert_source(str(tmp_path / "m.h5"))
    r3 = convert_source(str(tmp_path / "sm"), output_names=["logits"])
    assert r3.framework == "tensorflow" and r3.exporter == "tf2onnx"
    for r in (r1, r2, r3):
        assert r.parity.passed and r.parity.max_abs < 1e-4
        _check_batches(r.model, m, {r.model.graph.input[0].name: (8, 8, 4)})
    assert (tmp_path / "a.onnx").exists()


def test_factory_with_weights(keras, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "net.py"
    src.write_text(textwrap.dedent("""
        import keras
        def build():
            return keras.Sequential([keras.Input((5,)), keras.layers.Dense(4, activation="relu"), keras.layers.Dense(2)])
        def broken():
            raise ValueError("no such width")
        def wrong():
            return 42
    """))
    import importlib.util

    spec = importlib.util.spec_from_file_location("net_for_weights", src)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    trained = mod.build()
    keras.utils.set_random_seed(5)
    trained.set_weights([np.random.default_rng(i).standard_normal(w.shape).astype(np.float32)
                         for i, w in enumerate(trained.get_weights())])
    trained.save_weights(tmp_path / "w.weights.h5")
    r = convert_source(f"{src}:build", weights=str(tmp_path / "w.weights.h5"))
    x = np.random.default_rng(0).standard_normal((4, 5)).astype(np.float32)
    (got,) = create_session(r.model).run(None, {"input": x})
    np.testing.assert_allclose(got, np.asarray(trained(x, training=False)), atol=1e-4)
    with pytest.raises(InvalidInputError, match=r"broken raised ValueError: no such width"):
        convert_source(f"{src}:broken")
    with pytest.raises(InvalidInputError, match="returned int; it must return a torch.nn.Module or a keras.Model"):
        convert_source(f"{src}:wrong")


def test_not_a_keras_file(keras, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "broken.keras"
    bad.write_bytes(b"PK\x03\x04 definitely not a zip archive")
    with pytest.raises(InvalidInputError, match="broken.keras: not a loadable Keras model"):
        convert_source(str(bad), output=tmp_path / "o.onnx")
    assert not (tmp_path / "o.onnx").exists()
    folder = tmp_path / "folder"
    folder.mkdir()
    with pytest.raises(InvalidInputError, match="without saved_model.pb"):
        convert_source(str(folder))


def test_unbuilt_model_needs_shape(keras) -> None:  # type: ignore[no-untyped-def]
    m = keras.Sequential([keras.layers.Dense(2)])
    with pytest.raises(InvalidInputError, match="--input-shape"):
        from_keras(m)
    r = from_keras(m, example_inputs=(np.zeros((1, 3), np.float32),))
    assert r.parity.passed


def test_not_a_keras_model(keras) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(OnnxoptError, match="expected a keras.Model"):
        from_keras(object())


def test_digits_keras_real_data(keras) -> None:  # type: ignore[no-untyped-def]
    data = dict(np.load(ROOT / "models" / "digits_val.npz"))
    r = convert_source(str(ROOT / "models" / "digits_keras.keras"), data=data)
    assert r.parity.passed and r.parity.max_abs < 1e-4
    assert r.parity.samples == 3 + 256
    assert [o.name for o in r.model.graph.output] == ["logits"]
    (logits,) = create_session(r.model).run(None, {"input": data["input"]})
    assert (logits.argmax(1) == data["labels"]).mean() > 0.95


def test_op_without_onnx_equivalent(keras) -> None:  # type: ignore[no-untyped-def]
    import tensorflow as tf

    class Bessel(keras.layers.Layer):
        def call(self, x):  # type: ignore[no-untyped-def]
            return tf.math.bessel_i1e(x)

    inp = keras.Input((4,))
    with pytest.raises(OnnxoptError, match="keras export: the exporter left op BesselI1e with no ONNX equivalent"):
        from_keras(keras.Model(inp, Bessel()(inp)))
