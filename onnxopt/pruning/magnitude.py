"""Magnitude (unstructured) pruning of weight initializers.

Magnitude pruning sets the smallest-|w| entries of Conv/Gemm/MatMul weights to zero: per
tensor (each reaches `sparsity` exactly), globally (one threshold over all candidates, the
total reaches `sparsity` exactly) or below an absolute `threshold`. Zeros alone do not make
onnxruntime's dense CPU kernels faster; they make the file compressible (`sparse_storage`).
Structured channel pruning, which does change latency, lives in onnxopt.pruning.channels.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from onnx import ModelProto, NodeProto, TensorProto, numpy_helper

from onnxopt.core.errors import InvalidInputError
from onnxopt.core.feeds import Feed
from onnxopt.core.model import copy_model, subgraph_op_counts
from onnxopt.passes.graph import constants_to_initializers
from onnxopt.pruning.guard import FidelityFloor, guarded_prune
from onnxopt.pruning.result import PruneResult
from onnxopt.pruning.sparse_storage import compress_initializers, model_sizes

log = logging.getLogger(__name__)

# op type -> input positions that hold weights worth pruning
WEIGHT_INPUTS = {"Conv": (1,), "ConvTranspose": (1,), "Gemm": (0, 1), "MatMul": (0, 1)}

ZEROS_NOTE = (
    "Zeros alone do not make onnxruntime's dense CPU kernels faster: latency is unchanged. "
    "They make the file smaller with --sparse-storage (and compress well with gzip); "
    "use --method channels for a faster model."
)


@dataclass(frozen=True)
class MagnitudeConfig:
    """Magnitude pruning settings; `threshold`, when set, is used instead of `sparsity`."""

    sparsity: float | None = 0.5
    threshold: float | None = None
    global_: bool = False
    skip: tuple[str, ...] = ()
    include: tuple[str, ...] = ()
    min_elements: int = 256
    sparse_storage: bool = False
    measure_gzip: bool = False  # also report gzip sizes (zlib level 6; seconds for a 50 MB model)

    def __post_init__(self) -> None:
        if self.threshold is None:
            if self.sparsity is None:
                raise InvalidInputError("give a sparsity (e.g. --sparsity 0.5) or a --threshold")
            if not 0.0 <= self.sparsity < 1.0:
                raise InvalidInputError(
                    f"sparsity must be in [0, 1); got {self.sparsity}: e.g. --sparsity 0.5 zeroes half the weights"
                )
        elif not (self.threshold >= 0.0 and np.isfinite(self.threshold)):
            raise InvalidInputError(
                f"threshold must be a finite number >= 0; got {self.threshold}: weights with |w| < threshold become 0"
            )
        if self.min_elements < 0:
            raise InvalidInputError(f"min_elements must be >= 0; got {self.min_elements}")

    @property
    def mode(self) -> str:
        """'threshold', 'global' or 'per_layer'."""
        if self.threshold is not None:
            return "threshold"
        return "global" if self.global_ else "per_layer"


def _resolve(name: str, producers: dict[str, NodeProto], inits: dict[str, TensorProto]) -> str | None:
    """The initializer a tensor name comes from, following Identity nodes; None if not constant."""
    for _ in range(32):
        if name in inits:
            return name
        node = producers.get(name)
        if node is None or node.op_type != "Identity":
            return None
        name = node.input[0]
    return None


def prunable(model: ModelProto, config: MagnitudeConfig) -> tuple[dict[str, list[str]], list[dict]]:
    """Initializer name -> consuming node names, and the list of skipped tensors with reasons."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    producers = {o: n for n in g.node for o in n.output}
    node_names = {n.name for n in g.node}
    unknown = [s for s in config.skip if s not in inits and s not in node_names]
    if unknown:
        raise InvalidInputError(
            f"--skip {', '.join(unknown)}: matches no node or initializer name; "
            "see the names with `onnxopt prune MODEL -o OUT --json` (report.tensors)"
        )
    missing = [s for s in config.include if s not in inits]
    if missing:
        raise InvalidInputError(f"--include {', '.join(missing)}: no initializer of that name in the model")
    found: dict[str, list[str]] = {}
    skip_nodes: dict[str, str] = {}
    for node in g.node:
        for pos in WEIGHT_INPUTS.get(node.op_type, ()):
            if pos >= len(node.input) or not node.input[pos]:
                continue
            src = _resolve(node.input[pos], producers, inits)
            if src is None:
                continue
            found.setdefault(src, []).append(node.name)
            if node.name in config.skip:
                skip_nodes[src] = node.name
    for name in config.include:
        found.setdefault(name, [])
    chosen: dict[str, list[str]] = {}
    skipped: list[dict] = []
    for name, nodes in found.items():
        t = inits[name]
        n = int(np.prod(t.dims)) if len(t.dims) else 1
        reason = None
        if name in config.skip:
            reason = "named by --skip"
        elif name in skip_nodes:
            reason = f"node {skip_nodes[name]} named by --skip"
        elif t.data_type not in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16):
            reason = f"not floating point ({TensorProto.DataType.Name(t.data_type).lower()})"
        elif n < config.min_elements and name not in config.include:
            reason = f"{n} elements < min_elements {config.min_elements}"
        if reason:
            skipped.append({"name": name, "nodes": nodes, "reason": reason})
        else:
            chosen[name] = nodes
    return chosen, skipped


def smallest(absval: np.ndarray, k: int) -> np.ndarray:
    """Indices of exactly k smallest entries (ties broken deterministically by argpartition)."""
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    if k >= absval.size:
        return np.arange(absval.size)
    return np.argpartition(absval, k - 1, kind="introselect")[:k]


def subgraph_skips(model: ModelProto, op_types: Iterable[str]) -> list[dict]:
    """One `skipped` report entry per If/Loop/Scan subgraph holding weight ops: pruning edits the
    main graph only."""
    return [
        {"name": where, "nodes": [], "reason": ", ".join(f"{n} {op}" for op, n in counts.items())
         + " left alone (inside a subgraph; pruning covers the main graph)"}
        for where, counts in subgraph_op_counts(model.graph, op_types)
    ]


def prune_magnitude(
    model: ModelProto,
    config: MagnitudeConfig,
    *,
    floor: FidelityFloor | None = None,
    feed: Feed | None = None,
    labels: np.ndarray | None = None,
) -> PruneResult:
    """Zero the smallest-magnitude weights of Conv/Gemm/MatMul initializers (input not modified).

    Weights held in Constant nodes (paddle2onnx exports) are moved into initializers first.
    With a `floor` (onnxopt.pruning.guard.FidelityFloor) the pruned model is measured against
    the input on `feed` (with `labels`: accuracy too; without a feed: seeded synthetic inputs)
    and the sparsity (or threshold) is lowered until the floor holds; GateFailedError when no
    value does. `report["fidelity"]` records requested and applied values.
    """
    if floor is not None:
        field = "threshold" if config.threshold is not None else "sparsity"
        return guarded_prune(model, config, _prune_magnitude, field, floor, feed, labels)
    return _prune_magnitude(model, config)


def _prune_magnitude(model: ModelProto, config: MagnitudeConfig) -> PruneResult:
    """prune_magnitude without a fidelity floor."""
    original = model
    model, moved = constants_to_initializers(model)
    chosen, skipped = prunable(model, config)
    skipped += subgraph_skips(model, WEIGHT_INPUTS)
    report = new_report(config, skipped, moved, bool(chosen))
    if not chosen and not config.sparse_storage:
        return PruneResult(copy_model(original), False, report)
    out = copy_model(model)
    inits = {t.name: t for t in out.graph.initializer}
    arrays = {name: numpy_helper.to_array(inits[name]) for name in chosen}
    flats = {name: a.reshape(-1).copy() for name, a in arrays.items()}
    zeros_before = {name: int(np.count_nonzero(f == 0)) for name, f in flats.items()}
    _zero_smallest(flats, config)
    rows = []
    for name, f in flats.items():  # empty when only sparse storage is asked for
        rows.append(TensorCount(name, chosen[name], list(arrays[name].shape), f.size, zeros_before[name],
                                int(np.count_nonzero(f == 0))))
        if rows[-1].zeros_after != rows[-1].zeros_before:
            inits[name].CopyFrom(numpy_helper.from_array(f.reshape(arrays[name].shape), name))
    modified = add_counts(report, rows)
    encoded: list[dict] = []
    if config.sparse_storage:
        # every mostly-zero initializer, so an int8 model quantized after pruning shrinks too
        out, storage = compress_initializers(out, None, gzip=False)
        encoded = storage["encoded"]
        modified = modified or bool(encoded)
    if not modified:
        out = copy_model(original)
    report["storage"] = _storage(original, out, encoded, config.measure_gzip)
    log.info("magnitude pruning: %d tensors, %s", len(rows), report["total"])
    return PruneResult(out, modified, report)


def new_report(config: MagnitudeConfig, skipped: list[dict], moved: int, found: bool) -> dict:
    """The report of a magnitude pruning before any tensor is counted (found: any candidate)."""
    report: dict = {
        "method": "magnitude",
        "mode": config.mode,
        "target_sparsity": None if config.threshold is not None else config.sparsity,
        "threshold": config.threshold,
        "tensors": [],
        "skipped": skipped,
        "constants_to_initializers": moved,
        "note": ZEROS_NOTE,
    }
    if not found:
        report["message"] = "no prunable tensors (floating-point Conv/Gemm/MatMul weight initializers) found"
        report["total"] = {"elements": 0, "zeros_before": 0, "zeros_after": 0,
                           "sparsity_before": 0.0, "sparsity_after": 0.0}
    return report


@dataclass(frozen=True)
class TensorCount:
    """One pruned tensor: where it is used, its shape and size, its zeros before and after."""

    name: str
    nodes: list[str]
    shape: list[int]
    elements: int
    zeros_before: int
    zeros_after: int


def add_counts(report: dict, rows: list[TensorCount]) -> bool:
    """Add the per-tensor rows and the total to a report; whether any tensor changed."""
    for r in rows:
        report["tensors"].append({"name": r.name, "nodes": r.nodes, "shape": r.shape, "elements": r.elements,
                                  "sparsity_before": r.zeros_before / r.elements,
                                  "sparsity_after": r.zeros_after / r.elements})
    n = sum(r.elements for r in rows)
    if n:
        before, after = sum(r.zeros_before for r in rows), sum(r.zeros_after for r in rows)
        report["total"] = {"elements": n, "zeros_before": before, "zeros_after": after,
                           "sparsity_before": before / n, "sparsity_after": after / n}
    return any(r.zeros_after != r.zeros_before for r in rows)


def _zero_smallest(flats: dict[str, np.ndarray], config: MagnitudeConfig) -> None:
    """Set entries of the flat weight arrays to zero in place: below the threshold, the smallest
    over all arrays (global) or the smallest of each array (per layer)."""
    if config.threshold is not None:
        for f in flats.values():
            f[np.abs(f) < config.threshold] = 0
    elif config.global_ and flats:
        assert config.sparsity is not None
        names = list(flats)
        sizes = np.array([flats[nm].size for nm in names])
        allabs = np.concatenate([np.abs(flats[nm]).astype(np.float32, copy=False) for nm in names])
        idx = smallest(allabs, int(round(config.sparsity * allabs.size)))
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        owner = np.searchsorted(offsets, idx, side="right") - 1
        for i, nm in enumerate(names):
            flats[nm][idx[owner == i] - offsets[i]] = 0
    else:
        assert config.sparsity is not None
        for f in flats.values():
            f[smallest(np.abs(f), int(round(config.sparsity * f.size)))] = 0


def _storage(model: ModelProto, out: ModelProto, encoded: list[dict], gzip: bool) -> dict:
    """The file sizes (and gzip sizes when asked) before and after, and the storage format."""
    before, after = model_sizes(model, gzip), model_sizes(out, gzip)
    return {
        "format": "bitmask" if encoded else "dense",
        "encoded": encoded,
        "size_before": before.size,
        "size_after": after.size,
        "size_ratio": after.size / before.size,
        "gzip_before": before.gzip,
        "gzip_after": after.gzip,
        "gzip_ratio": after.gzip / before.gzip if after.gzip is not None and before.gzip else None,
    }
