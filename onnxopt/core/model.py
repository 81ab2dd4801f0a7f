"""Load, validate, describe and atomically save ONNX models."""

from __future__ import annotations

import collections
import heapq
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import ModelProto, TensorProto

from onnxopt.core.errors import InvalidModelError, OnnxoptError
from onnxopt.core.errors import short_message as _short

log = logging.getLogger(__name__)

# Protobuf refuses to serialize a message above 2 GiB; stay clear of it.
_PROTO_LIMIT = 2**31 - 2**20
_ONNX_MAGIC_HINT = "(expected a binary ONNX ModelProto)"


@dataclass(frozen=True)
class TensorSpec:
    """Name, element type and shape (ints, symbolic names or None) of a graph input or output."""

    name: str
    dtype: str
    shape: tuple[int | str | None, ...]

    @property
    def numpy_dtype(self) -> np.dtype:
        """The numpy dtype of this tensor."""
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(_dtype_enum(self.dtype)))


@dataclass(frozen=True)
class ModelDescription:
    """What a user wants to know about a model before optimizing it."""

    path: str
    file_size: int
    ir_version: int
    producer: str
    opsets: dict[str, int]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    op_histogram: dict[str, int]
    node_count: int
    parameter_count: int
    initializer_bytes: int
    external_data: bool
    metadata: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict."""
        d = asdict(self)
        d["inputs"] = [asdict(t) for t in self.inputs]
        d["outputs"] = [asdict(t) for t in self.outputs]
        return d


def _dtype_enum(name: str) -> int:
    return int(getattr(TensorProto, name.upper()))


def _check_path(path: Path) -> None:
    if not path.exists():
        raise InvalidModelError(f"{path}: no such file")
    if path.is_dir():
        raise InvalidModelError(f"{path}: is a directory, not an .onnx file")
    if path.stat().st_size == 0:
        raise InvalidModelError(f"{path}: file is empty")


def load_model(
    path: str | os.PathLike[str], *, load_external_data: bool = True, name_nodes: bool = True
) -> ModelProto:
    """Load a model from disk (with its external data unless asked not to) or raise InvalidModelError.

    name_nodes: give unnamed nodes stable unique names (onnxopt.core.names), as every command
    that works on nodes needs; names already present are kept.
    """
    p = Path(path)
    _check_path(p)
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as e:  # protobuf raises DecodeError and friends
        raise InvalidModelError(
            f"{p}: not a readable ONNX model {_ONNX_MAGIC_HINT}: {_short(e)}"
        ) from e
    if not model.graph.node and not model.graph.output and not model.opset_import:
        # protobuf parses many arbitrary byte strings as an empty message
        raise InvalidModelError(f"{p}: not an ONNX model (no graph, outputs or opset imports)")
    if not load_external_data and _uses_external_data(model):
        from onnxopt.core.external import external_info

        for t in model.graph.initializer:
            where = p.parent / external_info(t).get("location", "")
            if t.data_location == TensorProto.EXTERNAL and not where.is_file():
                raise InvalidModelError(
                    f"{p}: external data file missing: {where}; keep the data file beside the model"
                )
    if load_external_data and _uses_external_data(model):
        try:
            onnx.load_external_data_for_model(model, str(p.parent))
        except (FileNotFoundError, OSError) as e:
            raise InvalidModelError(
                f"{p}: external data file missing: {_short(e)}; keep the data file beside the model"
            ) from e
        except Exception as e:
            raise InvalidModelError(f"{p}: cannot read external data: {_short(e)}") from e
    if name_nodes:
        from onnxopt.core.names import name_nodes as _name

        _name(model)
    return model


def _uses_external_data(model: ModelProto) -> bool:
    return any(
        t.data_location == TensorProto.EXTERNAL for t in model.graph.initializer
    )


def validate_model(model: ModelProto | str | os.PathLike[str], *, check_runtime: bool = True) -> None:
    """Run onnx.checker and (optionally) create an onnxruntime session; raise InvalidModelError."""
    from onnxopt.core.external import as_file, needs_file

    name = str(model) if not isinstance(model, ModelProto) else (model.graph.name or "model")
    if not isinstance(model, ModelProto):
        load_model(model, load_external_data=False, name_nodes=False)  # a readable model, data files present
    try:
        if not isinstance(model, ModelProto):
            onnx.checker.check_model(str(model))  # from the file: the weights are not loaded
        elif needs_file(model):  # big: checked from a file rather than serialized whole in memory
            with as_file(model) as path:
                onnx.checker.check_model(str(path))
        else:
            onnx.checker.check_model(model)
    except Exception as e:
        raise InvalidModelError(f"{name}: fails the ONNX checker: {_short(e)}") from e
    if check_runtime:
        from onnxopt.core.runtime import create_session

        try:
            create_session(model if isinstance(model, ModelProto) else Path(model))
        except OnnxoptError as e:
            raise InvalidModelError(f"{name}: {e}") from e


def tensor_specs(values: Any) -> tuple[TensorSpec, ...]:
    """TensorSpecs for a repeated ValueInfoProto field (graph inputs or outputs)."""
    specs = []
    for vi in values:
        tt = vi.type.tensor_type
        if tt.elem_type not in TensorProto.DataType.values():
            raise InvalidModelError(f"{vi.name!r}: unknown element type {tt.elem_type} (a corrupt or too new model)")
        dtype = TensorProto.DataType.Name(tt.elem_type).lower() if tt.elem_type else "undefined"
        dims: list[int | str | None] = []
        if tt.HasField("shape"):
            for d in tt.shape.dim:
                if d.HasField("dim_value"):
                    dims.append(int(d.dim_value))
                elif d.HasField("dim_param"):
                    dims.append(d.dim_param)
                else:
                    dims.append(None)
        specs.append(TensorSpec(vi.name, dtype, tuple(dims)))
    return tuple(specs)


def graph_inputs(model: ModelProto) -> tuple[TensorSpec, ...]:
    """The real inputs of a model (graph inputs that are not initializers)."""
    inits = {t.name for t in model.graph.initializer}
    return tensor_specs([i for i in model.graph.input if i.name not in inits])


def graph_outputs(model: ModelProto) -> tuple[TensorSpec, ...]:
    """The outputs of a model."""
    return tensor_specs(model.graph.output)


def batch_axes(model: ModelProto) -> dict[str, int | None]:
    """The batch axis of each real input, or None for an input fed as it is.

    Scalars (a sample rate), and tensors without the batch dimension (a recurrent `state` of
    shape [2, 1, 128] beside an input [batch, 512]), are not split into samples, concatenated
    or given a batch. When some input has a symbolic leading dim, those inputs are batched on
    axis 0, and other inputs on the axis that carries the same symbol (a state [2, batch, 64]
    on axis 1); a fixed leading dim is then not a batch. When every leading dim is fixed, the
    batch is that one size (1 when the inputs disagree and one of them leads with 1).
    """
    specs = graph_inputs(model)
    symbols = {s.shape[0] for s in specs if s.shape and isinstance(s.shape[0], str)}
    dynamic = any(s.shape and not isinstance(s.shape[0], int) for s in specs)
    axes: dict[str, int | None] = {}
    if dynamic:
        for s in specs:
            if not s.shape:
                axes[s.name] = None
            elif not isinstance(s.shape[0], int):
                axes[s.name] = 0
            else:
                axes[s.name] = next((i for i, d in enumerate(s.shape) if isinstance(d, str) and d in symbols), None)
        return axes
    leads = {d for s in specs if s.shape and isinstance(d := s.shape[0], int)}  # all of them, here
    fixed = leads.pop() if len(leads) == 1 else (1 if 1 in leads else None)
    for s in specs:
        axes[s.name] = 0 if s.shape and fixed is not None and s.shape[0] == fixed else None
    return axes


def per_sample_inputs(model: ModelProto) -> list[str]:
    """Inputs fed whole (no batch axis: batch_axes) that still have a symbolic dimension, e.g. a
    recurrent state [2, ?, 128] whose ? must match the batch of the other inputs: a feed that
    holds it once, for one sample, can only be run sample by sample."""
    axes = batch_axes(model)
    return [s.name for s in graph_inputs(model)
            if axes[s.name] is None and any(not (isinstance(d, int) and d > 0) for d in s.shape)]


def run_batch(model: ModelProto) -> int | None:
    """The batch every run of the model must use: its fixed batch, 1 when an input fed whole has
    a symbolic dim (per_sample_inputs), else None (any batch)."""
    return fixed_batch(model) or (1 if per_sample_inputs(model) else None)


def fixed_batch(model: ModelProto) -> int | None:
    """The batch size the model's batched inputs (batch_axes) are fixed at, or None when it is
    dynamic, when they disagree, or when no input has a batch."""
    axes = batch_axes(model)
    sizes: set[int] = set()
    for s in graph_inputs(model):
        axis = axes[s.name]
        if axis is None:
            continue
        d = s.shape[axis]
        if not isinstance(d, int) or d <= 0:
            return None
        sizes.add(d)
    return sizes.pop() if len(sizes) == 1 else None


def node_subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The graphs a node holds in its attributes (If branches, Loop/Scan bodies)."""
    graphs: list[onnx.GraphProto] = []
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            graphs.append(attr.g)
        elif attr.type == onnx.AttributeProto.GRAPHS:
            graphs.extend(attr.graphs)
    return graphs


def all_graphs(graph: onnx.GraphProto) -> list[onnx.GraphProto]:
    """graph and every subgraph inside it (If/Loop/Scan bodies), depth first."""
    graphs = [graph]
    for node in graph.node:
        for sub in node_subgraphs(node):
            graphs.extend(all_graphs(sub))
    return graphs


def all_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node of graph and of its subgraphs."""
    for g in all_graphs(graph):
        yield from g.node


def subgraph_inputs(nodes: Iterable[onnx.NodeProto]) -> set[str]:
    """Tensor names read inside the subgraphs of nodes, at any depth (outer-scope values included)."""
    return {
        name
        for node in nodes
        for sub in node_subgraphs(node)
        for inner in all_nodes(sub)
        for name in inner.input
    }


def sort_nodes(model: ModelProto) -> ModelProto:
    """Order the main graph's nodes topologically, in place, counting the names their subgraphs
    read as inputs too (onnxruntime's quantizer sorts without them, which leaves an If before the
    producer of a tensor its branches use: the ONNX checker rejects that); returns model.

    Kahn's algorithm, ready nodes taken in their original order, so a sorted graph is unchanged.
    """
    g = model.graph
    nodes = list(g.node)
    produced_by: dict[str, int] = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    waits_on: list[set[int]] = []
    for i, n in enumerate(nodes):
        names = set(n.input) | subgraph_inputs([n])
        waits_on.append({produced_by[x] for x in names if x in produced_by and produced_by[x] != i})
    users: dict[int, list[int]] = collections.defaultdict(list)
    for i, deps in enumerate(waits_on):
        for d in deps:
            users[d].append(i)
    pending = [len(d) for d in waits_on]
    ready = [i for i, k in enumerate(pending) if k == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for u in users[i]:
            pending[u] -= 1
            if pending[u] == 0:
                heapq.heappush(ready, u)
    if len(order) < len(nodes):  # a cycle: leave the rest where it was (the checker will say)
        order += [i for i in range(len(nodes)) if i not in set(order)]
    if order != list(range(len(nodes))):
        del g.node[:]
        g.node.extend(nodes[i] for i in order)
    return model


def subgraph_op_counts(graph: onnx.GraphProto, op_types: Iterable[str], where: str = "") -> list[tuple[str, dict[str, int]]]:
    """(where, {op type: count}) for every subgraph (at any depth) holding some of op_types,
    e.g. ("If 'rate_switch' then_branch", {"MatMul": 3}); nested ones read "Loop 'l' body > If ...".
    """
    wanted = set(op_types)
    out: list[tuple[str, dict[str, int]]] = []
    for node in graph.node:
        for attr in node.attribute:
            subs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else (
                list(attr.graphs) if attr.type == onnx.AttributeProto.GRAPHS else [])
            for k, sub in enumerate(subs):
                label = f"{node.op_type} {node.name or node.output[0]!r} {attr.name}" + (f"[{k}]" if len(subs) > 1 else "")
                label = f"{where} > {label}" if where else label
                counts = collections.Counter(n.op_type for n in sub.node if n.op_type in wanted)
                if counts:
                    out.append((label, dict(sorted(counts.items()))))
                out.extend(subgraph_op_counts(sub, wanted, label))
    return out


def subgraph_notes(model: ModelProto, op_types: Iterable[str], outcome: str) -> list[str]:
    """One line per subgraph holding op_types, e.g. "3 MatMul inside If 'sw' then_branch left alone"."""
    return [
        ", ".join(f"{n} {op}" for op, n in counts.items()) + f" inside {where} {outcome}"
        for where, counts in subgraph_op_counts(model.graph, op_types)
    ]


def prune_opset_imports(model: ModelProto) -> ModelProto:
    """Drop the opset imports of domains no node or function uses, in place; returns model.

    onnxruntime's optimizer and quantizer write every domain they have registered (a dozen,
    varying by process); the default domain is always kept.
    """
    used = {n.domain or "" for n in all_nodes(model.graph)} | {f.domain or "" for f in model.functions}
    keep = [o for o in model.opset_import if (o.domain or "") in used or o.domain in ("", "ai.onnx")]
    if len(keep) != len(model.opset_import):
        del model.opset_import[:]
        model.opset_import.extend(keep)
    return model


def initializer_stats(model: ModelProto) -> tuple[int, int]:
    """(parameter count, bytes) over all initializers, subgraphs included."""
    count = 0
    nbytes = 0
    for g in all_graphs(model.graph):
        for t in g.initializer:
            n = int(np.prod(t.dims)) if len(t.dims) else 1
            count += n
            itemsize = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
            nbytes += n * itemsize
        for st in g.sparse_initializer:
            n = int(np.prod(st.dims)) if len(st.dims) else 1
            count += n
            nbytes += st.values.ByteSize() + st.indices.ByteSize()
    return count, nbytes


def op_histogram(model: ModelProto) -> dict[str, int]:
    """Count of each op type (domain-qualified when not the default domain), subgraphs included."""
    counter: collections.Counter[str] = collections.Counter()
    for g in all_graphs(model.graph):
        for n in g.node:
            key = str(n.op_type) if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}"
            counter[key] += 1
    return dict(sorted(counter.items(), key=lambda kv: (-kv[1], kv[0])))


# Ops that make a model "sequence-like": dynamic quantization suits them best.
SEQUENCE_OPS = ("LSTM", "GRU", "RNN", "Attention", "MultiHeadAttention", "com.microsoft.Attention")
CONV_OPS = ("Conv", "ConvTranspose")
MATMUL_OPS = ("MatMul", "Gemm")


# Ops onnxruntime's transformer optimizer fuses an encoder into: their presence means a transformer.
TRANSFORMER_FUSED_OPS = ("com.microsoft.Attention", "com.microsoft.EmbedLayerNormalization",
                         "com.microsoft.SkipLayerNormalization", "com.microsoft.MultiHeadAttention")


def _is_transformer(model: ModelProto, hist: dict[str, int]) -> bool:
    """A transformer encoder: fused attention ops, or MatMul + Softmax + LayerNormalization (or its
    decomposed ReduceMean/Pow/Sqrt form) fed by a [batch, sequence] integer token-id input."""
    if any(hist.get(op, 0) for op in TRANSFORMER_FUSED_OPS):
        return True
    layer_norm = hist.get("LayerNormalization", 0) or (
        hist.get("ReduceMean", 0) >= 2 and hist.get("Pow", 0) and hist.get("Sqrt", 0))
    if not (layer_norm and hist.get("Softmax", 0) and hist.get("MatMul", 0) >= 4):
        return False
    return any(len(s.shape) == 2 and np.issubdtype(s.numpy_dtype, np.integer) for s in graph_inputs(model))


def model_family(model: ModelProto) -> str:
    """'transformer' (a text encoder: _is_transformer), 'sequence' (RNN/attention or MatMul-heavy),
    'conv' (Conv-heavy) or 'dense' (MLP-like)."""
    hist = op_histogram(model)
    if _is_transformer(model, hist):
        return "transformer"
    if any(hist.get(op, 0) for op in SEQUENCE_OPS):
        return "sequence"
    conv = sum(hist.get(op, 0) for op in CONV_OPS)
    matmul = sum(hist.get(op, 0) for op in MATMUL_OPS)
    if conv and conv >= matmul:
        return "conv"
    if hist.get("Softmax", 0) and matmul >= 4:
        return "sequence"
    return "dense"


def describe(path: str | os.PathLike[str], model: ModelProto | None = None) -> ModelDescription:
    """Describe the model at path (loading it unless given)."""
    p = Path(path)
    proto = model if model is not None else load_model(p)
    params, nbytes = initializer_stats(proto)
    hist = op_histogram(proto)
    return ModelDescription(
        path=str(p),
        file_size=p.stat().st_size if p.exists() else proto.ByteSize(),
        ir_version=int(proto.ir_version),
        producer=f"{proto.producer_name} {proto.producer_version}".strip(),
        opsets={(o.domain or "ai.onnx"): int(o.version) for o in proto.opset_import},
        inputs=graph_inputs(proto),
        outputs=graph_outputs(proto),
        op_histogram=hist,
        node_count=sum(hist.values()),
        parameter_count=params,
        initializer_bytes=nbytes,
        external_data=_uses_external_data(proto),
        metadata={p.key: p.value for p in proto.metadata_props},
    )


def default_opset(model: ModelProto) -> int:
    """The model's ai.onnx opset version."""
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            return int(o.version)
    return 0


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """True when a and b name the same file (resolving links)."""
    pa, pb = Path(a), Path(b)
    try:
        return pa.resolve() == pb.resolve() or (pa.exists() and pb.exists() and os.path.samefile(pa, pb))
    except OSError:
        return False


def save_model(
    model: ModelProto,
    path: str | os.PathLike[str],
    *,
    input_path: str | os.PathLike[str] | None = None,
    overwrite_input: bool = False,
    external_data: bool | None = None,
) -> Path:
    """Write model to path atomically (temp file + rename); refuse to overwrite input_path.

    External data is used when asked, or automatically when the model is above 2 GB;
    its file is named `<output name>.data` beside the output.
    """
    out = Path(path)
    if input_path is not None and same_file(out, input_path) and not overwrite_input:
        raise OnnxoptError(
            f"{out}: refusing to overwrite the input model; choose another output path"
        )
    if out.is_dir():
        raise OnnxoptError(f"{out}: is a directory; give an output file name")
    out.parent.mkdir(parents=True, exist_ok=True)
    from onnxopt.core.external import LARGE, byte_size

    use_external = external_data if external_data is not None else byte_size(model) > _PROTO_LIMIT
    data_name = out.name + ".data"
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        tmp = tmp_dir / out.name
        if use_external:
            from onnxopt.core.external import write_external

            write_external(model, tmp)  # tensor by tensor: no copy of the model
            os.replace(tmp_dir / data_name, out.parent / data_name)
        elif byte_size(model) > LARGE:  # the same bytes, without protobuf's whole-model encoder buffer
            from onnxopt.core.external import write_serialized

            write_serialized(model, tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        else:
            _write_bytes(tmp, model.SerializeToString())
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return out


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def copy_model(model: ModelProto) -> ModelProto:
    """A deep copy of a ModelProto (passes copy once, never mutate their input)."""
    m = ModelProto()
    m.CopyFrom(model)
    return m
