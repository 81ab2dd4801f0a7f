"""Magnitude pruning of a model file, one tensor at a time: bounded memory for big models.

`prune_magnitude` (onnxopt.pruning.magnitude) works on a ModelProto with every weight loaded and
copies the weights several times per candidate (on an 8-layer 512 MiB MLP: 4.7 GB peak RSS).
Here the model is read as its graph (weights stay in their file); every candidate the fidelity
floor measures is written to a work folder beside the output tensor by tensor (read one weight,
zero its smallest entries, write it, drop it) and onnxruntime loads it from there; the last
candidate becomes the output: streamed into one inline file up to 2 GB (inline_file.write_inline,
the bytes `save_model` would write), else renamed with its `<output>.data`. Memory: the graph,
one tensor and its temporaries (argpartition's int64 indices: about 4x the tensor), and
onnxruntime's copy of the weights while a candidate is measured. Time: a fixed number of reads
and writes of the weights per candidate (at most 1 + steps + 1 candidates).

Per tensor and threshold modes zero what the in-memory path zeroes (the same argpartition on the
same array); the global mode selects the k smallest over all tensors with onnxopt.pruning.selection
(the same entries unless several share the k-th magnitude). The written model is the in-memory
path's, byte for byte (tests/test_prune_big.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import ModelProto, TensorProto, numpy_helper

from onnxopt.core.external import (
    data_file,
    external_info,
    is_external,
    load_external,
    remove_model_file,
    write_external,
)
from onnxopt.core.feeds import Feed
from onnxopt.core.model import load_model
from onnxopt.passes.graph import constants_to_initializers
from onnxopt.pruning.guard import FidelityFloor, guarded_prune
from onnxopt.pruning.inline_file import serialized_size, write_inline
from onnxopt.pruning.magnitude import (
    WEIGHT_INPUTS,
    MagnitudeConfig,
    TensorCount,
    add_counts,
    new_report,
    prunable,
    smallest,
    subgraph_skips,
)
from onnxopt.pruning.result import PruneResult
from onnxopt.pruning.selection import Cut, high_histogram, smallest_cut
from onnxopt.pruning.sparse_storage import (
    MIN_OPSET,
    decode_chain,
    encoded_inits,
    encoding,
    shared_constants,
)

log = logging.getLogger(__name__)

# Models whose files (graph and external data) are above this many bytes are pruned from the file
# (the result is the same, byte for byte; below it the in-memory path costs little).
STREAM_BYTES = 16 * 2**20
INLINE_LIMIT = 2**31 - 2**20  # as core.model.save_model: bigger outputs get external data (protobuf: 2 GB)
_PLAIN: dict[int, np.dtype] = {  # read straight from the file
    TensorProto.FLOAT: np.dtype("<f4"), TensorProto.FLOAT16: np.dtype("<f2"), TensorProto.DOUBLE: np.dtype("<f8")}


def streams(path: str | os.PathLike[str], model: ModelProto | None = None) -> bool:
    """Whether the model at path (model: its graph, if loaded) is above STREAM_BYTES on disk:
    big enough to be pruned from its file."""
    return on_disk_size(path, model) > STREAM_BYTES


def on_disk_size(path: str | os.PathLike[str], model: ModelProto | None = None) -> int:
    """Bytes of a model file and of the external-data files its graph (model, if loaded) refers to."""
    p = Path(path)
    graph = model if model is not None else graph_of(p)
    names = {external_info(t).get("location", "") for t in graph.graph.initializer if is_external(t)}
    return p.stat().st_size + sum((p.parent / n).stat().st_size for n in names if n and (p.parent / n).is_file())


def graph_of(path: Path) -> ModelProto:
    """The model at path without its external data."""
    return onnx.load(str(path), load_external_data=False)


def read_flat(t: TensorProto, base_dir: Path) -> np.ndarray:
    """The values of initializer t (external data under base_dir, or inline) as a writable flat array."""
    dtype = _PLAIN.get(t.data_type)
    if is_external(t) and dtype is not None:  # one read straight into the array
        info = external_info(t)
        n = int(np.prod([int(d) for d in t.dims]))
        f = np.fromfile(base_dir / info["location"], dtype=dtype, count=n, offset=int(info.get("offset", 0)))
        if f.size == n:
            return f
    return numpy_helper.to_array(t, str(base_dir)).reshape(-1).copy()


@dataclass
class _Source:
    """The input model file: its graph (names given, weights not loaded), the graph with Constant
    nodes moved into initializers, the candidate tensors, and the global mode's cached histogram."""

    path: Path
    model: ModelProto
    config: MagnitudeConfig
    moved_model: ModelProto = field(init=False)
    moved: int = field(init=False)
    chosen: dict[str, list[str]] = field(init=False)
    skipped: list[dict] = field(init=False)
    inits: dict[str, TensorProto] = field(init=False)
    hist: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.moved_model, self.moved = constants_to_initializers(self.model)
        self.chosen, self.skipped = prunable(self.moved_model, self.config)
        self.skipped += subgraph_skips(self.moved_model, WEIGHT_INPUTS)
        self.inits = {t.name: t for t in self.moved_model.graph.initializer}

    def flat(self, name: str) -> np.ndarray:
        """The values of initializer `name` as a writable flat array (read from its file)."""
        return read_flat(self.inits[name], self.path.parent)

    def shape(self, name: str) -> list[int]:
        return [int(d) for d in self.inits[name].dims]


def _zero(f: np.ndarray, name: str, config: MagnitudeConfig, cut: Cut | None) -> None:
    """Zero the entries of one flat tensor the mode selects (as magnitude._zero_smallest does)."""
    if config.threshold is not None:
        f[np.abs(f) < config.threshold] = 0
    elif cut is not None:
        cut.apply(f, name)
    else:
        assert config.sparsity is not None
        f[smallest(np.abs(f), int(round(config.sparsity * f.size)))] = 0


def _cut(src: _Source, config: MagnitudeConfig) -> Cut | None:
    """The global mode's cut (onnxopt.pruning.selection); None in the other modes."""
    if config.mode != "global" or not src.chosen:
        return None
    assert config.sparsity is not None
    names = list(src.chosen)
    total = sum(int(np.prod(src.shape(nm))) for nm in names)
    k = int(round(config.sparsity * total))
    if k <= 0:
        return Cut(0, {})  # nothing is below 0
    if k >= total:
        return Cut(0xFFFFFFFF, {nm: int(np.prod(src.shape(nm))) for nm in names})
    if src.hist is None:  # the same for every sparsity tried
        src.hist = high_histogram(src.flat(nm) for nm in names)
    return smallest_cut(names, src.flat, k, src.hist)


def _write_pruned(src: _Source, config: MagnitudeConfig, dst: Path) -> list[TensorCount]:
    """Write the pruned model to dst tensor by tensor; the counts of the candidate tensors."""
    cut = _cut(src, config)
    rows: dict[str, TensorCount] = {}

    def tensors() -> Iterator[TensorProto | tuple[TensorProto, np.ndarray]]:
        for t in src.moved_model.graph.initializer:
            if t.name not in src.chosen:
                yield t
                continue
            f = src.flat(t.name)
            before = int(np.count_nonzero(f == 0))
            _zero(f, t.name, config, cut)
            row = TensorCount(t.name, src.chosen[t.name], src.shape(t.name), f.size, before, int(np.count_nonzero(f == 0)))
            rows[t.name] = row
            if row.zeros_after == before:
                yield t
            elif f.nbytes < 1024:  # write_external's threshold: stays inline
                yield numpy_helper.from_array(f.reshape(row.shape), t.name)
            else:  # the header as from_array makes it, the values written straight from the array
                yield TensorProto(name=t.name, data_type=t.data_type, dims=row.shape), f
            del f

    remove_model_file(dst)
    write_external(src.moved_model, dst, base_dir=src.path.parent, tensors=tensors())
    return [rows[nm] for nm in src.chosen]  # in the in-memory path's order


def _write_encoded(dense: Path, dst: Path) -> list[dict]:
    """Write dense's model to dst with every mostly-zero initializer in the bitmask form
    (sparse_storage.compress_initializers, tensor by tensor); the report rows ([]: none was worth it,
    nothing written)."""
    from onnxopt.core.errors import UnsupportedModelError
    from onnxopt.core.model import default_opset

    model = graph_of(dense)
    opset = default_opset(model)
    if opset < MIN_OPSET:
        raise UnsupportedModelError(
            f"sparse storage needs ai.onnx opset >= {MIN_OPSET}; the model has opset {opset}: "
            "re-export with a newer opset or drop --sparse-storage"
        )
    base = str(dense.parent)
    inputs = {i.name for i in model.graph.input}
    entries: dict[str, dict] = {}
    for t in model.graph.initializer:
        if t.name not in inputs and (e := encoding(t.name, numpy_helper.to_array(t, base), 0.1)) is not None:
            entries[t.name] = e
    if not entries:
        return []
    keep = [t for t in model.graph.initializer if t.name not in entries]
    present = {t.name for t in keep}
    shared = [t for t in shared_constants() if t.name not in present]
    by_name = {t.name: t for t in model.graph.initializer}
    out = ModelProto()
    out.CopyFrom(model)  # the graph: weights are in dense's external data
    old = list(out.graph.node)
    del out.graph.node[:]
    out.graph.node.extend([n for nm in entries for n in decode_chain(nm)] + old)

    def tensors() -> Iterator[TensorProto]:
        yield from keep
        yield from shared
        for nm in entries:
            yield from encoded_inits(nm, numpy_helper.to_array(by_name[nm], base))

    remove_model_file(dst)
    write_external(out, dst, base_dir=dense.parent, tensors=tensors())
    return list(entries.values())


def _candidate(src: _Source, config: MagnitudeConfig, work: Path, name: str) -> PruneResult:
    """One pruned model written to `work/name` (+ `.data`): magnitude._prune_magnitude from a file."""
    dst = work / name
    report = new_report(config, list(src.skipped), src.moved, bool(src.chosen))
    if not src.chosen and not config.sparse_storage:
        return _original(src, dst, report, None)
    dense = work / "dense" / name if config.sparse_storage else dst
    dense.parent.mkdir(exist_ok=True)
    rows = _write_pruned(src, config, dense)
    modified = add_counts(report, rows)
    encoded: list[dict] = []
    if config.sparse_storage:
        encoded = _write_encoded(dense, dst)
        if not encoded:
            remove_model_file(dst)
            os.replace(dense, dst)
            os.replace(data_file(dense), data_file(dst))
        remove_model_file(dense)
        modified = modified or bool(encoded)
    if not modified:
        return _original(src, dst, report, config.measure_gzip)
    report["storage"] = _storage(src, dst, encoded, config.measure_gzip)
    log.info("magnitude pruning (from the file): %d tensors, %s", len(rows), report["total"])
    return PruneResult(graph_of(dst), True, report, path=dst)


def _original(src: _Source, dst: Path, report: dict, gzip: bool | None) -> PruneResult:
    """The input model, unchanged (with its node names), written to dst: nothing was pruned;
    report["storage"] is set unless gzip is None."""
    remove_model_file(dst)
    write_external(src.model, dst, base_dir=src.path.parent)
    if gzip is not None:
        report["storage"] = _storage(src, dst, [], gzip)
    return PruneResult(graph_of(dst), False, report, path=dst)


def _storage(src: _Source, dst: Path, encoded: list[dict], gzip: bool) -> dict:
    """magnitude._storage from the files: serialized sizes computed from the graphs; gzip sizes
    (asked for) need each model loaded and serialized once."""
    from onnxopt.pruning.sparse_storage import model_sizes

    before, after = serialized_size(src.model, src.path.parent), serialized_size(graph_of(dst), dst.parent)
    gz_before = gz_after = None
    if gzip:
        gz_before = model_sizes(load_model(src.path)).gzip
        gz_after = model_sizes(load_external(dst)).gzip
    return {
        "format": "bitmask" if encoded else "dense",
        "encoded": encoded,
        "size_before": before,
        "size_after": after,
        "size_ratio": after / before,
        "gzip_before": gz_before,
        "gzip_after": gz_after,
        "gzip_ratio": gz_after / gz_before if gz_after is not None and gz_before else None,
    }


@contextlib.contextmanager
def _workdir(beside: Path) -> Iterator[Path]:
    """A private folder beside the output (same file system: the result is moved, not copied)."""
    work = Path(tempfile.mkdtemp(prefix=".onnxopt-prune-", dir=beside.parent))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def prune_magnitude_file(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    config: MagnitudeConfig,
    *,
    model: ModelProto | None = None,
    floor: FidelityFloor | None = None,
    feed: Feed | None = None,
    labels: np.ndarray | None = None,
) -> PruneResult:
    """prune_magnitude for a model file, written to dst, in bounded memory (module doc).

    model: src's graph as already loaded (`load_model(src, load_external_data=False)`), else
    loaded here. dst is written inline when it fits protobuf's 2 GB, else with `<dst>.data`
    beside it; nothing is written when the floor raises GateFailedError. The returned
    PruneResult has `path=dst` and its `model` is dst's graph without the weights (read them
    from dst). src and its external data are only read.
    """
    src_path = Path(src)
    graph = model if model is not None else load_model(src_path, load_external_data=False)
    source = _Source(src_path, graph, config)
    field_name = "threshold" if config.threshold is not None else "sparsity"
    return run_from_file(src_path, Path(dst), graph, config, field_name,
                         lambda cfg, work, name: _candidate(source, cfg, work, name), floor, feed, labels)


Candidate = Callable[[Any, Path, str], PruneResult]


def run_from_file(src: Path, dst: Path, graph: ModelProto, config: Any, field_name: str, candidate: Candidate,
                  floor: FidelityFloor | None, feed: Feed | None, labels: np.ndarray | None) -> PruneResult:
    """The frame of a pruning from a file: `candidate(config, work, name)` writes one pruned model
    to `work/name` (+ `.data`) in a private work folder beside dst and returns it (`path` set); the
    fidelity floor (if any) measures candidates by path against src (graph: src's graph, weights
    not loaded) and lowers `config.<field_name>`; the last candidate is placed at dst (_place).
    The work folder is removed whatever happens; nothing is written to dst on an error."""
    with _workdir(dst) as work:

        def prune(_: ModelProto, cfg: Any) -> PruneResult:
            return candidate(cfg, work, dst.name)

        if floor is not None:
            result = guarded_prune(graph, config, prune, field_name, floor, feed, labels, reference=src)
        else:
            result = prune(graph, config)
        assert result.path is not None
        _place(result.path, dst)
    return PruneResult(result.model, result.modified, result.report, path=dst)


def _place(work: Path, dst: Path) -> None:
    """Move the final candidate to dst: its files renamed when it is above INLINE_LIMIT, else
    written inline by write_inline (atomically: a temporary file renamed onto dst)."""
    graph = graph_of(work)
    if serialized_size(graph, work.parent) > INLINE_LIMIT:
        os.replace(data_file(work), data_file(dst))
        os.replace(work, dst)
        return
    tmp = work.with_name(work.name + ".inline")
    write_inline(graph, work.parent, tmp)
    os.replace(tmp, dst)
