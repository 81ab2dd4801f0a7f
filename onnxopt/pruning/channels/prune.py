"""Structured channel pruning of an ONNX graph: remove whole output channels and everything they feed.

For each dependency group (onnxopt.pruning.channels.groups) the channels are scored by the group sum of
the L1 or L2 norms of the sources' output-channel weights; the lowest-scoring `ratio` of them
are removed from every parameter in the group: the sources' weights and biases, BatchNorm
parameters, per-channel constants, depthwise Conv weights (and `group`), and the consumers'
input channels (Conv, Gemm, MatMul; after a Flatten/Reshape each channel is a block of H*W
features). The result computes exactly what the original computes when the removed channels'
contributions to their consumers are zero. Groups that cannot be traced safely are left alone
and reported. Fine-tuning to recover accuracy belongs in the source framework.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import ModelProto, numpy_helper

from onnxopt.core.errors import InvalidInputError, OnnxoptError
from onnxopt.core.feeds import Feed
from onnxopt.core.model import copy_model, initializer_stats, subgraph_inputs, subgraph_op_counts
from onnxopt.passes.graph import constants_to_initializers
from onnxopt.pruning.channels.graph import GraphIndex, Group
from onnxopt.pruning.channels.groups import build_groups
from onnxopt.pruning.guard import FidelityFloor, guarded_prune
from onnxopt.pruning.result import PruneResult

log = logging.getLogger(__name__)

IMPORTANCE = ("l1", "l2")


@dataclass(frozen=True)
class ChannelConfig:
    """Channel pruning settings: fraction of channels removed per group and how they are scored."""

    ratio: float = 0.3
    importance: str = "l1"
    min_channels: int = 1
    round_to: int = 1
    skip: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 0.0 <= self.ratio < 1.0:
            raise InvalidInputError(
                f"ratio must be in [0, 1); got {self.ratio}: e.g. --ratio 0.3 removes 30% of each group's channels"
            )
        if self.importance not in IMPORTANCE:
            raise InvalidInputError(f"importance must be one of {', '.join(IMPORTANCE)}; got {self.importance!r}")
        if self.min_channels < 1:
            raise InvalidInputError(f"min_channels must be >= 1; got {self.min_channels}")
        if self.round_to < 1:
            raise InvalidInputError(f"round_to must be >= 1; got {self.round_to} (1 means no rounding)")


def channels_to_keep(channels: int, config: ChannelConfig) -> int:
    """How many of a group's channels survive: ratio, then --min-channels, then --round-to (up)."""
    keep = channels - int(np.floor(config.ratio * channels + 1e-9))
    keep = max(keep, min(config.min_channels, channels))
    if config.round_to > 1:
        keep = int(np.ceil(keep / config.round_to) * config.round_to)
    return max(1, min(keep, channels))


def group_importance(grp: Group, kind: str, ix: GraphIndex) -> np.ndarray:
    """Per-channel score of a group: sum over its sources of the output-channel weight norm
    (weights read one at a time through ix.values)."""
    score = np.zeros(grp.channels, dtype=np.float64)
    for name, axis in grp.importance_terms:
        w = ix.values(name)
        assert w is not None
        m = np.moveaxis(w.astype(np.float64), axis, 0).reshape(w.shape[axis], -1)
        del w
        score += np.abs(m).sum(axis=1) if kind == "l1" else np.sqrt((m * m).sum(axis=1))
    return score


def count_macs(model: ModelProto) -> int:
    """Multiply-accumulates of Conv/Gemm/MatMul per sample (unknown dims count as 1)."""
    ix = GraphIndex(model)
    total = 0
    for n in ix.nodes:
        if n.op_type not in ("Conv", "Gemm", "MatMul"):
            continue
        out = ix.shape(n.output[0])
        w = ix.shape(n.input[1])
        a = ix.shape(n.input[0])
        if out is None or w is None or a is None:
            continue
        dims = [d or 1 for d in out]
        if n.op_type == "Conv":
            total += int(np.prod(dims[1:], dtype=np.int64)) * int(np.prod([d or 1 for d in w[1:]], dtype=np.int64))
        else:
            k = a[-1] if n.op_type == "MatMul" or not ix.attr(n, "transA", 0) else a[0]
            total += int(np.prod(dims[1:], dtype=np.int64)) * int(k or 1)
    return total


def _skipped(ix: GraphIndex, grp: Group, skip: tuple[str, ...]) -> str | None:
    for i in grp.sources:
        n = ix.nodes[i]
        if n.name in skip or n.input[1] in skip or (ix.const_source(n.input[1]) or "") in skip:
            return f"{ix.label(i)} named by --skip"
    return None


@dataclass(frozen=True)
class Slice:
    """A new initializer: constant `source` (a node input) without the entries at `gone[axis]`."""

    name: str
    source: str
    gone: dict[int, list[int]]

    def values(self, ix: GraphIndex) -> np.ndarray:
        """The sliced array (the source read through ix.values)."""
        arr = ix.values(self.source)
        assert arr is not None
        for axis, pos in self.gone.items():
            arr = np.delete(arr, pos, axis=axis)
        return np.ascontiguousarray(arr)

    def header(self, ix: GraphIndex) -> onnx.TensorProto:
        """The new initializer without its data when the source is an initializer (name, type and
        dims, as from_array gives them), else whole (a Constant node's value: small)."""
        src = ix.const_source(self.source)
        if src is None:
            return numpy_helper.from_array(self.values(ix), self.name)
        shape = [int(d) for d in ix.inits[src].dims]
        for axis, pos in self.gone.items():
            shape[axis] -= len(pos)
        return onnx.TensorProto(name=self.name, data_type=ix.inits[src].data_type, dims=shape)


def apply_cuts(model: ModelProto, ix: GraphIndex, removed: dict[int, np.ndarray], groups: list[Group],
           *, materialize: bool = True) -> dict[str, Slice]:
    """Slice every parameter of the pruned groups in `model` (whose nodes match ix.nodes).

    materialize=False: the sliced initializers are added as headers only (Slice.header; a model
    pruned from its file writes their values one at a time); the Slices by name are returned."""
    cuts: dict[tuple[int, int], dict[int, set[int]]] = {}
    reshapes: dict[tuple[int, int], set[int]] = {}
    depthwise: set[int] = set()
    for grp in groups:
        if grp.gid not in removed:
            continue
        gone = removed[grp.gid]
        for c in grp.cuts:
            cuts.setdefault((c.node, c.input), {}).setdefault(c.axis, set()).update(c.positions[gone].ravel().tolist())
        for node_i, dim, pos in grp.reshapes:
            reshapes.setdefault((node_i, dim), set()).update(pos[gone].ravel().tolist())
        depthwise |= grp.depthwise
    g = model.graph
    nodes = g.node
    taken = {t.name for t in g.initializer} | {o for n in nodes for o in n.output} | {i.name for i in g.input}
    new_inits = []

    def fresh(base: str) -> str:
        k = 0
        name = f"{base}.pruned"
        while name in taken:
            k += 1
            name = f"{base}.pruned{k}"
        taken.add(name)
        return name

    slices: dict[str, Slice] = {}
    for (node_i, inp), axes in cuts.items():
        source = ix.nodes[node_i].input[inp]
        cut = Slice(fresh(ix.const_source(source) or source), source, {a: sorted(p) for a, p in axes.items()})
        slices[cut.name] = cut
        new_inits.append(numpy_helper.from_array(cut.values(ix), cut.name) if materialize else cut.header(ix))
        nodes[node_i].input[inp] = cut.name
    for (node_i, dim), gone_pos in reshapes.items():
        target = ix.const(nodes[node_i].input[1])
        assert target is not None
        target = target.copy()
        target[dim] -= len(gone_pos)
        name = fresh(ix.const_source(nodes[node_i].input[1]) or nodes[node_i].input[1])
        new_inits.append(numpy_helper.from_array(target, name))
        nodes[node_i].input[1] = name
    for node_i in depthwise:
        w = [t for t in new_inits if t.name == nodes[node_i].input[1]][0]
        for a in nodes[node_i].attribute:
            if a.name == "group":
                a.i = int(w.dims[0])
    g.initializer.extend(new_inits)
    _remove_dead(model)
    return slices


def _remove_dead(model: ModelProto) -> None:
    """Drop Identity/Constant nodes and initializers nothing uses any more."""
    g = model.graph
    while True:
        used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
        used |= subgraph_inputs(g.node)
        dead = [n for n in g.node if n.op_type in ("Identity", "Constant") and not any(o in used for o in n.output)]
        if not dead:
            break
        keep = [n for n in g.node if n not in dead]
        del g.node[:]
        g.node.extend(keep)
    graph_inputs = {i.name for i in g.input}
    inits = [t for t in g.initializer if t.name in used or t.name in graph_inputs]
    del g.initializer[:]
    g.initializer.extend(inits)


def refresh_shapes(model: ModelProto) -> ModelProto:
    """The model with its value_info inferred again (kept without any when inference fails)."""
    del model.graph.value_info[:]
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception as e:  # noqa: BLE001 - shapes are optional metadata
        log.warning("shape inference after pruning failed: %s", e)
        return model


def prune_channels(
    model: ModelProto,
    config: ChannelConfig,
    *,
    floor: FidelityFloor | None = None,
    feed: Feed | None = None,
    labels: np.ndarray | None = None,
) -> PruneResult:
    """Remove the least important `ratio` of channels of every safely traceable group.

    Weights held in Constant nodes (paddle2onnx exports) are moved into initializers first.
    With a `floor` (onnxopt.pruning.guard.FidelityFloor) the pruned model is measured against
    the input on `feed` (with `labels`: accuracy too; without a feed: seeded synthetic inputs)
    and the ratio is lowered until the floor holds; GateFailedError when no ratio does.
    `report["fidelity"]` records requested and applied ratios.
    """
    if floor is not None:
        return guarded_prune(model, config, _prune_channels, "ratio", floor, feed, labels)
    return _prune_channels(model, config)


def _prune_channels(model: ModelProto, config: ChannelConfig) -> PruneResult:
    """prune_channels without a fidelity floor."""
    original = model
    model, moved = constants_to_initializers(model)
    ix, groups = build_groups(model)
    removed, report = select_channels(model, ix, groups, config, moved)
    if not removed:
        return PruneResult(copy_model(original), False, report)
    out = copy_model(model)
    apply_cuts(out, ix, removed, groups)
    out = refresh_shapes(out)
    check_pruned(out)
    finish_report(report, out, len(removed))
    return PruneResult(out, True, report)


def select_channels(model: ModelProto, ix: GraphIndex, groups: list[Group], config: ChannelConfig, moved: int,
                    score: Callable[[Group], np.ndarray] | None = None) -> tuple[dict[int, np.ndarray], dict]:
    """The channels each group loses ({group id: removed channels}, only groups that lose some)
    and the report so far (params_after/macs_after set when nothing is removed).

    model: the graph ix indexes (Constant nodes moved into initializers: `moved` of them);
    score: a group's channel scores (default: group_importance, computed here).
    """
    node_names = {n.name for n in ix.nodes}
    unknown = [s for s in config.skip if s not in node_names and s not in ix.inits]
    if unknown:
        raise InvalidInputError(f"--skip {', '.join(unknown)}: matches no node or initializer name")
    removed: dict[int, np.ndarray] = {}
    rows: list[dict] = []
    left_alone: list[dict] = [
        {"layers": [where], "channels": None, "reason": ", ".join(f"{n} {op}" for op, n in counts.items())
         + " left alone (inside a subgraph; channel pruning covers the main graph)"}
        for where, counts in subgraph_op_counts(model.graph, ("Conv", "Gemm", "MatMul"))
    ]
    for grp in groups:
        names = [ix.label(i) for i in grp.sources]
        reason = _skipped(ix, grp, config.skip)
        if grp.unsafe or reason:
            left_alone.append({"layers": names, "channels": grp.channels,
                               "reason": reason or "; ".join(dict.fromkeys(grp.unsafe))})
            continue
        keep = channels_to_keep(grp.channels, config)
        scores = score(grp) if score is not None else group_importance(grp, config.importance, ix)
        order = np.argsort(-scores, kind="stable")
        kept = np.sort(order[:keep])
        gone = np.setdiff1d(np.arange(grp.channels), kept)
        rows.append({"layers": names, "channels_before": grp.channels, "channels_after": int(keep),
                     "removed": gone.tolist()})
        if gone.size:
            removed[grp.gid] = gone
    params_before = initializer_stats(model)[0]
    macs_before = count_macs(model)
    report: dict = {
        "method": "channels",
        "ratio": config.ratio,
        "importance": config.importance,
        "groups": rows,
        "left_alone": left_alone,
        "constants_to_initializers": moved,
        "params_before": params_before,
        "macs_before": macs_before,
    }
    if not removed:
        report.update(params_after=params_before, macs_after=macs_before,
                      message="no channels removed: " + ("no prunable channel groups found" if not rows
                                                          else "the ratio removes no channel in any group"))
    return removed, report


def check_pruned(model: ModelProto | str) -> None:
    """The ONNX checker on a pruned model (or its file); a failure is a bug in a cutter."""
    try:
        onnx.checker.check_model(model)
    except Exception as e:  # a bug in a cutter, never the user's fault
        raise OnnxoptError(f"channel pruning produced an invalid model ({e}); please report this") from e


def finish_report(report: dict, out: ModelProto, pruned_groups: int) -> None:
    """Add the pruned model's parameter and MAC counts (out: its graph; weights not needed)."""
    report["params_after"] = initializer_stats(out)[0]
    report["macs_after"] = count_macs(out)
    report["params_ratio"] = report["params_after"] / max(1, report["params_before"])
    report["macs_ratio"] = report["macs_after"] / max(1, report["macs_before"])
    log.info("channel pruning: %d groups pruned, %d left alone, params %d -> %d",
             pruned_groups, len(report["left_alone"]), report["params_before"], report["params_after"])
