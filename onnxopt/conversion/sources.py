"""Load a model to convert: TorchScript / .pt2 / .keras / .h5 / SavedModel files, or a `file.py:factory`."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import re
import sys
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from onnxopt.core.errors import InvalidInputError, MissingExtraError, OnnxoptError, short_message
from onnxopt.core.feeds import LABEL_KEYS

log = logging.getLogger(__name__)

FRAMEWORKS = ("auto", "torch", "keras")
TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".ts", ".torchscript", ".jit")
_FACTORY = re.compile(r"^(?P<target>.+):(?P<attr>[A-Za-z_][A-Za-z0-9_]*)$")
_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def load_source(
    source: str,
    *,
    framework: str = "auto",
    weights: str | None = None,
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
    input_dtypes: Mapping[str, str] | None = None,
    input_names: Sequence[str] | None = None,
    data: Mapping[str, np.ndarray] | None = None,
    hf: Mapping[str, Any] | None = None,
) -> Any:
    """A convert Source (TorchSource, KerasSource, SavedModelSource or HFSource) for a path or factory spec.

    hf: options of a Hugging Face model folder (task, pooling, normalize; see frameworks.hf_export).
    """
    if framework not in FRAMEWORKS:
        raise InvalidInputError(f"--framework {framework!r}: choose one of {', '.join(FRAMEWORKS)}")
    examples = _examples(input_shapes, input_dtypes, data)
    names = list(input_names) if input_names else (list(input_shapes) if input_shapes else None)
    m = _FACTORY.match(source)
    path = Path(source)
    if m and not path.exists() and _is_factory_target(m.group("target")):
        obj, module = _call_factory(m.group("target"), m.group("attr"))
        kind = _framework_of(obj)
        if kind is None:
            raise InvalidInputError(
                f"{source}: the factory returned {type(obj).__name__}; it must return a torch.nn.Module or a keras.Model"
            )
        if framework != "auto" and kind != framework:
            raise InvalidInputError(f"{source}: the factory returned a {kind} model, not a {framework} one")
        if examples is None:
            examples = _module_examples(module)
        return _wrap(obj, kind, source, weights, examples, names)
    if not path.exists():
        if m:
            raise InvalidInputError(f"{m.group('target')}: no such file or importable module")
        raise InvalidInputError(f"{source}: no such file or directory")
    if path.is_dir():
        from onnxopt.frameworks.hf_folder import is_hf_folder

        if is_hf_folder(path):
            return _load_hf(path, framework, weights, input_shapes, hf or {})
        return _load_dir(path, framework, weights, input_shapes)
    if path.stat().st_size == 0:
        raise InvalidInputError(f"{path}: file is empty")
    kind, fmt = _sniff(path)
    if path.suffix == ".onnx" or fmt == "onnx":
        raise InvalidInputError(f"{path}: already an ONNX model; use `onnxopt inspect` or `onnxopt optimize`")
    if framework == "torch" or (framework == "auto" and kind == "torch"):
        return _load_torch_file(path, fmt, weights, examples, names)
    if framework == "keras" or (framework == "auto" and kind == "keras"):
        return _load_keras_file(path, fmt, weights, examples)
    raise InvalidInputError(
        f"{path}: not a model file onnxopt can convert; expected a TorchScript (.pt), ExportedProgram (.pt2), "
        ".keras, .h5 file, a SavedModel folder or file.py:factory"
    )


def _is_factory_target(target: str) -> bool:
    return target.endswith(".py") or bool(_DOTTED.match(target))


def _examples(
    shapes: Mapping[str, tuple[int, ...]] | None,
    dtypes: Mapping[str, str] | None,
    data: Mapping[str, np.ndarray] | None,
) -> list[np.ndarray] | None:
    if shapes:
        out = []
        for name, shape in shapes.items():
            dt = (dtypes or {}).get(name, "float32")
            try:
                out.append(np.zeros(shape, dtype=np.dtype(dt)))
            except TypeError as e:
                raise InvalidInputError(f"--input-shape {name}: unknown dtype {dt!r} (e.g. float32, int64)") from e
        return out
    if data:
        arrays = [np.asarray(v) for k, v in data.items() if k not in LABEL_KEYS]
        if arrays and all(a.ndim >= 1 and len(a) > 0 for a in arrays):
            return [a[:1].astype(np.float32) if a.dtype == np.float64 else a[:1] for a in arrays]
    return None


def _call_factory(target: str, attr: str) -> tuple[Any, Any]:
    module = _import_target(target)
    factory = getattr(module, attr, None)
    if factory is None:
        raise InvalidInputError(f"{target}: has no attribute {attr!r}")
    if not callable(factory):
        return factory, module  # a module-level model object is fine too
    try:
        return factory(), module
    except OnnxoptError:
        raise
    except Exception as e:
        raise InvalidInputError(f"{target}:{attr} raised {type(e).__name__}: {short_message(e)}") from e


def _import_target(target: str) -> Any:
    if target.endswith(".py"):
        p = Path(target)
        if not p.is_file():
            raise InvalidInputError(f"{target}: no such file")
        name = f"_onnxopt_src_{abs(hash(str(p.resolve())))}"
        spec = importlib.util.spec_from_file_location(name, p)
        if spec is None or spec.loader is None:
            raise InvalidInputError(f"{target}: cannot be imported as a Python module")
        module = importlib.util.module_from_spec(spec)
        sys.path.insert(0, str(p.resolve().parent))  # let the file import its siblings
        try:
            sys.modules[name] = module
            spec.loader.exec_module(module)
        except Exception as e:
            sys.modules.pop(name, None)
            _raise_missing_extra(e)
            raise InvalidInputError(f"importing {target} failed: {type(e).__name__}: {short_message(e)}") from e
        finally:
            sys.path.remove(str(p.resolve().parent))
        return module
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as e:
        _raise_missing_extra(e)
        raise InvalidInputError(f"{target}: no such file or importable module ({short_message(e)})") from e
    except Exception as e:
        _raise_missing_extra(e)
        raise InvalidInputError(f"importing {target} failed: {type(e).__name__}: {short_message(e)}") from e


_EXTRAS = {"torch": "torch", "onnxscript": "torch", "tensorflow": "keras", "keras": "keras", "tf2onnx": "keras",
           "transformers": "hf", "safetensors": "hf"}


def _raise_missing_extra(e: BaseException) -> None:
    """A factory module that fails to import a framework: name the extra to install."""
    if isinstance(e, ImportError) and e.name:
        root = e.name.split(".")[0]
        if root in _EXTRAS:
            raise MissingExtraError(root, _EXTRAS[root]) from e


def _module_examples(module: Any) -> list[np.ndarray] | None:
    """A factory module may define `example_inputs` (a tuple of arrays/tensors, or a function returning one)."""
    ex = getattr(module, "example_inputs", None)
    if ex is None:
        return None
    try:
        value = ex() if callable(ex) else ex
    except Exception as e:
        raise InvalidInputError(f"example_inputs() raised {type(e).__name__}: {short_message(e)}") from e
    if not isinstance(value, (tuple, list)):
        value = (value,)
    from onnxopt.conversion.parity import as_numpy

    return [as_numpy(v) for v in value]


def _framework_of(obj: Any) -> str | None:
    for cls in type(obj).__mro__:
        root = cls.__module__.split(".")[0]
        if root == "torch" and cls.__name__ in ("Module", "ScriptModule", "ExportedProgram", "RecursiveScriptModule"):
            return "torch"
        if root in ("keras", "tf_keras") and cls.__name__ in ("Model", "Functional", "Sequential"):
            return "keras"
    return None


def _wrap(
    obj: Any, kind: str, source: str, weights: str | None,
    examples: list[np.ndarray] | None, names: list[str] | None,
) -> Any:
    if kind == "torch":
        from onnxopt.frameworks.torch_export import TorchSource, load_state_dict

        if weights:
            load_state_dict(obj, weights)
        if examples is None:
            raise InvalidInputError(
                f"{source}: a torch model needs an input shape: add --input-shape input=1,3,224,224 "
                "(or --data samples.npz, or define example_inputs() beside the factory)"
            )
        return TorchSource(obj, examples, names)
    from onnxopt.frameworks.keras_export import KerasSource

    if weights:
        _keras_weights(obj, weights, examples)
    return KerasSource(obj, examples)


def _keras_weights(model: Any, weights: str, examples: list[np.ndarray] | None) -> None:
    if not model.built and examples is not None:
        model(examples[0] if len(examples) == 1 else examples, training=False)
    try:
        model.load_weights(weights)
    except Exception as e:
        raise InvalidInputError(f"--weights {weights} does not fit the Keras model: {short_message(e)}") from e


def _sniff(path: Path) -> tuple[str | None, str]:
    """(framework, format) guessed from the file's content (then its suffix)."""
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(b"\x89HDF"):
        return "keras", "h5"
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError):
            names = []
        if "config.json" in names and any(n.endswith(".h5") or n.endswith(".json") for n in names):
            return "keras", "keras"
        if any(n.endswith("archive_format") for n in names) or any("/models/" in n and n.endswith(".json") for n in names):
            return "torch", "pt2"
        if any("/code/" in n for n in names) or any(n.endswith("constants.pkl") for n in names):
            return "torch", "torchscript"
        if any(n.endswith("data.pkl") for n in names):
            return "torch", "pickle"
    suffix = path.suffix.lower()
    if suffix == ".pt2":
        return "torch", "pt2"
    if suffix in TORCHSCRIPT_SUFFIXES:
        return "torch", "torchscript"
    if suffix in (".keras", ".h5", ".hdf5"):
        return "keras", suffix.lstrip(".")
    if suffix == ".onnx":
        return None, "onnx"
    return None, "unknown"


def _load_torch_file(
    path: Path, fmt: str, weights: str | None, examples: list[np.ndarray] | None, names: list[str] | None
) -> Any:
    from onnxopt.frameworks import require_torch
    from onnxopt.frameworks.torch_export import TorchSource, shorten_error

    torch = require_torch()
    if fmt == "pickle":
        raise InvalidInputError(
            f"{path}: a torch.save() pickle (e.g. a state dict), not a TorchScript model: give the architecture "
            f"as file.py:factory and this file as --weights {path}"
        )
    if weights:
        raise InvalidInputError(f"--weights only applies to a file.py:factory source, not to {path}")
    if fmt == "pt2":
        try:
            ep = torch.export.load(str(path))
        except Exception as e:
            raise InvalidInputError(f"{path}: not a readable torch.export ExportedProgram (.pt2): {shorten_error(e)}") from e
        return TorchSource(ep, examples, names)
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:
        raise InvalidInputError(
            f"{path}: not a TorchScript model (torch.jit.save) or ExportedProgram (.pt2): {shorten_error(e)}"
        ) from e
    if examples is None:
        raise InvalidInputError(
            f"{path}: a TorchScript model does not record its input shape: add --input-shape input=1,3,224,224 "
            "(or --data samples.npz)"
        )
    return TorchSource(module, examples, names)


def _load_keras_file(path: Path, fmt: str, weights: str | None, examples: list[np.ndarray] | None) -> Any:
    from onnxopt.frameworks import require_keras
    from onnxopt.frameworks.keras_export import KerasSource, quiet

    keras = require_keras()
    if fmt not in ("keras", "h5", "hdf5"):
        raise InvalidInputError(f"{path}: not a Keras model file (.keras or .h5)")
    try:
        with quiet():
            model = keras.models.load_model(str(path), compile=False)
    except Exception as e:
        raise InvalidInputError(f"{path}: not a loadable Keras model: {short_message(e)}") from e
    if weights:
        _keras_weights(model, weights, examples)
    return KerasSource(model, examples)


def _load_hf(
    path: Path, framework: str, weights: str | None, shapes: Mapping[str, tuple[int, ...]] | None,
    hf: Mapping[str, Any],
) -> Any:
    """An HFSource for a Hugging Face model folder (config.json + weights, or sentence-transformers)."""
    if framework == "keras":
        raise InvalidInputError(f"{path}: a Hugging Face (PyTorch) model folder, not a Keras model; drop --framework")
    if weights or shapes:
        raise InvalidInputError(
            f"{path}: a Hugging Face folder brings its weights and input shapes; drop --weights / --input-shape"
        )
    from onnxopt.frameworks.hf_export import load_hf_source

    return load_hf_source(path, task=hf.get("task", "auto"), pooling=hf.get("pooling", "auto"),
                          normalize=hf.get("normalize"))


def _load_dir(
    path: Path, framework: str, weights: str | None, shapes: Mapping[str, tuple[int, ...]] | None
) -> Any:
    if not (path / "saved_model.pb").exists():
        raise InvalidInputError(
            f"{path}: a folder without config.json (a Hugging Face model, see save_pretrained) "
            "and without saved_model.pb (a TensorFlow SavedModel)"
        )
    if framework == "torch":
        raise InvalidInputError(f"{path}: a TensorFlow SavedModel, not a torch model; drop --framework torch")
    if weights:
        raise InvalidInputError("--weights does not apply to a SavedModel folder")
    from onnxopt.frameworks.keras_export import SavedModelSource

    return SavedModelSource(path, dict(shapes) if shapes else None)
