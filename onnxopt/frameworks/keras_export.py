"""Keras / TensorFlow side of `convert`: run a model in inference mode and export it to ONNX."""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import ModelProto

from onnxopt.conversion.types import ExportRequest
from onnxopt.core.errors import InvalidInputError, UnsupportedModelError
from onnxopt.frameworks import require_keras
from onnxopt.frameworks.quiet import exporting, quiet_exporter
from onnxopt.frameworks.quiet import shorten_error as _shorten

log = logging.getLogger(__name__)

_NOISY_LOGGERS = ("tf2onnx", "tensorflow", "absl", "keras", "h5py")


class KerasExportError(UnsupportedModelError):
    """tf2onnx / keras could not export the model; the message is the exporter's, shortened."""


def quiet() -> contextlib.AbstractContextManager[None]:
    """Silence tf2onnx and TensorFlow while they export."""
    return quiet_exporter(_NOISY_LOGGERS)


_PATTERNS = (
    (re.compile(r"Tensorflow op \[[^\]]*: ([\w.]+)\] is not supported"), "TensorFlow op {0} is not supported by tf2onnx"),
    (re.compile(r"Unsupported ops: Counter\((\{.*?\})\)"), "unsupported TensorFlow ops {0}"),
    (re.compile(r"(opset \d+ is not supported[^\n]*)"), "{0}"),
)


def shorten_error(e: BaseException, limit: int = 240) -> str:
    """The exporter's message cut down to what a user can act on."""
    return _shorten(e, _PATTERNS, limit=limit)


def _export_failed(e: BaseException) -> KerasExportError:
    return KerasExportError(shorten_error(e))


@contextlib.contextmanager
def _exporting() -> Iterator[None]:
    """Quiet, with the tf2onnx patch applied; any failure inside as a KerasExportError."""
    with exporting(_NOISY_LOGGERS, _export_failed):
        _patch_tf2onnx()
        yield


def _clean_name(name: str, fallback: str) -> str:
    name = re.sub(r":\d+$", "", str(name or ""))
    name = re.sub(r"[^A-Za-z0-9_.\-]", "_", name)
    return name or fallback


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        if n in seen:
            seen[n] += 1
            n = f"{n}_{seen[n]}"
        else:
            seen[n] = 0
        out.append(n)
    return out


def _patch_tf2onnx() -> None:
    """tf2onnx 1.17 predates numpy 2; keras ships the compatibility patch, apply it."""
    try:
        from keras.src.export.tf2onnx_lib import patch_tf2onnx

        patch_tf2onnx()
    except Exception as e:  # private keras API: tolerate its absence
        log.debug("keras tf2onnx patch unavailable: %s", e)
        if not hasattr(np, "object"):
            np.object = object  # type: ignore[attr-defined]


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "numpy"):
        return np.asarray(x.numpy())
    keras = require_keras()
    return np.asarray(keras.ops.convert_to_numpy(x))


def _flatten(out: Any, order: Sequence[str] | None = None) -> list[Any]:
    if isinstance(out, dict):
        keys = [k for k in order if k in out] if order and set(order) >= set(out) else sorted(out)
        return [t for k in keys for t in _flatten(out[k])]
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _flatten(o)]
    return [out]


class KerasSource:
    """A Keras 3 model (functional, Sequential or subclassed) ready to run and export."""

    framework = "keras"
    exporters: tuple[str, ...] = ("keras",)

    def __init__(self, model: Any, examples: Sequence[np.ndarray] | None = None) -> None:
        keras = require_keras()
        self.framework_version = str(keras.__version__)
        if not isinstance(model, keras.Model):
            raise InvalidInputError(f"expected a keras.Model, got {type(model).__name__}")
        self.model = model
        names: list[str] = []
        if examples is None:
            try:
                inputs = list(model.inputs)
            except (AttributeError, ValueError):
                inputs = []
            if not inputs:
                raise InvalidInputError(
                    "the Keras model has no defined inputs (never built): pass example_inputs, "
                    "or --input-shape name=1,H,W,C"
                )
            ex = []
            for i, t in enumerate(inputs):
                shape = tuple(t.shape)
                nm = _clean_name(getattr(t, "name", ""), f"input_{i}")
                if any(d is None for d in shape[1:]):
                    raise InvalidInputError(
                        f"Keras input {nm!r} has unknown dims {shape}; give them with --input-shape {nm}=1,..."
                    )
                ex.append(np.zeros((1, *shape[1:]) if shape else (), dtype=np.dtype(str(t.dtype))))
                names.append(nm)
            examples = ex
        else:
            try:
                names = [_clean_name(getattr(t, "name", ""), f"input_{i}") for i, t in enumerate(model.inputs)]
            except (AttributeError, ValueError):
                names = []
            if len(names) != len(examples):
                names = ["input"] if len(examples) == 1 else [f"input_{i}" for i in range(len(examples))]
        self.examples = [np.ascontiguousarray(e) for e in examples]
        if len(names) == 1 or any(n.startswith("keras_tensor") for n in names):
            names = ["input"] if len(names) == 1 else [f"input_{i}" for i in range(len(names))]
        self.names = _unique(names)

    def inputs(self) -> list[tuple[str, np.ndarray]]:
        """(default name, example array) of each input."""
        return list(zip(self.names, self.examples))

    def output_names(self) -> list[str]:
        """The Keras output names (deduplicated), or empty when unknown."""
        try:
            names = [_clean_name(n, f"output_{i}") for i, n in enumerate(self.model.output_names)]
        except (AttributeError, ValueError, TypeError):
            return []
        return _unique(names)

    def _call_arg(self, arrays: Sequence[np.ndarray]) -> Any:
        return arrays[0] if len(arrays) == 1 else list(arrays)

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """model(x, training=False), outputs flattened to numpy arrays."""
        out = self.model(self._call_arg(inputs), training=False)
        order = None
        with contextlib.suppress(AttributeError, ValueError, TypeError):
            order = list(self.model.output_names)
        return [_to_numpy(o) for o in _flatten(out, order)]

    def export(self, exporter: str, request: ExportRequest) -> ModelProto:
        """model.export(format='onnx') (Keras 3 drives tf2onnx) into a temp dir; load the result."""
        if exporter != "keras":
            raise InvalidInputError(f"unknown Keras exporter {exporter!r}; use keras")

        specs = _tensor_specs(request)
        signature = [specs[0]] if len(specs) == 1 else [specs]
        tmp = Path(tempfile.mkdtemp(prefix="onnxopt-keras-"))
        try:
            path = tmp / "model.onnx"
            with _exporting():
                self.model.export(str(path), format="onnx", verbose=False, input_signature=signature,
                                  opset_version=request.opset)
                return onnx.load(str(path))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


class SavedModelSource:
    """A TensorFlow SavedModel folder: its serving signature, exported with tf2onnx.from_function."""

    framework = "tensorflow"
    exporters: tuple[str, ...] = ("tf2onnx",)

    def __init__(
        self,
        path: str | Path,
        input_shapes: dict[str, tuple[int, ...]] | None = None,
        signature: str = "serving_default",
    ) -> None:
        require_keras()
        import tensorflow as tf

        self.framework_version = str(tf.__version__)
        try:
            with quiet():
                loaded = tf.saved_model.load(str(path))
        except Exception as e:
            raise InvalidInputError(f"{path}: not a loadable TensorFlow SavedModel: {shorten_error(e)}") from e
        sigs = dict(getattr(loaded, "signatures", {}) or {})
        if not sigs:
            raise InvalidInputError(f"{path}: the SavedModel has no serving signatures; re-save it with one")
        if signature not in sigs:
            signature = next(iter(sigs))
        self._loaded = loaded  # keep the resources alive
        self.fn = sigs[signature]
        in_specs = self.fn.structured_input_signature[1]
        self._in_keys = list(in_specs)
        self.names = [_clean_name(k, f"input_{i}") for i, k in enumerate(self._in_keys)]
        self._specs = [in_specs[k] for k in self._in_keys]
        self._out_keys = sorted(self.fn.structured_outputs)
        shapes = input_shapes or {}
        self.examples = []
        for key, nm, spec in zip(self._in_keys, self.names, self._specs):
            dims = list(spec.shape.as_list()) if spec.shape.rank is not None else None
            given = shapes.get(nm) or shapes.get(key)
            if given is not None:
                if dims is not None and len(given) != len(dims):
                    raise InvalidInputError(f"--input-shape {nm}: the SavedModel input has rank {len(dims)}")
                concrete = tuple(given)
            elif dims is None or any(d is None for d in dims[1:]):
                raise InvalidInputError(
                    f"SavedModel input {nm!r} has unknown dims {dims}; give them with --input-shape {nm}=1,..."
                )
            else:
                concrete = (1 if dims[0] is None else dims[0], *dims[1:]) if dims else ()
            self.examples.append(np.zeros(concrete, dtype=spec.dtype.as_numpy_dtype))

    def inputs(self) -> list[tuple[str, np.ndarray]]:
        """(default name, example array) of each input."""
        return list(zip(self.names, self.examples))

    def output_names(self) -> list[str]:
        """The signature's output keys, in the (sorted) order tf2onnx emits them."""
        return _unique([_clean_name(k, f"output_{i}") for i, k in enumerate(self._out_keys)])

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Call the serving signature; outputs in sorted key order."""
        import tensorflow as tf

        out = self.fn(**{k: tf.constant(a) for k, a in zip(self._in_keys, inputs)})
        return [np.asarray(out[k].numpy()) for k in self._out_keys]

    def export(self, exporter: str, request: ExportRequest) -> ModelProto:
        """tf2onnx.convert.from_function on a tf.function that calls the signature."""
        import tensorflow as tf

        if exporter != "tf2onnx":
            raise InvalidInputError(f"unknown SavedModel exporter {exporter!r}; use tf2onnx")
        specs = _tensor_specs(request)
        fn, keys, out_keys = self.fn, self._in_keys, self._out_keys

        @tf.function(input_signature=specs)
        def call(*args: Any) -> list[Any]:
            out = fn(**dict(zip(keys, args)))
            return [out[k] for k in out_keys]

        with _exporting():
            import tf2onnx

            model, _ = tf2onnx.convert.from_function(call, input_signature=specs, opset=request.opset)
        return model


def _tensor_specs(request: ExportRequest) -> list[Any]:
    """tf.TensorSpecs for the example inputs (batch and --dynamic axes None when dynamic)."""
    import tensorflow as tf

    specs = []
    for a, n in zip(request.examples, request.input_names):
        shape: list[int | None] = list(a.shape)
        if request.dynamic_batch and shape:
            shape[0] = None
        for axis in request.dynamic_axes.get(n, {}):
            if axis < len(shape):
                shape[axis] = None
        specs.append(tf.TensorSpec(tuple(shape), tf.as_dtype(a.dtype), name=n))
    return specs
