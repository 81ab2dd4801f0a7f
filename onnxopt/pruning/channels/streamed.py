"""Channel pruning of a model file, one tensor at a time: bounded memory for big models.

`prune_channels` (onnxopt.pruning.channels.prune) works on a ModelProto with every weight loaded,
and each candidate of the fidelity floor copies it, infers its shapes and serializes it for
onnxruntime (measured on an 8-layer 512 MiB MLP: 5.0 GB peak RSS). Here the model is read as its
graph (weights stay in their files; external tensors under 1 KiB, such as Reshape targets, are
read in so rules and shape inference see their values as in memory). The dependency groups and
the channel scores (each weight read once, one at a time) are computed once: neither depends on
the ratio the floor tries. Every candidate is the same graph edit as in memory (apply_cuts with
headers in place of the sliced weights), written to a work folder beside the output tensor by
tensor (read one weight, delete its removed channels, write it, drop it) and measured by
onnxruntime from there; the last one becomes the output as in onnxopt.pruning.streamed (inline up
to 2 GB, else with `<output>.data`). Memory: the graph, one weight and its float64 score
temporaries (about 5x the tensor), and onnxruntime's copy of the weights while a candidate is
measured. Time: one read of the weights for the scores, then one read and one write per candidate.

The written model is the in-memory path's, byte for byte (tests/test_prune_channels_big.py).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from onnx import ModelProto, TensorProto, numpy_helper
from onnx.external_data_helper import load_external_data_for_tensor

from onnxopt.core.external import external_length, is_external, remove_model_file, write_external
from onnxopt.core.feeds import Feed
from onnxopt.core.model import copy_model, load_model
from onnxopt.passes.graph import constants_to_initializers
from onnxopt.pruning.channels.graph import GraphIndex, Group
from onnxopt.pruning.channels.groups import build_groups
from onnxopt.pruning.channels.prune import (
    ChannelConfig,
    apply_cuts,
    check_pruned,
    finish_report,
    group_importance,
    refresh_shapes,
    select_channels,
)
from onnxopt.pruning.guard import FidelityFloor
from onnxopt.pruning.result import PruneResult
from onnxopt.pruning.streamed import graph_of, run_from_file

SMALL = 1024  # external tensors below this many bytes are read into the graph (write_external's threshold)
_INLINE = 1024  # sliced tensors below this many bytes are written inline (as write_external does)


@dataclass
class _Source:
    """The input file: its graph (names given, weights not loaded), the graph the groups are traced
    on (Constant nodes moved into initializers, small external tensors read in), the groups, and
    the channel scores (cached by group and importance)."""

    path: Path
    model: ModelProto
    moved: ModelProto = field(init=False)
    count: int = field(init=False)
    ix: GraphIndex = field(init=False)
    groups: list[Group] = field(init=False)
    scores: dict[tuple[int, str], np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        graph = copy_model(self.model)
        base = self.path.parent
        for t in graph.graph.initializer:
            if is_external(t) and external_length(t, base) < SMALL:
                load_external_data_for_tensor(t, str(base))  # as onnx's loader leaves it
        self.moved, self.count = constants_to_initializers(graph)
        self.ix, self.groups = build_groups(self.moved, base_dir=base)

    def score(self, grp: Group, importance: str) -> np.ndarray:
        key = (grp.gid, importance)
        if key not in self.scores:
            self.scores[key] = group_importance(grp, importance, self.ix)
        return self.scores[key]


def _candidate(src: _Source, config: ChannelConfig, work: Path, name: str) -> PruneResult:
    """One pruned model written to `work/name` (+ `.data`): prune._prune_channels from a file."""
    dst = work / name
    removed, report = select_channels(src.moved, src.ix, src.groups, config, src.count,
                                      lambda grp: src.score(grp, config.importance))
    remove_model_file(dst)
    if not removed:  # the input, unchanged (with its node names)
        write_external(src.model, dst, base_dir=src.path.parent)
        return PruneResult(graph_of(dst), False, report, path=dst)
    out = copy_model(src.moved)
    slices = apply_cuts(out, src.ix, removed, src.groups, materialize=False)
    out = refresh_shapes(out)

    def tensors() -> Iterator[TensorProto | tuple[TensorProto, np.ndarray]]:
        for t in out.graph.initializer:
            cut = slices.get(t.name)
            if cut is None:
                yield t
                continue
            values = cut.values(src.ix)
            yield numpy_helper.from_array(values, t.name) if values.nbytes < _INLINE else (t, values)
            del values

    write_external(out, dst, base_dir=src.path.parent, tensors=tensors())
    check_pruned(str(dst))
    finish_report(report, out, len(removed))
    return PruneResult(graph_of(dst), True, report, path=dst)


def prune_channels_file(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    config: ChannelConfig,
    *,
    model: ModelProto | None = None,
    floor: FidelityFloor | None = None,
    feed: Feed | None = None,
    labels: np.ndarray | None = None,
) -> PruneResult:
    """prune_channels for a model file, written to dst, in bounded memory (module doc).

    model: src's graph as already loaded (`load_model(src, load_external_data=False)`), else
    loaded here. dst is written inline when it fits protobuf's 2 GB, else with `<dst>.data`
    beside it; nothing is written when the floor raises GateFailedError. The returned
    PruneResult has `path=dst` and its `model` is dst's graph without the weights. src and its
    external data are only read.
    """
    src_path = Path(src)
    graph = model if model is not None else load_model(src_path, load_external_data=False)
    source = _Source(src_path, graph)
    return run_from_file(src_path, Path(dst), graph, config, "ratio",
                         lambda cfg, work, name: _candidate(source, cfg, work, name), floor, feed, labels)
