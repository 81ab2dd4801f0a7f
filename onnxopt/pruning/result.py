"""The result type shared by the pruning methods."""

from __future__ import annotations

from dataclasses import dataclass

from onnx import ModelProto


@dataclass(frozen=True)
class PruneResult:
    """A pruned model, whether anything changed, and a JSON-serializable report."""

    model: ModelProto
    modified: bool
    report: dict
