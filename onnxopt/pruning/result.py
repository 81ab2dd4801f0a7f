"""The result type shared by the pruning methods."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from onnx import ModelProto


@dataclass(frozen=True)
class PruneResult:
    """A pruned model, whether anything changed, and a JSON-serializable report.

    path: the file the model was written to when it was pruned from a file
    (onnxopt.pruning.streamed); `model` is then its graph without the weights.
    """

    model: ModelProto
    modified: bool
    report: dict
    path: Path | None = None
