"""Graph edits applied after export: input/output renames, a named batch dim, onnx-simplifier-style cleanup, metadata, and the dynamic-batch check."""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import ModelProto

from onnxopt.core.errors import InvalidInputError, OnnxoptError
from onnxopt.core.errors import short_message as _short
from onnxopt.core.feeds import Feed
from onnxopt.core.model import graph_inputs, graph_outputs

log = logging.getLogger(__name__)


def rename_outputs(model: ModelProto, names: Sequence[str]) -> ModelProto:
    """Rename the graph outputs to names (every use in the graph follows)."""
    return _rename_all(model, "output", [o.name for o in model.graph.output], names)


def rename_inputs(model: ModelProto, names: Sequence[str]) -> ModelProto:
    """Rename the real graph inputs to names (every use in the graph follows)."""
    return _rename_all(model, "input", [s.name for s in graph_inputs(model)], names)


def _rename_all(model: ModelProto, kind: str, current: Sequence[str], names: Sequence[str]) -> ModelProto:
    """Rename the current inputs or outputs (kind) to names, one for one."""
    if len(names) != len(current):
        raise InvalidInputError(
            f"--{kind}-names: the model has {len(current)} {kind}s ({', '.join(current)}), got {len(names)} names"
        )
    mapping = {old: new for old, new in zip(current, names) if old != new}
    if mapping:
        _rename(model, mapping)
    return model


def _rename(model: ModelProto, mapping: Mapping[str, str]) -> None:
    existing = {o for n in model.graph.node for o in n.output} | {i.name for i in model.graph.input}
    clash = [new for old, new in mapping.items() if new in existing and new not in mapping]
    if clash:
        raise InvalidInputError(f"name {clash[0]!r} is already used inside the graph; choose another name")

    def fix(g: onnx.GraphProto) -> None:
        for vi in list(g.input) + list(g.output) + list(g.value_info):
            if vi.name in mapping:
                vi.name = mapping[vi.name]
        for t in g.initializer:
            if t.name in mapping:
                t.name = mapping[t.name]
        for n in g.node:
            for i, x in enumerate(n.input):
                if x in mapping:
                    n.input[i] = mapping[x]
            for i, x in enumerate(n.output):
                if x in mapping:
                    n.output[i] = mapping[x]
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    fix(a.g)
                elif a.type == onnx.AttributeProto.GRAPHS:
                    for sg in a.graphs:
                        fix(sg)

    fix(model.graph)


def name_batch_dim(model: ModelProto, name: str = "batch") -> ModelProto:
    """Give the symbolic first dim of every input and output one name (exporters invent unk__N)."""
    for vi in list(model.graph.input) + list(model.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if len(dims) and not dims[0].HasField("dim_value"):
            dims[0].dim_param = name
    return model


def simplify(model: ModelProto) -> ModelProto:
    """Constant folding and redundant-node removal: onnxruntime's offline basic-level optimization."""
    import onnxruntime as ort

    if model.ByteSize() > 2**31 - 2**24:
        log.info("model above 2 GB: simplify skipped")
        return model
    tmp = Path(tempfile.mkdtemp(prefix="onnxopt-simplify-"))
    try:
        src = tmp / "in.onnx"
        dst = tmp / "out.onnx"
        src.write_bytes(model.SerializeToString())
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        so.optimized_model_filepath = str(dst)
        so.log_severity_level = 3
        ort.InferenceSession(str(src), sess_options=so, providers=["CPUExecutionProvider"])
        out = onnx.load(str(dst))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    # onnxruntime drops the producer fields and metadata; keep the exporter's.
    out.producer_name = model.producer_name
    out.producer_version = model.producer_version
    del out.metadata_props[:]
    out.metadata_props.extend(model.metadata_props)
    return out


def set_metadata(model: ModelProto, props: Mapping[str, str]) -> ModelProto:
    """Set (replace) metadata_props entries."""
    keep = [p for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for k, v in props.items():
        entry = model.metadata_props.add()
        entry.key = k
        entry.value = str(v)
    return model


def check_dynamic_batch(
    model: ModelProto, feed: Feed, batches: Sequence[int] = (1, 5), *, session: Any = None
) -> None:
    """Run the model at several batch sizes; raise OnnxoptError when it cannot."""
    from onnxopt.core.runtime import create_session, run

    sess = session if session is not None else create_session(model)
    for b in batches:
        f = {k: np.concatenate([v] * (b // max(len(v), 1) + 1))[:b] for k, v in feed.items()}
        try:
            outs = run(sess, f, what="the exported model")
        except Exception as e:
            raise OnnxoptError(
                f"the exported model fails at batch {b}: {_short(e)}; export with --static-batch "
                "or make the model batch-independent"
            ) from e
        for o, spec in zip(outs, graph_outputs(model)):
            if spec.shape and o.ndim and o.shape[0] != b:
                raise OnnxoptError(
                    f"output {spec.name!r} has batch {o.shape[0]} for an input batch of {b}; "
                    "the model mixes samples across the batch: use --static-batch"
                )
