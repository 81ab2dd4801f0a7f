"""Post-processing steps appended to a model with onnxruntime-extensions (softmax, argmax)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar

from onnx import ModelProto

from onnxopt.core.errors import InvalidInputError, MissingExtraError, UnsupportedModelError
from onnxopt.core.model import copy_model, default_opset, graph_outputs, prune_opset_imports
from onnxopt.passes.base import PassContext, PassResult, register_pass

log = logging.getLogger(__name__)

POST_STEPS = ("softmax", "argmax")


def _steps_module() -> Any:
    try:
        from onnxruntime_extensions.tools import pre_post_processing
    except ImportError as e:
        raise MissingExtraError("onnxruntime-extensions", "all") from e
    return pre_post_processing


@register_pass
@dataclass(frozen=True)
class AddPostprocessingPass:
    """Append post-processing to the model's single output: softmax (probabilities), argmax (class id).

    The outputs change by design, so optimize() verifies this stage (and later ones) against the
    input model with the same steps appended.
    """

    name: ClassVar[str] = "add_postprocessing"
    steps: tuple[str, ...] = ("softmax",)

    def __post_init__(self) -> None:
        if not self.steps:
            raise InvalidInputError(f"steps is empty; choose from {', '.join(POST_STEPS)}")
        bad = [s for s in self.steps if s not in POST_STEPS]
        if bad:
            raise InvalidInputError(f"unknown step {bad[0]!r}; valid steps: {', '.join(POST_STEPS)}")
        if "argmax" in self.steps and self.steps[-1] != "argmax":
            raise InvalidInputError("argmax must be the last step (its output is a class id)")

    def __call__(self, model: ModelProto, context: PassContext) -> PassResult:
        """Append the steps with onnxruntime-extensions' PrePostProcessor."""
        outputs = graph_outputs(model)
        if len(outputs) != 1:
            raise UnsupportedModelError(
                f"add_postprocessing needs a model with one output; this one has {len(outputs)} "
                f"({', '.join(o.name for o in outputs)})"
            )
        ppp = _steps_module()
        makers = {"softmax": ppp.Softmax, "argmax": ppp.ArgMax}
        processor = ppp.PrePostProcessor(None, max(default_opset(model), 13))
        processor.add_post_processing([makers[s]() for s in self.steps])
        new = processor.run(copy_model(model))
        prune_opset_imports(new)
        after = graph_outputs(new)
        return PassResult(
            new,
            True,
            {
                "steps": list(self.steps),
                "output_before": {"name": outputs[0].name, "dtype": outputs[0].dtype},
                "output_after": [{"name": o.name, "dtype": o.dtype} for o in after],
            },
            changes_outputs=True,
        )
