"""Teacher logits (and hint features) from an .onnx teacher, computed once in onnxruntime."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import ModelProto

from onnxopt.core.errors import InvalidInputError, InvalidModelError
from onnxopt.core.model import copy_model, graph_inputs, load_model
from onnxopt.core.runtime import create_session, run

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TeacherOutputs:
    """Cached teacher outputs for a data set: logits [N, classes] and optional hint features."""

    logits: np.ndarray
    features: np.ndarray | None
    softmax_handling: str  # "none" | "pre-softmax logits" | "log of probabilities"


def _softmax_node(model: ModelProto) -> onnx.NodeProto | None:
    """The Softmax node producing the first graph output, if any."""
    out = model.graph.output[0].name
    for node in model.graph.node:
        if out in node.output:
            return node if node.op_type == "Softmax" else None
    return None


def logits_model(model: ModelProto, hint: str | None = None) -> tuple[ModelProto, str, str]:
    """A copy of model whose outputs are the logits (and the hint tensor when named).

    Returns (model, logits output name, softmax handling). A final Softmax node is bypassed
    so the teacher's pre-softmax logits are used exactly.
    """
    m = copy_model(model)
    handling = "none"
    logits_name = m.graph.output[0].name
    sm = _softmax_node(m)
    if sm is not None:
        logits_name = sm.input[0]
        handling = "pre-softmax logits"
        log.info("teacher ends in Softmax: using its input %r as logits", logits_name)
    outputs = [logits_name] + ([hint] if hint else [])
    produced = {o for n in m.graph.node for o in n.output} | {i.name for i in m.graph.input}
    for name in outputs:
        if name not in produced:
            known = sorted(o for n in m.graph.node for o in n.output)
            raise InvalidInputError(
                f"teacher has no tensor {name!r}; choose a hint tensor among: {', '.join(known[:30])}"
            )
    del m.graph.output[:]
    for name in outputs:
        m.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    return m, logits_name, handling


def teacher_outputs(
    teacher: ModelProto | str | os.PathLike[str],
    x: np.ndarray,
    *,
    hint: str | None = None,
    batch_size: int = 256,
) -> TeacherOutputs:
    """Run the ONNX teacher once over x (batched) and return its logits (and hint features)."""
    proto = teacher if isinstance(teacher, ModelProto) else load_model(teacher)
    specs = graph_inputs(proto)
    if len(specs) != 1:
        raise InvalidInputError(
            f"distillation needs a single-input teacher; this one has {len(specs)} inputs"
        )
    spec = specs[0]
    _check_shape(spec.shape, x.shape, "teacher")
    m, _, handling = logits_model(proto, hint)
    from onnxopt.core.runtime import needs_custom_ops

    # Registering onnxruntime-extensions costs seconds: only when the teacher needs it.
    sess = create_session(m, custom_ops=needs_custom_ops(m))
    x = x.astype(spec.numpy_dtype, copy=False)
    chunks: list[list[np.ndarray]] = [[], []]
    try:
        for start in range(0, len(x), batch_size):
            outs = run(sess, {spec.name: x[start : start + batch_size]}, what="the teacher")
            for i, o in enumerate(outs):
                chunks[i].append(np.asarray(o))
    except Exception as e:
        msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise InvalidInputError(f"data of shape {tuple(x.shape)} does not fit the teacher: {msg}") from e
    logits, handling = as_logits(np.concatenate(chunks[0]), handling)
    features = np.concatenate(chunks[1]).astype(np.float32) if hint else None
    return TeacherOutputs(logits, features, handling)


def as_logits(out: np.ndarray, handling: str) -> tuple[np.ndarray, str]:
    """Teacher outputs as float32 [batch, classes] logits: probabilities become their log."""
    if out.ndim != 2:
        raise InvalidModelError(f"teacher output must be [batch, classes] logits; got shape {out.shape}")
    out = out.astype(np.float32, copy=False)
    if handling == "none" and looks_like_probabilities(out):
        log.info("teacher outputs probabilities: using their log as logits")
        return np.log(np.clip(out, 1e-12, None)).astype(np.float32), "log of probabilities"
    return out, handling


def looks_like_probabilities(out: np.ndarray) -> bool:
    """True when every row is non-negative and sums to 1 (a softmax output)."""
    if out.ndim != 2 or out.shape[1] < 2 or out.size == 0:
        return False
    return bool(np.all(out >= 0) and np.allclose(out.sum(axis=1), 1.0, atol=1e-3))


def _check_shape(want: Sequence[int | str | None], got: tuple[int, ...], who: str) -> None:
    if len(want) != len(got) or any(
        isinstance(w, int) and w > 0 and w != g for w, g in zip(want[1:], got[1:])
    ):
        shown = "[" + ", ".join("?" if not isinstance(w, int) else str(w) for w in want) + "]"
        raise InvalidInputError(
            f"data of shape {tuple(got)} does not fit the {who}, which expects {shown}"
        )
