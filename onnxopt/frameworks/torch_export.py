"""PyTorch side of `convert`: run a module in eval/no_grad and export it with torch.onnx."""

from __future__ import annotations

import inspect
import io
import logging
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import ModelProto

from onnxopt.conversion.types import ExportRequest
from onnxopt.core.errors import InvalidInputError, UnsupportedModelError
from onnxopt.frameworks import require_torch
from onnxopt.frameworks.quiet import exporting
from onnxopt.frameworks.quiet import shorten_error as _shorten

log = logging.getLogger(__name__)

_NOISY_LOGGERS = ("torch.onnx", "torch.export", "torch._export", "torch.fx", "torch._dynamo", "onnxscript", "onnx_ir")


class TorchExportError(UnsupportedModelError):
    """torch.onnx could not export the module; the message is the exporter's, shortened."""


_PATTERNS = (
    (re.compile(r"No (?:ONNX function|decompositions registered|symbolic function) found for[^']*'([^']+)'"),
     "no ONNX implementation of {0}"),
    (re.compile(r"Exporting the operator '?([\w:.]+)'? to ONNX opset version (\d+) is not supported"),
     "operator {0} is not supported at opset {1}"),
    (re.compile(r"Unsupported FX nodes: (\{.*?\})"), "unsupported operators {0}"),
    (re.compile(r"Couldn't export Python operator (\w+)"),
     "cannot export the Python autograd.Function {0} (give it a symbolic() method or rewrite it with torch ops)"),
    (re.compile(r"(Could not guard on data-dependent expression[^\n]*)"), "{0} (data-dependent control flow)"),
    (re.compile(r"(Dynamic control flow is not supported[^\n]*)"), "{0}"),
    (re.compile(r"(Constraints violated[^\n]*)"), "{0}: the model does not accept a dynamic batch; try --static-batch"),
)


def shorten_error(e: BaseException, limit: int = 240) -> str:
    """The exporter's message cut down to what a user can act on."""
    return _shorten(e, _PATTERNS, limit=limit, skip=("traceback", "failed to export", "see "), trim="#")


def _export_failed(e: BaseException) -> TorchExportError:
    return TorchExportError(shorten_error(e))


def _flatten(out: Any) -> list[Any]:
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _flatten(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in _flatten(o)]
    if out is None:
        return []
    return [out]


def default_input_names(module: Any, n: int) -> list[str]:
    """'input' for one input; otherwise the forward() parameter names (input_i as a fallback)."""
    if n == 1:
        return ["input"]
    try:
        fn = module.forward if hasattr(module, "forward") else module
        params = [
            p.name for p in inspect.signature(fn).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name != "self"
        ]
        if len(params) >= n and len(set(params[:n])) == n:
            return params[:n]
    except (TypeError, ValueError):
        pass
    return [f"input_{i}" for i in range(n)]


class TorchSource:
    """A torch nn.Module, TorchScript module or ExportedProgram ready to run and export."""

    framework = "torch"

    def __init__(self, module: Any, examples: Sequence[np.ndarray] | None, names: Sequence[str] | None = None) -> None:
        torch = require_torch()
        self.framework_version = str(torch.__version__)
        self.kind = "module"
        if isinstance(module, torch.export.ExportedProgram):
            self.kind = "exported_program"
            self.exporters: tuple[str, ...] = ("dynamo",)
            if examples is None and module.example_inputs is not None:
                args, _ = module.example_inputs
                examples = [np.asarray(a.detach().cpu().numpy()) for a in args]
            self._callable = module.module()
        elif isinstance(module, (torch.jit.ScriptModule, torch.jit.ScriptFunction)):
            self.kind = "torchscript"
            self.exporters = ("torchscript",)
            self._callable = module
        elif isinstance(module, torch.nn.Module):
            self.exporters = ("dynamo", "torchscript")
            self._callable = module
        else:
            raise InvalidInputError(
                f"expected a torch.nn.Module, TorchScript module or ExportedProgram, got {type(module).__name__}"
            )
        if hasattr(module, "eval") and self.kind != "exported_program":
            module.eval()
        if examples is None or len(examples) == 0:
            raise InvalidInputError(
                "a torch model needs example inputs: pass example_inputs or --input-shape name=1,3,224,224"
            )
        self.module = module
        self.examples = [np.ascontiguousarray(e) for e in examples]
        self.names = list(names) if names else default_input_names(self._callable, len(self.examples))

    def inputs(self) -> list[tuple[str, np.ndarray]]:
        """(default name, example array) of each input."""
        return list(zip(self.names, self.examples))

    def output_names(self) -> list[str]:
        """Empty: decided from the number of outputs ('output' or output_i)."""
        return []

    def _tensors(self, arrays: Sequence[np.ndarray]) -> tuple[Any, ...]:
        torch = require_torch()
        return tuple(torch.from_numpy(np.ascontiguousarray(a).copy()) for a in arrays)

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Forward pass in eval mode under no_grad; outputs flattened to numpy arrays."""
        torch = require_torch()
        with torch.no_grad():
            out = self._callable(*self._tensors(inputs))
        flat = _flatten(out)
        bad = [type(o).__name__ for o in flat if not isinstance(o, torch.Tensor)]
        if bad:
            raise InvalidInputError(f"the module returns {bad[0]}; convert needs tensors (or tuples/dicts of them)")
        return [o.detach().cpu().numpy() for o in flat]

    def export(self, exporter: str, request: ExportRequest) -> ModelProto:
        """Export with torch.onnx ('dynamo' or 'torchscript'); TorchExportError with a short reason."""
        if exporter == "dynamo":
            return self._export_dynamo(request)
        if exporter == "torchscript":
            return self._export_torchscript(request)
        raise InvalidInputError(f"unknown torch exporter {exporter!r}; choose dynamo or torchscript")

    def _torch_onnx_export(self, arrays: Sequence[np.ndarray], req: ExportRequest, **kwargs: Any) -> Any:
        """torch.onnx.export of the module on arrays, quiet; any failure as a TorchExportError."""
        torch = require_torch()
        with exporting(_NOISY_LOGGERS, _export_failed):
            return torch.onnx.export(
                self.module,
                self._tensors(arrays),
                input_names=list(req.input_names),
                output_names=list(req.output_names),
                opset_version=req.opset,
                **kwargs,
            )

    def _export_dynamo(self, req: ExportRequest) -> ModelProto:
        torch = require_torch()
        arrays = list(req.examples)
        dynamic_shapes = None
        if (req.dynamic_batch or req.dynamic_axes) and self.kind != "exported_program":
            dims: dict[str, Any] = {}  # one torch Dim per label: inputs sharing a label stay equal
            specs = []
            for i, (name, a) in enumerate(zip(req.input_names, arrays)):
                spec = {0: "batch"} if req.dynamic_batch and a.ndim else {}
                spec.update({ax: label for ax, label in req.dynamic_axes.get(name, {}).items() if ax < a.ndim})
                for ax in spec:  # torch.export specializes a size-1 dim to a constant: export at 2
                    if a.shape[ax] == 1:
                        a = np.concatenate([a, a], axis=ax)
                arrays[i] = a
                specs.append({ax: dims.setdefault(label, torch.export.Dim(label)) for ax, label in spec.items()} or None)
            dynamic_shapes = tuple(specs)
        prog = self._torch_onnx_export(
            arrays, req, dynamo=True, dynamic_shapes=dynamic_shapes, optimize=True, verbose=False, report=False
        )
        with exporting(_NOISY_LOGGERS, _export_failed):  # the proto is built (and may fail) on access
            assert prog is not None
            model = prog.model_proto
        return _with_opset(model, req.opset)

    def _export_torchscript(self, req: ExportRequest) -> ModelProto:
        dynamic_axes: dict[str, dict[int, str]] | None = None
        if req.dynamic_batch or req.dynamic_axes:
            batch = {0: "batch"} if req.dynamic_batch else {}
            dynamic_axes = {n: dict(batch) for n, a in zip(req.input_names, req.examples) if a.ndim}
            dynamic_axes.update({n: dict(batch) for n in req.output_names})
            for n, axes in req.dynamic_axes.items():
                dynamic_axes.setdefault(n, {}).update(axes)
            dynamic_axes = {n: a for n, a in dynamic_axes.items() if a} or None
        buf = io.BytesIO()
        self._torch_onnx_export(
            req.examples, req, f=buf, dynamo=False, dynamic_axes=dynamic_axes, do_constant_folding=True
        )
        return onnx.load_from_string(buf.getvalue())


def _with_opset(model: ModelProto, opset: int) -> ModelProto:
    got = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), opset)
    if got != opset:
        log.info("dynamo exporter produced opset %d (asked for %d)", got, opset)
    return model


def load_state_dict(module: Any, path: str) -> Any:
    """Load a state dict file (weights_only) into module; InvalidInputError on a mismatch."""
    torch = require_torch()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise InvalidInputError(f"{path}: not a readable torch state dict: {shorten_error(e)}") from e
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise InvalidInputError(f"{path}: expected a state dict (a mapping of tensors), got {type(state).__name__}")
    try:
        module.load_state_dict(state)
    except Exception as e:
        raise InvalidInputError(f"--weights {path} does not fit the module: {shorten_error(e)}") from e
    return module
