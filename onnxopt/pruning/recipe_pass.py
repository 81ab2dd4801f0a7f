"""The pruning passes of recipes: options are MagnitudeConfig's and ChannelConfig's fields."""

from __future__ import annotations

from onnx import ModelProto

from onnxopt.passes.base import ConfigPass, PassContext, PassResult, config_pass
from onnxopt.pruning.channels.prune import ChannelConfig, prune_channels
from onnxopt.pruning.magnitude import MagnitudeConfig, prune_magnitude


class _PruneMagnitudePass(ConfigPass):
    """Unstructured magnitude pruning of weight initializers (MagnitudeConfig's options)."""

    def __call__(self, model: ModelProto, context: PassContext) -> PassResult:
        """Zero the smallest weights."""
        r = prune_magnitude(model, self.config())
        return PassResult(r.model, bool(r.modified), dict(r.report))


class _PruneChannelsPass(ConfigPass):
    """Structured channel pruning: smaller Conv/Gemm layers (ChannelConfig's options)."""

    def __call__(self, model: ModelProto, context: PassContext) -> PassResult:
        """Remove the least important channels."""
        r = prune_channels(model, self.config())
        return PassResult(r.model, bool(r.modified), dict(r.report))


PruneMagnitudePass = config_pass(_PruneMagnitudePass, MagnitudeConfig, name="prune_magnitude", skip=("measure_gzip",))
PruneChannelsPass = config_pass(_PruneChannelsPass, ChannelConfig, name="prune_channels")
