"""Try each exporter in turn: export, name inputs/outputs, simplify, check parity and the dynamic batch.

Every attempt is recorded (exporter, timings, parity or error) for the conversion report; the
exports that pass become candidates for onnxopt.conversion.choose.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import ModelProto

from onnxopt.conversion.dynamic import Axes, name_dims
from onnxopt.conversion.edits import (
    check_dynamic_batch,
    name_batch_dim,
    rename_inputs,
    rename_outputs,
    simplify,
)
from onnxopt.conversion.parity import ParityError, ParityReport, check_parity, parity_message
from onnxopt.conversion.types import Candidate, ConvertOptions, ExportError, ExportRequest, Source
from onnxopt.core.errors import OnnxoptError
from onnxopt.core.errors import short_message as _short
from onnxopt.core.feeds import Feed
from onnxopt.core.model import graph_inputs

log = logging.getLogger(__name__)


def try_exporters(
    source: Source,
    exporters: Sequence[str],
    options: ConvertOptions,
    *,
    in_names: Sequence[str],
    out_names: Sequence[str],
    examples: Sequence[np.ndarray],
    reference: Sequence[Sequence[np.ndarray]],
    feeds_arrays: Sequence[Sequence[np.ndarray]],
    dynamic_axes: Axes | None = None,
) -> tuple[list[dict[str, Any]], list[Candidate]]:
    """(one record per attempt, the exports that passed) for each exporter, in order.

    reference: the source's outputs on each of feeds_arrays (inputs in call order), which the
    exported model must reproduce within options.atol/rtol. dynamic_axes: the symbolic axes
    besides the batch ({input or output name: {axis: label}}).
    """
    attempts: list[dict[str, Any]] = []
    candidates: list[Candidate] = []
    axes = dynamic_axes or {}
    request = ExportRequest(opset=options.opset, dynamic_batch=options.dynamic_batch,
                            input_names=in_names, output_names=out_names, examples=examples,
                            dynamic_axes=axes)
    for name in exporters:
        attempt: dict[str, Any] = {"exporter": name}
        attempts.append(attempt)
        t = time.perf_counter()
        try:
            model = source.export(name, request)
            model = _normalize(model, in_names, out_names, options.dynamic_batch, axes)
        except OnnxoptError as e:
            attempt.update(ok=False, error=str(e), export_s=round(time.perf_counter() - t, 3))
            log.info("exporter %s failed: %s", name, e)
            continue
        attempt["export_s"] = round(time.perf_counter() - t, 3)
        try:
            feeds = [_only_model_inputs(model, dict(zip(in_names, arrays))) for arrays in feeds_arrays]
            checked = _verify(name, model, reference, feeds, options, attempt)
        except OnnxoptError as e:
            attempt.update(ok=False, error=str(e))
            log.info("exporter %s: %s", name, e)
            continue
        if checked is None:
            continue
        model, parity = checked
        candidates.append((name, model, parity))
    return attempts, candidates


def _verify(
    name: str,
    model: ModelProto,
    reference: Sequence[Sequence[np.ndarray]],
    feeds: Sequence[Feed],
    options: ConvertOptions,
    attempt: dict[str, Any],
) -> tuple[ModelProto, ParityReport] | None:
    """Simplify (unless disabled), check parity and the dynamic batch; None (attempt['error'] set) on failure.

    The simplified model is checked first; the raw export only when simplification fails or
    loses parity, so the common case builds a single checking session.
    """
    from onnxopt.core.runtime import create_session

    def check(m: ModelProto) -> tuple[Any, ParityReport]:
        sess = create_session(m)
        return sess, check_parity(reference, sess, feeds, atol=options.atol, rtol=options.rtol)

    simple: ModelProto | None = None
    if options.simplify:
        t = time.perf_counter()
        try:
            simple = simplify(model)
        except Exception as e:  # a failed simplification must not lose a good export
            log.warning("simplify failed after %s export, keeping the unsimplified model: %s", name, _short(e))
            attempt["simplify"] = f"failed: {_short(e)}"
        attempt["simplify_s"] = round(time.perf_counter() - t, 3)
    sess = None
    if simple is not None:
        try:
            sess, parity = check(simple)
        except OnnxoptError as e:
            sess, reason = None, str(e)
        else:
            reason = f"parity max abs {parity.max_abs:.3g}"
            if parity.passed:
                attempt["simplify"] = f"{len(model.graph.node)} -> {len(simple.graph.node)} nodes"
                model = simple
            else:
                sess = None
    if sess is None:
        sess, parity = check(model)
        if simple is not None:
            attempt["simplify"] = f"rejected: {reason}"
            if parity.passed:
                log.warning("the simplified %s model fails the check (%s); keeping the unsimplified one", name, reason)
    attempt.update(ok=parity.passed, parity=parity.to_dict(), nodes=len(model.graph.node))
    if not parity.passed:
        attempt["error"] = parity_message(parity)
        log.info("exporter %s: %s", name, attempt["error"])
        return None
    if options.dynamic_batch:
        check_dynamic_batch(model, feeds[0], session=sess)
    return model, parity


def _only_model_inputs(model: ModelProto, feed: Feed) -> Feed:
    names = {s.name for s in graph_inputs(model)}
    missing = names - set(feed)
    if missing:
        raise ExportError(f"the exported model has unexpected inputs {sorted(missing)}")
    return {k: v for k, v in feed.items() if k in names}


def _normalize(
    model: ModelProto, in_names: Sequence[str], out_names: Sequence[str], dynamic: bool, axes: Axes
) -> ModelProto:
    ins = [s.name for s in graph_inputs(model)]
    if len(ins) == len(in_names):
        rename_inputs(model, in_names)
    if len(model.graph.output) == len(out_names):
        rename_outputs(model, out_names)
    if dynamic:
        name_batch_dim(model)
    if axes:
        name_dims(model, axes)
    try:
        onnx.checker.check_model(model)
    except Exception as e:
        m = re.search(r"No Op registered for (\w+) with domain_version of (\d+)", str(e))
        if m:
            raise ExportError(
                f"the exporter left op {m.group(1)} with no ONNX equivalent at opset {m.group(2)}: "
                "replace it in the model, or try another --opset"
            ) from e
        raise ExportError(f"the exported model fails the ONNX checker: {_short(e)}") from e
    return model


def export_failure(attempts: list[dict[str, Any]]) -> OnnxoptError:
    """The error to raise when no exporter passed: ParityError when all failed on parity."""
    if len(attempts) == 1:
        a = attempts[0]
        msg = f"{a['exporter']} export: {a.get('error', 'failed')}"
    else:
        msg = "; ".join(f"{a['exporter']}: {a.get('error', 'failed')}" for a in attempts)
        msg = f"no exporter produced a matching model ({msg})"
    parity_failed = all("parity check failed" in str(a.get("error", "")) for a in attempts)
    return ParityError(msg) if parity_failed else ExportError(msg)
