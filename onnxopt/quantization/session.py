"""QuantSession: the prepared models, evaluator and work directory one quantize() call shares; building and scoring a candidate."""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
from onnx import ModelProto

from onnxopt.core.external import same_computation, write_external
from onnxopt.core.model import copy_model, op_histogram
from onnxopt.quantization.calibration import (
    CalibrationSource,
)
from onnxopt.quantization.engine import (
    QUANT_PRE_PROCESS_KEY,
    Candidate,
    CandidateFailed,
    Prepared,
    build,
    build_file,
    check_runs,
    drop_quant_metadata,
    model_size,
    node_changes,
    quant_ops_in,
    remove_model_file,
)
from onnxopt.quantization.evaluate import Evaluator
from onnxopt.quantization.fallback import SENSITIVITY_SAMPLES, Built

log = logging.getLogger(__name__)

KEEP_BYTES = 16 * 2**20  # candidates above this size are kept in a file, not in memory


@dataclass(frozen=True)
class InputModel:
    """The model quantize() was given, as its sessions and report see it.

    graph: the model with every node named: the whole model, or in file mode (a big model) its
    graph only; source: what sessions load (the model, or its file); size: the whole model's
    serialized size; path: file mode: the file the quantizer starts from (named nodes, weights in
    external data), else None; load: the whole model (a fresh copy), for when it is returned.
    """

    graph: ModelProto
    source: ModelProto | Path
    size: int
    path: Path | None
    load: Callable[[], ModelProto]

    @staticmethod
    def in_memory(model: ModelProto) -> InputModel:
        """A model held whole (named already): sessions load the proto."""
        return InputModel(model, model, model_size(model), None, lambda: copy_model(model))


class QuantSession:
    """Shared state of one quantize() call: prepared models, evaluator, work directory, notes.

    original: the input's graph (InputModel.graph); input_source / input_size / input_model():
    the input for sessions, its size, and the whole model to return (InputModel)."""

    def __init__(self, original: ModelProto, variants: list[Prepared], source: CalibrationSource | None,
                 evaluator: Evaluator, workdir: Path, notes: list[str], given: InputModel | None = None) -> None:
        self.original = original
        self.variants = variants
        self.source = source
        self.evaluator = evaluator
        self.workdir = workdir
        self.notes = notes
        self.given = given or InputModel.in_memory(original)
        self._hist_before = quant_ops_in(original)
        self._count = 0
        self._float_is_input: bool | None = None

    @property
    def input_source(self) -> ModelProto | Path:
        """The input for a session: the proto, or in file mode its file."""
        return self.given.source

    @property
    def input_size(self) -> int:
        """The input's model_size(), without loading it."""
        return self.given.size

    def input_model(self) -> ModelProto:
        """The input with its weights (a fresh copy), to return."""
        return self.given.load()

    @property
    def float_is_input(self) -> bool:
        """File mode only: the float model computes what the input does (same nodes, same weights:
        core.external.same_computation), so one session times both. Checked once."""
        if self._float_is_input is None:
            self._float_is_input = self.given.path is not None and (
                self.float_path == self.given.path or same_computation(self.given.path, self.float_path))
        return self._float_is_input

    @property
    def float_path(self) -> Path:
        """The float model auto mode measures against: the constant-folded variant's file (onnxruntime's
        basic graph optimization, portable), scored and timed from the file (its weights are not loaded)."""
        return self.variants[-1].path

    @property
    def float_size(self) -> int:
        """model_size() of float_model(), without loading it."""
        return self.variants[-1].size - _metadata_bytes(self.variants[-1].model, QUANT_PRE_PROCESS_KEY)

    def float_model(self) -> ModelProto:
        """The float model with its weights, to return (loaded from its file now)."""
        return drop_quant_metadata(self.variants[-1].load())

    def build(self, cand: Candidate, evaluator: Evaluator | None = None, allow_unquantized: bool = False) -> Built:
        """Quantize, load, run and score one candidate, falling back to the folded model on failure.

        allow_unquantized: score it even when no compute node was quantized (the fallback's bound:
        what the quantizer adds around the nodes); otherwise that is a CandidateFailed.
        A candidate above KEEP_BYTES, or of a big prepared model (Prepared.big: the file the quantizer
        wrote, engine.build_file), is kept in a file of the work directory (removed with the Built,
        or with the directory): it is checked and scored from there and the Built holds its graph
        only (Built.full() loads it)."""
        ev = evaluator or self.evaluator
        reasons: list[str] = []
        for prep in self.variants:
            cand_p = _map_excluded(cand, prep.model)
            path = None
            try:
                t0 = time.perf_counter()
                if prep.big:  # kept in the quantizer's own file, its weights never loaded here
                    q, path, size = build_file(prep, cand_p, self.workdir, self.source)
                else:
                    q = build(prep, cand_p, self.workdir, self.source)
                    size = model_size(q)
                    q, path = self._keep(q, size)
                log.debug("built %s on %s in %.2f s", cand.name, prep.variant, time.perf_counter() - t0)
                check_runs(q, ev.feed, path)
                quantized, left = node_changes(prep.model, q, cand_p)
                if not allow_unquantized and (quant_ops_in(q) == self._hist_before or not quantized):
                    raise CandidateFailed(_nothing_quantized_reason(prep.model, cand, left))
                fid = ev.score(path if path is not None else q)
                log.debug("%s scored in %.2f s (total)", cand.name, time.perf_counter() - t0)
            except CandidateFailed as e:
                _remove(path)
                reasons.append(f"{prep.variant} model: {e}")
                log.info("%s on the %s model failed: %s", cand.name, prep.variant, e)
                continue
            notes = [f"{r}; retried on the {prep.variant} model" for r in reasons]
            built = Built(cand, q, quantized, left, fid, prep.variant, notes, path=path, size=size)
            if path is not None:
                weakref.finalize(built, _remove, path)  # a candidate dropped (e.g. a sensitivity probe): its file goes
            return built
        if len({r.split(": ", 1)[-1] for r in reasons}) == 1:
            raise CandidateFailed(reasons[0].split(": ", 1)[-1])
        raise CandidateFailed("; ".join(reasons))

    def local_rank(self, base: Built) -> list[tuple[str, float]] | None:
        """The fallback's ranking without a build per node (quantization.local_rank), in file mode
        only (a big model, where each build reads and writes the whole model); None otherwise or
        when base quantized nodes local_rank does not cover (the fallback then builds per node)."""
        from onnxopt.quantization.local_rank import rank_locally

        prep = next((p for p in self.variants if p.variant == base.variant), None)
        if self.given.path is None or prep is None:
            return None
        feed = self.evaluator.subset(min(SENSITIVITY_SAMPLES, self.evaluator.samples)).feed
        return rank_locally(base.cand, base.quantized_nodes, prep.path, prep.model, feed)

    def _keep(self, model: ModelProto, size: int) -> tuple[ModelProto, Path | None]:
        """(model, None) when it is small, else (its graph only, the file it was written to)."""
        if size <= KEEP_BYTES:
            return model, None
        self._count += 1
        path = self.workdir / f"built-{self._count}.onnx"
        write_external(model, path)
        return onnx.load(str(path), load_external_data=False), path


def _remove(path: Path | None) -> None:
    """Delete a kept candidate's file and its external data."""
    if path is not None:
        remove_model_file(path)


def _metadata_bytes(model: ModelProto, key: str) -> int:
    """Serialized bytes the metadata_props entries with this key take in the model (tag, length, entry)."""
    total = 0
    for p in model.metadata_props:
        if p.key == key:
            n = p.ByteSize()
            total += 1 + n + max(1, (n.bit_length() + 6) // 7)
    return total


def _map_excluded(cand: Candidate, model: ModelProto) -> Candidate:
    """Also exclude nodes onnxruntime's optimizer derived from an excluded node (named '<node>/<Fusion>')."""
    if not cand.exclude_nodes:
        return cand
    extra = [n.name for n in model.graph.node for e in cand.exclude_nodes if n.name.startswith(e + "/")]
    return cand.with_excluded(extra) if extra else cand


def _nothing_quantized_reason(model: ModelProto, cand: Candidate, left: list[dict[str, str]]) -> str:
    hist = op_histogram(model)
    if any(op in hist for op in ("If", "Loop", "Scan")):
        return ("nothing was quantized: the compute ops sit inside If/Loop/Scan subgraphs, which "
                f"onnxruntime's {cand.mode} {cand.format if cand.mode == 'static' else ''} quantizer did not touch").replace("  ", " ")
    if left:
        first = left[0]
        return f"nothing was quantized ({len(left)} compute node(s) left in float, e.g. {first['node']}: {first['reason']})"
    return "nothing was quantized: the model has no node type onnxruntime's quantizer handles"


def built_entry(b: Built) -> dict[str, Any]:
    """The report row of a built candidate: config, size, fidelity, nodes."""
    return {
        "name": b.cand.name,
        "candidate": b.cand.to_dict(),
        "status": "ok",
        "size": b.nbytes,
        "fidelity": b.fidelity.to_dict(),
        "quantized_nodes": b.quantized_nodes,
        "float_nodes": b.float_nodes,
        "built_from": b.variant,
        "notes": b.notes,
    }
