"""Graph optimization passes: onnxruntime offline optimization and constant folding.

`optimize_graph` runs onnxruntime's graph optimizer once, offline, and saves what it produced
(SessionOptions.optimized_model_filepath). Level "basic" (the default) applies only
semantics-preserving rewrites that every execution provider understands: constant folding,
removal of redundant nodes (Identity, Dropout, ...), Conv+BatchNorm/Mul/Add fusion. The
result stays a standard ONNX model that any runtime can load. "extended" adds fusions into
onnxruntime's own com.microsoft ops (FusedConv, FusedGemm, Attention...): onnxruntime-only.
"all" adds layout transforms into com.microsoft.nchwc ops tuned to the CPU it ran on: the
file is only valid on that CPU type. Sessions apply these levels at load time anyway, so
"basic" offline loses no speed and keeps the file portable.

`fold_constants` evaluates, once, every node whose inputs are all constants (initializers or
Constant outputs) and replaces those nodes by initializers holding the computed values:
y = f(c1, ..., cn) with constant ci becomes the initializer y. Evaluation runs in
onnxruntime with its optimizer off, so the values are exactly what the node computes.

`constants_to_initializers` moves the values of the main graph's Constant nodes into
initializers of the same names (paddle2onnx and some TensorFlow exports hold every weight in a
Constant node, and no initializer): the graph computes exactly the same, and the passes that
edit weights (magnitude and channel pruning, quantization) then see them.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import onnx
from onnx import ModelProto, helper, numpy_helper

from onnxopt.core.errors import InvalidInputError, InvalidModelError, short_message
from onnxopt.core.external import as_file, data_file, needs_file, same_graph
from onnxopt.core.model import copy_model, op_histogram, prune_opset_imports, subgraph_inputs
from onnxopt.passes.base import PassContext, PassResult, register_pass

log = logging.getLogger(__name__)

GRAPH_LEVELS = ("basic", "extended", "all")
_NON_DETERMINISTIC = {
    "RandomNormal",
    "RandomUniform",
    "RandomNormalLike",
    "RandomUniformLike",
    "Multinomial",
    "Bernoulli",
}


def _copy_model_info(src: ModelProto, dst: ModelProto) -> None:
    """Keep the input model's identity (producer, metadata, doc) on an onnxruntime output."""
    dst.producer_name = src.producer_name
    dst.producer_version = src.producer_version
    dst.domain = src.domain
    dst.model_version = src.model_version
    dst.doc_string = src.doc_string
    dst.graph.name = src.graph.name
    del dst.metadata_props[:]
    dst.metadata_props.extend(src.metadata_props)


def ort_optimize(model: ModelProto, level: str = "basic", *, path: Path | None = None) -> ModelProto:
    """The model as onnxruntime's offline optimizer writes it at a level (basic|extended|all).

    path: `model` is the graph of this file (its weights in external data there): onnxruntime
    reads the file itself (optimize_file), the weights never pass through a proto on the way in."""
    import onnxruntime as ort

    from onnxopt.core.runtime import SessionConfig, needs_custom_ops, session_options

    if level not in GRAPH_LEVELS:
        raise InvalidInputError(f"unknown graph level {level!r}; choose one of {', '.join(GRAPH_LEVELS)}")
    with tempfile.TemporaryDirectory(prefix="onnxopt-graph-") as tmp:
        out = Path(tmp) / "optimized.onnx"
        if path is not None or needs_file(model):  # weights stay in external data; onnxruntime reads a file
            with contextlib.ExitStack() as stack:
                src = path if path is not None else stack.enter_context(as_file(model))
                optimize_file(src, out, model, level)
            return onnx.load(str(out))
        so = session_options(SessionConfig(opt_level=level, intra_op_threads=1, custom_ops=needs_custom_ops(model),
                                           prepack=False))  # the session only writes the optimized model
        so.optimized_model_filepath = str(out)
        try:
            ort.InferenceSession(model.SerializeToString(), sess_options=so, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise InvalidModelError(f"onnxruntime cannot load the model to optimize it: {short_message(e)}") from e
        result = onnx.load(str(out))
    prune_opset_imports(result)
    _copy_model_info(model, result)
    return result


def optimize_file(src: Path, out: Path, graph: ModelProto, level: str = "basic") -> None:
    """ort_optimize from file to file: onnxruntime reads src (graph: its graph) and writes the model
    optimized at `level` to out, its weights in `<out name>.data` (core.external.data_file); unused
    opset imports dropped and the input's identity (producer, metadata) kept, as ort_optimize does.
    No proto holds the weights. Raises InvalidModelError when onnxruntime cannot load the model."""
    import onnxruntime as ort

    from onnxopt.core.runtime import SessionConfig, needs_custom_ops, session_options

    so = session_options(SessionConfig(opt_level=level, intra_op_threads=1, custom_ops=needs_custom_ops(graph),
                                       prepack=False))  # the session only writes the optimized model
    so.optimized_model_filepath = str(out)
    so.add_session_config_entry("session.optimized_model_external_initializers_file_name", data_file(out).name)
    try:
        ort.InferenceSession(str(src), sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise InvalidModelError(f"onnxruntime cannot load the model to optimize it: {short_message(e)}") from e
    result = onnx.load(str(out), load_external_data=False)
    prune_opset_imports(result)
    _copy_model_info(graph, result)
    out.write_bytes(result.SerializeToString())  # the graph only: the weights stay in the data file


@register_pass
@dataclass(frozen=True)
class OptimizeGraphPass:
    """onnxruntime offline graph optimization (default level basic keeps the model portable)."""

    name: ClassVar[str] = "optimize_graph"
    # A big stage is optimized from its file (Pipeline.run hands over its graph and context.model_path).
    reads_file: ClassVar[bool] = True
    level: str = "basic"

    def __post_init__(self) -> None:
        if self.level not in GRAPH_LEVELS:
            raise InvalidInputError(
                f"level must be one of {', '.join(GRAPH_LEVELS)}, got {self.level!r} "
                "(basic: portable; extended: onnxruntime-only ops; all: tied to this CPU)"
            )

    def __call__(self, model: ModelProto, context: PassContext) -> PassResult:
        """Run onnxruntime's optimizer offline and return what it wrote."""
        if self.level != "basic":
            log.warning(
                "optimize_graph level %r writes onnxruntime-specific ops%s",
                self.level,
                " tuned to this CPU (nchwc layout): deploy only on the same CPU type" if self.level == "all" else "",
            )
        path = context.model_path
        new = ort_optimize(model, self.level, path=path)
        before, after = op_histogram(model), op_histogram(new)
        modified = not same_graph(new.graph, model.graph, b_dir=path.parent if path is not None else None)
        return PassResult(
            new,
            modified,
            {
                "level": self.level,
                "nodes_before": sum(before.values()),
                "nodes_after": sum(after.values()),
                "ops_removed": {k: v - after.get(k, 0) for k, v in before.items() if v > after.get(k, 0)},
                "ops_added": {k: v - before.get(k, 0) for k, v in after.items() if v > before.get(k, 0)},
            },
        )


def _constant_value(node: onnx.NodeProto) -> np.ndarray | None:
    """The value a Constant node holds (None for strings and sparse values, which stay nodes)."""
    for a in node.attribute:
        if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
            arr = numpy_helper.to_array(a.t)
            return None if arr.dtype.kind in "OSU" else arr
        if a.name == "value_float":
            return np.array(a.f, dtype=np.float32)
        if a.name == "value_floats":
            return np.array(list(a.floats), dtype=np.float32)
        if a.name == "value_int":
            return np.array(a.i, dtype=np.int64)
        if a.name == "value_ints":
            return np.array(list(a.ints), dtype=np.int64)
    return None


def constants_to_initializers(model: ModelProto) -> tuple[ModelProto, int]:
    """(a copy with the main graph's Constant nodes turned into initializers, how many were);
    the model itself (not a copy) when it has none. Constants that are graph outputs, strings or
    sparse stay nodes; subgraphs are left as they are."""
    g = model.graph
    outputs = {o.name for o in g.output}
    values: dict[int, np.ndarray] = {}
    for i, n in enumerate(g.node):
        if n.op_type == "Constant" and n.domain in ("", "ai.onnx") and n.output[0] not in outputs:
            v = _constant_value(n)
            if v is not None:
                values[i] = v
    if not values:
        return model, 0
    new = copy_model(model)
    ng = new.graph
    inits = [numpy_helper.from_array(values[i], ng.node[i].output[0]) for i in sorted(values)]
    kept = [n for i, n in enumerate(ng.node) if i not in values]
    del ng.node[:]
    ng.node.extend(kept)
    ng.initializer.extend(inits)
    if new.ir_version < 4:  # initializers had to be graph inputs too before IR 4
        ng.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in inits)
    return new, len(inits)


@register_pass
@dataclass(frozen=True)
class ConstantsToInitializersPass:
    """Turn the main graph's Constant nodes into initializers (same values, same names)."""

    name: ClassVar[str] = "constants_to_initializers"

    def __call__(self, model: ModelProto, context: PassContext) -> PassResult:
        """Move Constant node values into initializers."""
        new, count = constants_to_initializers(model)
        report: dict[str, object] = {"constants_moved": count}
        if not count:
            report["reason"] = "no Constant node holds a tensor"
        return PassResult(new, bool(count), report)


@register_pass
@dataclass(frozen=True)
class FoldConstantsPass:
    """Replace nodes whose inputs are all constant by initializers holding their values."""

    name: ClassVar[str] = "fold_constants"
    max_bytes: int = 64 * 2**20

    def __post_init__(self) -> None:
        if self.max_bytes <= 0:
            raise InvalidInputError(f"max_bytes must be > 0, got {self.max_bytes}")

    def __call__(self, model: ModelProto, context: PassContext) -> PassResult:
        """Evaluate the constant part of the graph once in onnxruntime and store the results."""
        return fold_constants(model, self.max_bytes)


def fold_constants(model: ModelProto, max_bytes: int = 64 * 2**20) -> PassResult:
    """Constant folding (see the module docstring); a model with nothing to fold is returned as is."""
    g = model.graph
    input_names = {i.name for i in g.input}
    init = {t.name: t for t in g.initializer if t.name not in input_names}
    const = set(init)
    graph_outputs = {o.name for o in g.output}
    foldable: list[int] = []
    for idx, n in enumerate(g.node):
        if (
            n.domain not in ("", "ai.onnx")
            or n.op_type in _NON_DETERMINISTIC
            or any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in n.attribute)
            or any(o in graph_outputs for o in n.output)
            or not all((i == "" or i in const) for i in n.input)
        ):
            continue
        foldable.append(idx)
        const.update(o for o in n.output if o)
    if not foldable:
        return PassResult(model, False, {"folded_nodes": 0, "reason": "no node has only constant inputs"})

    folded_outputs = [o for i in foldable for o in g.node[i].output if o]
    values = _evaluate(model, [g.node[i] for i in foldable], init, folded_outputs)
    too_big = {
        i for i in foldable if any(values[o].nbytes > max_bytes for o in g.node[i].output if o)
    }
    folded = [i for i in foldable if i not in too_big]
    if not folded:
        return PassResult(model, False, {"folded_nodes": 0, "reason": f"results above max_bytes={max_bytes}"})
    folded_set = set(folded)
    consumed: set[str] = set(graph_outputs)
    for idx, n in enumerate(g.node):
        if idx not in folded_set:
            consumed.update(n.input)
            consumed.update(subgraph_inputs([n]))
    new = copy_model(model)
    ng = new.graph
    kept_nodes = [n for idx, n in enumerate(ng.node) if idx not in folded_set]
    del ng.node[:]
    ng.node.extend(kept_nodes)
    new_inits = [
        numpy_helper.from_array(values[o], o)
        for i in folded
        for o in g.node[i].output
        if o and o in consumed
    ]
    kept_inits = [t for t in ng.initializer if t.name in consumed or t.name in input_names]
    del ng.initializer[:]
    ng.initializer.extend(kept_inits + new_inits)
    # value_info entries for names that became initializers are harmless; drop them for tidiness
    vi = [v for v in ng.value_info if v.name not in {t.name for t in new_inits}]
    del ng.value_info[:]
    ng.value_info.extend(vi)
    ops: dict[str, int] = {}
    for i in folded:
        ops[g.node[i].op_type] = ops.get(g.node[i].op_type, 0) + 1
    return PassResult(
        new,
        True,
        {"folded_nodes": len(folded), "folded_ops": ops, "skipped_too_big": len(too_big)},
    )


def _evaluate(
    model: ModelProto,
    nodes: list[onnx.NodeProto],
    init: dict[str, onnx.TensorProto],
    outputs: list[str],
) -> dict[str, np.ndarray]:
    """Run the constant nodes as a standalone model in onnxruntime (optimizer off)."""
    from onnxopt.core.runtime import create_session, run

    needed = {i for n in nodes for i in n.input if i}
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    types = {v.name: v.type for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    outs = []
    for o in outputs:
        vi = onnx.ValueInfoProto()
        vi.name = o
        if o in types:
            vi.type.CopyFrom(types[o])
        outs.append(vi)
    graph = helper.make_graph(
        list(nodes), "constants", [], outs, [init[n] for n in sorted(needed) if n in init]
    )
    sub = helper.make_model(graph, opset_imports=list(model.opset_import))
    sub.ir_version = model.ir_version
    sess = create_session(sub, opt_level="disable", intra_op_threads=1, custom_ops=False)  # default-domain ops only
    results = run(sess, {}, outputs, what="the constant subgraph")
    return {name: np.asarray(v) for name, v in zip(outputs, results)}
