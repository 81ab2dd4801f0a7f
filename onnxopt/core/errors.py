"""Domain errors of onnxopt; the CLI maps them to one-line messages and exit codes."""

from __future__ import annotations


class OnnxoptError(Exception):
    """Base class of every error onnxopt raises on purpose; its message is shown to users."""

    exit_code = 1


class InvalidModelError(OnnxoptError):
    """The model file is missing, unreadable, not ONNX, or fails validation."""


class ModelRunError(InvalidModelError):
    """onnxruntime loaded the model but failed while running it (the message names the node)."""


class InvalidInputError(OnnxoptError):
    """Input data (npz, shapes, dtypes, options) does not fit the model or the command."""


class InvalidOptionError(InvalidInputError):
    """An option value is out of range or not a finite number: a usage error (exit code 2)."""

    exit_code = 2


class MissingLabelsError(InvalidInputError):
    """An accuracy gate was asked for without labelled data to measure it on."""


class MissingExtraError(OnnxoptError):
    """An optional dependency is not installed; the message gives the pip command."""

    def __init__(self, package: str, extra: str) -> None:
        super().__init__(
            f"{package} is not installed: pip install 'onnxopt[{extra}]'"
        )
        self.package = package
        self.extra = extra


class PassError(OnnxoptError):
    """A pipeline pass failed; the message names the pass and the passes before it."""


class UnsupportedModelError(OnnxoptError):
    """The model uses something a pass cannot handle."""


class GateFailedError(OnnxoptError):
    """A pipeline gate (accuracy drop, speedup, size, ...) failed."""

    exit_code = 3


def short_message(e: BaseException, limit: int = 300) -> str:
    """The first non-empty line of an exception's message (or its type name), cut to limit."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    return (lines[0] if lines else type(e).__name__)[:limit]
