"""QuantSession: the prepared models, evaluator and work directory one quantize() call shares; building and scoring a candidate."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from onnx import ModelProto

from onnxopt.core.model import op_histogram
from onnxopt.quantization.calibration import (
    CalibrationSource,
)
from onnxopt.quantization.engine import (
    Candidate,
    CandidateFailed,
    Prepared,
    build,
    check_runs,
    model_size,
    node_changes,
    quant_ops_in,
)
from onnxopt.quantization.evaluate import Evaluator
from onnxopt.quantization.fallback import Built

log = logging.getLogger(__name__)


class QuantSession:
    """Shared state of one quantize() call: prepared models, evaluator, work directory, notes."""

    def __init__(self, original: ModelProto, variants: list[Prepared], source: CalibrationSource | None,
                 evaluator: Evaluator, workdir: Path, notes: list[str]) -> None:
        self.original = original
        self.variants = variants
        self.source = source
        self.evaluator = evaluator
        self.workdir = workdir
        self.notes = notes
        self._hist_before = quant_ops_in(original)

    def build(self, cand: Candidate, evaluator: Evaluator | None = None, allow_unquantized: bool = False) -> Built:
        """Quantize, load, run and score one candidate, falling back to the folded model on failure.

        allow_unquantized: score it even when no compute node was quantized (the fallback's bound:
        what the quantizer adds around the nodes); otherwise that is a CandidateFailed."""
        ev = evaluator or self.evaluator
        reasons: list[str] = []
        for prep in self.variants:
            cand_p = _map_excluded(cand, prep.model)
            try:
                t0 = time.perf_counter()
                q = build(prep, cand_p, self.workdir, self.source)
                log.debug("built %s on %s in %.2f s", cand.name, prep.variant, time.perf_counter() - t0)
                check_runs(q, ev.feed)
                quantized, left = node_changes(prep.model, q, cand_p)
                if not allow_unquantized and (quant_ops_in(q) == self._hist_before or not quantized):
                    raise CandidateFailed(_nothing_quantized_reason(prep.model, cand, left))
                fid = ev.score(q)
                log.debug("%s scored in %.2f s (total)", cand.name, time.perf_counter() - t0)
            except CandidateFailed as e:
                reasons.append(f"{prep.variant} model: {e}")
                log.info("%s on the %s model failed: %s", cand.name, prep.variant, e)
                continue
            notes = [f"{r}; retried on the {prep.variant} model" for r in reasons]
            return Built(cand, q, quantized, left, fid, prep.variant, notes)
        if len({r.split(": ", 1)[-1] for r in reasons}) == 1:
            raise CandidateFailed(reasons[0].split(": ", 1)[-1])
        raise CandidateFailed("; ".join(reasons))


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
        "size": model_size(b.model),
        "fidelity": b.fidelity.to_dict(),
        "quantized_nodes": b.quantized_nodes,
        "float_nodes": b.float_nodes,
        "built_from": b.variant,
        "notes": b.notes,
    }
