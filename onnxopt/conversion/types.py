"""What a conversion takes and gives: the validated options, the Source protocol, the result."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from onnx import ModelProto

from onnxopt.conversion.parity import ParityReport
from onnxopt.core.errors import InvalidInputError, UnsupportedModelError

EXPORTERS = ("auto", "dynamo", "torchscript", "keras", "tf2onnx")


class ExportError(UnsupportedModelError):
    """Every exporter attempted failed on this model."""


@dataclass(frozen=True)
class ConvertOptions:
    """How to export and check a model; validated on creation."""

    opset: int = 17
    exporter: str = "auto"
    dynamic_batch: bool = True
    input_names: tuple[str, ...] | None = None
    output_names: tuple[str, ...] | None = None
    atol: float = 1e-4
    rtol: float = 1e-3
    simplify: bool = True
    seed: int = 0
    benchmark_runs: int = 30
    # (input name, axis, label) of each extra symbolic axis asked with --dynamic (the batch axis
    # is dynamic_batch's); a source may add its own (a transformer's sequence axis).
    dynamic_axes: tuple[tuple[str, int, str], ...] = ()

    def __post_init__(self) -> None:
        if not 11 <= self.opset <= 23:
            raise InvalidInputError(f"--opset {self.opset}: choose an opset between 11 and 23 (17 is a safe default)")
        if self.exporter not in EXPORTERS:
            raise InvalidInputError(f"--exporter {self.exporter!r}: choose one of {', '.join(EXPORTERS)}")
        if not (self.atol >= 0 and self.rtol >= 0) or math.isnan(self.atol + self.rtol):
            raise InvalidInputError(f"--atol/--rtol must be >= 0; got {self.atol}, {self.rtol}")
        for kind, names in (("input", self.input_names), ("output", self.output_names)):
            if names is not None:
                if any(not n for n in names):
                    raise InvalidInputError(f"--{kind}-names: empty name; give comma-separated names like a,b")
                if len(set(names)) != len(names):
                    raise InvalidInputError(f"--{kind}-names: duplicate names in {','.join(names)}")
        if self.benchmark_runs < 1:
            raise InvalidInputError("benchmark_runs must be >= 1")
        for name, axis, label in self.dynamic_axes:
            if not name or not label or axis < 0:
                raise InvalidInputError(
                    f"--dynamic {name}={axis}:{label}: give an input name, an axis >= 0 and a label, "
                    "e.g. --dynamic input_ids=1:sequence"
                )


@dataclass(frozen=True)
class ExportRequest:
    """What Source.export is asked for: the same for every exporter tried on one model."""

    opset: int
    dynamic_batch: bool
    input_names: Sequence[str]
    output_names: Sequence[str]
    examples: Sequence[np.ndarray]  # one example array per input, in call order
    # {input or output name: {axis: label}}: symbolic axes besides the batch axis.
    dynamic_axes: Mapping[str, Mapping[int, str]] = field(default_factory=dict)


@dataclass(frozen=True)
class ConvertResult:
    """The converted model, its parity figures, the exporter used, and a JSON report."""

    model: ModelProto
    parity: ParityReport
    exporter: str
    framework: str
    report: dict[str, Any]


class Source(Protocol):
    """A loaded source model that can run itself and export itself to ONNX.

    Implemented in onnxopt.frameworks (TorchSource, KerasSource, SavedModelSource).
    """

    framework: str  # "torch" | "keras" | "tensorflow"
    framework_version: str
    exporters: tuple[str, ...]  # in order of preference for exporter="auto"

    def inputs(self) -> list[tuple[str, np.ndarray]]:
        """(default name, example array) of each input, in call order."""
        ...

    def output_names(self) -> list[str]:
        """Default names of the outputs."""
        ...

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Run the source model in inference mode on inputs given in call order."""
        ...

    def export(self, exporter: str, request: ExportRequest) -> ModelProto:
        """Export with the named exporter; raise an UnsupportedModelError with a short, actionable message."""
        ...


Candidate = tuple[str, ModelProto, ParityReport]  # (exporter, checked model, its parity)
