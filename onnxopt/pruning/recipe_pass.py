"""The pruning passes of recipes: options are MagnitudeConfig's and ChannelConfig's fields.

Both read the model from its file when optimize's store kept the graph only (a big stage: the
pipeline then hands over the graph and context.model_path): they prune from the file as the CLI
does (onnxopt.pruning.streamed, onnxopt.pruning.channels.streamed), candidates tensor by tensor
in a folder beside it, and load the one pruned model they return.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from onnx import ModelProto

from onnxopt.passes.base import ConfigPass, PassContext, PassResult, config_pass
from onnxopt.pruning.channels.prune import ChannelConfig, prune_channels
from onnxopt.pruning.magnitude import MagnitudeConfig, prune_magnitude
from onnxopt.pruning.result import PruneResult


def _pruned(model: ModelProto, context: PassContext, config: Any, in_memory: Callable[..., PruneResult],
            from_file: Callable[..., PruneResult]) -> PassResult:
    """in_memory(model, config), or with context.model_path from_file(path, out, config, model=graph)
    into a temporary folder beside the file, the result loaded with its weights."""
    if context.model_path is None:
        r = in_memory(model, config)
        return PassResult(r.model, bool(r.modified), dict(r.report))
    from onnxopt.core.external import load_external

    with tempfile.TemporaryDirectory(prefix="onnxopt-prune-", dir=context.model_path.parent) as d:
        r = from_file(context.model_path, Path(d) / "pruned.onnx", config, model=model)
        return PassResult(load_external(r.path) if r.path is not None else r.model, bool(r.modified), dict(r.report))


class _PruneMagnitudePass(ConfigPass):
    """Unstructured magnitude pruning of weight initializers (MagnitudeConfig's options)."""

    reads_file: ClassVar[bool] = True

    def __call__(self, model: ModelProto, context: PassContext) -> PassResult:
        """Zero the smallest weights."""
        from onnxopt.pruning.streamed import prune_magnitude_file

        return _pruned(model, context, self.config(), prune_magnitude, prune_magnitude_file)


class _PruneChannelsPass(ConfigPass):
    """Structured channel pruning: smaller Conv/Gemm layers (ChannelConfig's options)."""

    reads_file: ClassVar[bool] = True

    def __call__(self, model: ModelProto, context: PassContext) -> PassResult:
        """Remove the least important channels."""
        from onnxopt.pruning.channels.streamed import prune_channels_file

        return _pruned(model, context, self.config(), prune_channels, prune_channels_file)


PruneMagnitudePass = config_pass(_PruneMagnitudePass, MagnitudeConfig, name="prune_magnitude", skip=("measure_gzip",))
PruneChannelsPass = config_pass(_PruneChannelsPass, ChannelConfig, name="prune_channels")
