"""Safe wrappers over onnxruntime.quantization: prepare, quantize one candidate, check it loads, diff nodes."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import ModelProto

from onnxopt.core.errors import InvalidInputError, InvalidModelError, OnnxoptError
from onnxopt.core.errors import short_message as _short
from onnxopt.core.external import (
    LARGE,
    byte_size,
    copy_fields,
    data_file,
    initializers_only,
    load_external,
    loaded_size,
    needs_file,
    remove_model_file,
    write_external,
)
from onnxopt.core.feeds import Feed, first_batch
from onnxopt.core.files import scratch_cwd
from onnxopt.core.model import (
    all_graphs,
    batch_axes,
    copy_model,
    default_opset,
    op_histogram,
    prune_opset_imports,
    run_batch,
    sort_nodes,
    subgraph_notes,
)
from onnxopt.core.names import name_nodes
from onnxopt.core.runtime import SessionConfig, create_session, log_severity, run

log = logging.getLogger(__name__)

# Ops whose presence means a model is already quantized.
QUANT_OPS = frozenset({
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger",
    "QLinearConv", "QLinearMatMul", "QLinearAdd", "QLinearMul", "QLinearAveragePool",
    "QLinearGlobalAveragePool", "QLinearConcat", "QLinearLeakyRelu", "QLinearSigmoid", "QLinearSoftmax",
    "QLinearReduceMean", "QLinearWhere", "QGemm", "QAttention", "DynamicQuantizeMatMul",
    "DynamicQuantizeLSTM", "MatMulIntegerToFloat", "QEmbedLayerNormalization", "QOrderedMatMul",
    "MatMulNBits", "GatherBlockQuantized",
})
MIN_OPSET = 10
QUANT_PRE_PROCESS_KEY = "onnx.quant.pre_process"  # the metadata onnxruntime's quant_pre_process adds
PARITY_SAMPLES = 8  # samples an opset upgrade is checked on
PER_CHANNEL_QDQ_OPSET = 13


class CandidateFailed(Exception):
    """A candidate could not be built or loaded; the message is the reason shown in the report."""


@dataclass(frozen=True)
class Candidate:
    """One quantizer configuration: mode, format, types, granularity and node selection
    (bits, block_size, algorithm and accuracy_level: weight-only mode only, see weight_only.py)."""

    mode: str  # dynamic | static | weight-only
    format: str = "qdq"  # qdq | qoperator (static only)
    activation_type: str = "int8"
    weight_type: str = "int8"
    per_channel: bool = False
    reduce_range: bool = False
    op_types: tuple[str, ...] = ()
    exclude_nodes: tuple[str, ...] = ()
    calib_method: str = "minmax"
    bits: int = 4
    block_size: int = 32
    algorithm: str = "rtn"
    accuracy_level: int = 4

    @property
    def name(self) -> str:
        """A short label such as 'static-qdq-u8s8-pc-rr', 'dynamic-s8' or 'int4-b32' (weight-only;
        '-hqq' for HQQ, '-acc0' for an accuracy level other than 4, int8 compute)."""
        if self.mode == "weight-only":
            parts = [f"int{self.bits}", f"b{self.block_size}"]
            if self.algorithm != "rtn":
                parts.append(self.algorithm)
            if self.accuracy_level != 4:
                parts.append(f"acc{self.accuracy_level}")
        elif self.mode == "dynamic":
            parts = ["dynamic", "s8" if self.weight_type == "int8" else "u8"]
        else:
            a = "s8" if self.activation_type == "int8" else "u8"
            w = "s8" if self.weight_type == "int8" else "u8"
            parts = ["static", self.format, a + w]
        if self.per_channel:
            parts.append("pc")
        if self.reduce_range:
            parts.append("rr")
        if self.op_types:
            parts.append("only-" + "+".join(self.op_types))
        if self.exclude_nodes:
            parts.append(f"float{len(self.exclude_nodes)}")
        return "-".join(parts)

    def with_excluded(self, nodes: Sequence[str]) -> Candidate:
        """The same configuration with extra nodes kept in float."""
        merged = tuple(dict.fromkeys((*self.exclude_nodes, *nodes)))
        return replace(self, exclude_nodes=merged)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict including the label."""
        d = asdict(self)
        d["name"] = self.name
        d["op_types"] = list(self.op_types)
        d["exclude_nodes"] = list(self.exclude_nodes)
        return d


@dataclass
class Prepared:
    """The float model the quantizer starts from (pre-processed or constant-folded) on disk.

    model: its graph only (the weights stay in external data beside `path`: onnxruntime's
    quantizer and every session read the file); size: the full model's serialized size; big:
    the full model is big enough that quantized models are written with external data too.
    """

    variant: str  # "preprocessed" | "folded"
    path: Path
    model: ModelProto
    calib_cache: dict[str, Path] = field(default_factory=dict)
    size: int = 0
    big: bool = False

    def load(self) -> ModelProto:
        """The full model (weights read from the file): only for a model that is returned."""
        return load_external(self.path)


def _prepared(variant: str, model: ModelProto, path: Path) -> Prepared:
    """Write model to path with its weights in external data; the Prepared that holds its graph only."""
    size, big = byte_size(model), needs_file(model)
    write_external(model, path)
    return Prepared(variant, path, onnx.load(str(path), load_external_data=False), size=size, big=big)


def quant_ops_in(model: ModelProto) -> dict[str, int]:
    """Histogram of quantization ops in a model (subgraphs included)."""
    hist = op_histogram(model)
    return {k: v for k, v in hist.items() if k.split(".")[-1] in QUANT_OPS}


class OpsetUpgradeError(InvalidInputError):
    """A model below opset 10 could not be upgraded for quantization (the message says why)."""


def require_min_opset(model: ModelProto) -> None:
    """Raise InvalidInputError when the model's opset predates QuantizeLinear (10)."""
    opset = default_opset(model)
    if opset < MIN_OPSET:
        raise InvalidInputError(
            f"quantization needs opset >= {MIN_OPSET} (QuantizeLinear), 13 recommended; the model has opset {opset}: "
            "re-export it with --opset 13"
        )


def upgrade_old_opset(model: ModelProto, feed: Feed | None, notes: list[str]) -> ModelProto:
    """The model converted from opset < 10 to 13 by onnx's version converter, its outputs checked
    against the original's on `feed` (allclose); raises OpsetUpgradeError when either fails."""
    opset = default_opset(model)
    fix = "re-export it with --opset 13"
    try:
        upgraded = onnx.version_converter.convert_version(model, PER_CHANNEL_QDQ_OPSET)
        onnx.checker.check_model(upgraded)
    except Exception as e:
        raise OpsetUpgradeError(
            f"quantization needs opset >= {MIN_OPSET}; the model has opset {opset} and onnx's version "
            f"converter could not upgrade it to {PER_CHANNEL_QDQ_OPSET} ({_short(e)}): {fix}"
        ) from e
    checked = ""
    if feed is not None:
        from onnxopt.measure.fidelity import run_batched

        sample = first_batch(feed, PARITY_SAMPLES, batch_axes(model))
        try:
            before, after = run_batched(model, sample), run_batched(upgraded, sample)
        except Exception as e:
            raise OpsetUpgradeError(
                f"quantization needs opset >= {MIN_OPSET}; the model upgraded from opset {opset} to "
                f"{PER_CHANNEL_QDQ_OPSET} does not run ({_short(e)}): {fix}"
            ) from e
        diff = max((float(np.max(np.abs(a.astype(np.float64) - b))) if a.size else 0.0
                    for a, b in zip(before, after)), default=0.0)
        if len(before) != len(after) or not all(
            a.shape == b.shape and np.allclose(a, b, rtol=1e-4, atol=1e-5) for a, b in zip(before, after)
        ):
            raise OpsetUpgradeError(
                f"quantization needs opset >= {MIN_OPSET}; upgrading the model from opset {opset} to "
                f"{PER_CHANNEL_QDQ_OPSET} changed its outputs (max abs diff {diff:.3g}): {fix}"
            )
        checked = f"; outputs match the original (max abs diff {diff:.2g})"
    notes.append(f"upgraded opset {opset} -> {PER_CHANNEL_QDQ_OPSET} with onnx's version converter "
                 f"before quantizing{checked}")
    log.info(notes[-1])
    return upgraded


def check_opset(
    model: ModelProto, *, needs_per_channel_qdq: bool, feed: Feed | None = None, notes: list[str] | None = None
) -> ModelProto:
    """Return a model at an opset the quantizer can use or raise InvalidInputError: opset < 10
    upgraded to 13 (outputs checked on feed: upgrade_old_opset), 10-12 upgraded to 13 when the
    converter can (needed for per-channel QDQ). The upgrades add a line to notes."""
    opset = default_opset(model)
    if opset >= PER_CHANNEL_QDQ_OPSET:
        return model
    if opset < MIN_OPSET:
        return upgrade_old_opset(model, feed, notes if notes is not None else [])
    try:
        upgraded = onnx.version_converter.convert_version(model, PER_CHANNEL_QDQ_OPSET)
        onnx.checker.check_model(upgraded)
        log.info("upgraded opset %d -> %d for per-channel QDQ", opset, PER_CHANNEL_QDQ_OPSET)
        if notes is not None:
            notes.append(f"upgraded the model to opset {PER_CHANNEL_QDQ_OPSET} (per-channel QDQ needs it)")
        return upgraded
    except Exception as e:
        if needs_per_channel_qdq:
            raise InvalidInputError(
                f"per-channel QDQ needs opset >= {PER_CHANNEL_QDQ_OPSET}; the model has opset {opset} and "
                f"onnx.version_converter could not upgrade it ({_short(e)}): re-export with --opset 13 "
                "or drop --per-channel"
            ) from e
        return model


def _skip_torch_import() -> None:
    """Let quant_pre_process import onnxruntime.tools without it importing torch (~10 s, unused here).

    onnxruntime/tools/__init__.py imports torch whenever it is installed, only to offer an
    export helper; the package is registered without running that __init__.
    """
    import importlib.util
    import sys

    if "onnxruntime.tools" in sys.modules or "torch" in sys.modules:
        return
    spec = importlib.util.find_spec("onnxruntime.tools")
    if spec is None or spec.submodule_search_locations is None:
        return
    sys.modules["onnxruntime.tools"] = importlib.util.module_from_spec(spec)


def prepare(model: ModelProto, workdir: Path, notes: list[str], *, graph_optimized: bool = False,
            path: Path | None = None) -> list[Prepared]:
    """Float starting points in order of preference: quant_pre_process output, then constants folded only.

    The folded model is onnxruntime's basic (portable) graph optimization of the input: constant
    folding, redundant node removal. graph_optimized: the input already is that (an optimize_graph
    stage ran just before), so it is used as it is rather than optimized a second time.
    path: `model` is the graph of this file, whose weights stay there (a big model, see
    quantization.api): onnxruntime optimizes the file into the work directory and no variant's
    weights are ever held in memory.
    """
    _skip_torch_import()
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from onnxopt.passes.graph import constants_to_initializers, ort_optimize

    model, moved = constants_to_initializers(model)  # onnxruntime's folding does it too; be explicit
    if moved:
        log.info("moved %d Constant node(s) into initializers before quantizing", moved)
    notes.extend(subgraph_notes(model, COMPUTE_OPS, "left in float (onnxruntime's quantizer does not enter "
                                                   "If/Loop/Scan subgraphs)"))
    if path is not None:
        folded_prep = _folded_from_file(model, path, workdir, moved=bool(moved), graph_optimized=graph_optimized)
    else:
        folded = _opsets_pruned(model) if graph_optimized else ort_optimize(model, "basic")
        name_nodes(folded)  # nodes onnxruntime's optimizer added may have no name
        # Weights in external data beside the file: the variants hold graphs only (not a copy of the model each).
        folded_prep = _prepared("folded", folded, workdir / "float_folded.onnx")
        del folded
    folded_path = folded_prep.path
    variants: list[Prepared] = []
    pre_path = workdir / "float_preprocessed.onnx"
    attempts: tuple[tuple[dict[str, Any], str], ...] = (
        ({}, "defaults"), ({"skip_symbolic_shape": True}, "skip_symbolic_shape=True"))
    if folded_prep.big:
        attempts = ()
        notes.append(f"model above {LARGE >> 20} MB: quant_pre_process skipped (its shape inference holds "
                     "several copies of the weights); quantizing the constant-folded model")
    for kwargs, label in attempts:
        try:
            # Its symbolic shape inference writes temporary files into the current directory.
            with quiet_quantizer(), scratch_cwd("onnxopt-prep-"):  # input optimized already: skip its optimizer
                quant_pre_process(str(folded_path.resolve()), str(pre_path.resolve()), skip_optimization=True, **kwargs)
            pre = onnx.load(str(pre_path))
            name_nodes(pre)
            variants.append(_prepared("preprocessed", pre, pre_path))
            del pre
            if kwargs:
                notes.append(
                    "quant_pre_process with defaults failed (symbolic shape inference); "
                    f"pre-processed with {label} instead"
                )
            break
        except Exception as e:
            log.info("quant_pre_process (%s) failed: %s", label, _short(e))
            if kwargs:
                notes.append(f"quant_pre_process failed ({_short(e)}); quantizing the constant-folded model")
    variants.append(folded_prep)
    return variants


def _folded_from_file(graph: ModelProto, path: Path, workdir: Path, *, moved: bool, graph_optimized: bool) -> Prepared:
    """prepare()'s folded variant of the model at path (graph: its graph, Constant nodes moved
    when `moved`), never loaded with its weights: onnxruntime reads the file and writes the
    optimized model into the work directory with its weights in external data; the graph is then
    named and its unused opset imports dropped as ort_optimize does. graph_optimized: the file is
    used as it is (a new file only when the graph changed)."""
    out = workdir / "float_folded.onnx"
    if graph_optimized:
        pruned = _opsets_pruned(graph)
        name_nodes(pruned)
        if pruned is graph and not moved:
            return Prepared("folded", path, graph, size=loaded_size(graph, path.parent), big=True)
        write_external(pruned, out, base_dir=path.parent)
        return Prepared("folded", out, onnx.load(str(out), load_external_data=False),
                        size=loaded_size(pruned, path.parent), big=True)
    from onnxopt.passes.graph import optimize_file

    src = path
    if moved:  # the graph to optimize differs from the file's: written beside the output, weights copied
        src = workdir / "float_start.onnx"
        write_external(graph, src, base_dir=path.parent)
    optimize_file(src, out, graph, "basic")
    if src != path:
        src.unlink()
        data_file(src).unlink(missing_ok=True)
    folded = onnx.load(str(out), load_external_data=False)
    name_nodes(folded)  # nodes onnxruntime's optimizer added may have no name
    out.write_bytes(folded.SerializeToString())  # the graph only: the weights stay in its data file
    return Prepared("folded", out, folded, size=loaded_size(folded, workdir), big=True)


def _opsets_pruned(model: ModelProto) -> ModelProto:
    """model without unused opset imports: itself when it has none (a big model is not copied)."""
    probe = ModelProto()
    probe.opset_import.extend(model.opset_import)
    probe.functions.extend(model.functions)
    probe.graph.node.extend(model.graph.node)
    if len(prune_opset_imports(probe).opset_import) == len(model.opset_import):
        return model
    return prune_opset_imports(copy_model(model))


@contextlib.contextmanager
def quiet_quantizer() -> Iterator[None]:
    """Silence onnxruntime's quantizer, which logs warnings and info on the root logger."""
    root = logging.getLogger()
    old = root.level
    names = ("onnxruntime.quantization", "onnxruntime.quantization.shape_inference")
    olds = [logging.getLogger(n).level for n in names]
    root.setLevel(max(old, logging.ERROR))
    import onnxruntime as ort

    ort.set_default_logger_severity(3)  # the quantizer's own sessions warn about unused initializers
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(old)
        ort.set_default_logger_severity(log_severity())
        for n, lv in zip(names, olds):
            logging.getLogger(n).setLevel(lv)


INFER_DATA_BYTES = 2**20  # lean_shape_inference keeps the data of initializers up to this size (shape tensors)


@contextlib.contextmanager
def lean_shape_inference() -> Iterator[None]:
    """onnxruntime's dynamic quantizer infers shapes again by saving a deep copy of the whole model
    and loading it back (quant_utils.save_and_reload_model_with_shape_infer, called by
    ONNXQuantizer.__init__): three copies of the weights at once (measured on a 512 MB MLP:
    580 MB -> 1613 MB). Inside this block that function infers the shapes of a copy without the
    data of initializers above INFER_DATA_BYTES (shape inference reads only their type and dims)
    and sets the result on the model itself (value_info, graph outputs, the 'onnx.infer' marker),
    which it returns: what the reload gives, with the weights held once."""
    from onnxruntime.quantization import base_quantizer, onnx_quantizer

    name = "save_and_reload_model_with_shape_infer"
    modules = [m for m in (onnx_quantizer, base_quantizer) if hasattr(m, name)]
    saved = [getattr(m, name) for m in modules]
    for m in modules:
        setattr(m, name, _infer_in_place)
    try:
        yield
    finally:
        for m, f in zip(modules, saved):
            setattr(m, name, f)


def _infer_in_place(model: ModelProto) -> ModelProto:
    """lean_shape_inference's replacement of save_and_reload_model_with_shape_infer."""
    from onnxruntime.quantization.quant_utils import add_infer_metadata

    probe = ModelProto()  # shallow, field by field: no copy of the weights
    copy_fields(model, probe, skip="graph")
    copy_fields(model.graph, probe.graph, skip="initializer")
    for t in model.graph.initializer:
        if t.ByteSize() <= INFER_DATA_BYTES:
            probe.graph.initializer.add().CopyFrom(t)
            continue
        stub = probe.graph.initializer.add(name=t.name, data_type=t.data_type, dims=t.dims)
        stub.data_location = onnx.TensorProto.EXTERNAL
        stub.external_data.add(key="location", value="not-loaded")
    inferred = onnx.shape_inference.infer_shapes(probe)
    del model.graph.value_info[:]
    model.graph.value_info.extend(inferred.graph.value_info)
    del model.graph.output[:]
    model.graph.output.extend(inferred.graph.output)
    add_infer_metadata(model)
    return model


def _qtype(name: str) -> Any:
    from onnxruntime.quantization import QuantType

    return QuantType.QInt8 if name == "int8" else QuantType.QUInt8


def build(prep: Prepared, cand: Candidate, workdir: Path, source: Any = None) -> ModelProto:
    """Run onnxruntime's quantizer for one candidate on a prepared model; raise CandidateFailed."""
    out = _output_path(prep, cand, workdir)
    got: list[ModelProto] = []
    try:
        _quantize_to(prep, cand, out, workdir, source, lambda: got.append(_finish(onnx.load(str(out)))))
        return got[0]
    finally:
        remove_model_file(out)


def build_file(prep: Prepared, cand: Candidate, workdir: Path, source: Any = None) -> tuple[ModelProto, Path, int]:
    """build() for a big prepared model (Prepared.big: the quantizer writes external data), whose
    weights never pass through a proto here: the quantized model stays in the file the quantizer
    wrote, its graph sorted and named there. (its graph, the file, the whole model's model_size);
    the caller removes the file (remove_model_file). Raises CandidateFailed."""
    out = _output_path(prep, cand, workdir)
    got: list[tuple[ModelProto, Path, int]] = []
    try:
        _quantize_to(prep, cand, out, workdir, source, lambda: got.append(_graph_in_place(out)))
    except BaseException:
        remove_model_file(out)
        raise
    return got[0]


def _graph_in_place(out: Path) -> tuple[ModelProto, Path, int]:
    """build_file's result from the quantizer's file: its graph finished (_finish) and written back."""
    q = _finish(onnx.load(str(out), load_external_data=False))
    if initializers_only(q):
        out.write_bytes(q.SerializeToString())  # the graph only: the weights stay in the data file
        return q, out, loaded_size(q, out.parent)
    full = _finish(onnx.load(str(out)))  # tensors in attributes too: written again, one by one
    size = model_size(full)
    write_external(full, out)
    return onnx.load(str(out), load_external_data=False), out, size


def _output_path(prep: Prepared, cand: Candidate, workdir: Path) -> Path:
    out = workdir / f"{prep.variant}-{cand.name}-{abs(hash(cand)) % 10**8}.onnx"
    remove_model_file(out)  # onnx appends external data to an existing data file
    return out


def _finish(q: ModelProto) -> ModelProto:
    """A quantizer's output made ready: nodes sorted (subgraph inputs counted), unused opsets dropped,
    nodes named (the quantizer leaves some of the nodes it adds unnamed)."""
    q = prune_opset_imports(sort_nodes(q))
    name_nodes(q)
    return q


def _quantize_to(prep: Prepared, cand: Candidate, out: Path, workdir: Path, source: Any,
                 check: Callable[[], object]) -> None:
    """Run onnxruntime's quantizer for cand on prep, writing out (external data when prep.big), then
    `check` (what the caller reads back, so that its failure is the quantizer's); raise CandidateFailed."""
    from onnxruntime.quantization import QuantFormat, quantize_dynamic, quantize_static

    if cand.mode == "weight-only":
        _weight_only_to(prep, cand, out, check)
        return
    common: dict[str, Any] = {
        "op_types_to_quantize": list(cand.op_types) or None,
        "per_channel": cand.per_channel,
        "reduce_range": cand.reduce_range,
        "weight_type": _qtype(cand.weight_type),
        "nodes_to_exclude": list(cand.exclude_nodes) or None,
        "extra_options": {"MatMulConstBOnly": True},
        "use_external_data_format": prep.big,
    }
    cache = calibration_cache(prep, cand.calib_method, source, workdir) if cand.mode == "static" else None
    try:
        with quiet_quantizer(), lean_shape_inference() if prep.big else contextlib.nullcontext():
            if cand.mode == "dynamic":
                quantize_dynamic(str(prep.path), str(out), **common)
            else:
                quantize_static(
                    str(prep.path), str(out),
                    calibration_data_reader=None,
                    quant_format=QuantFormat.QDQ if cand.format == "qdq" else QuantFormat.QOperator,
                    activation_type=_qtype(cand.activation_type),
                    calibrate_method=_calib_method(cand.calib_method),
                    calibration_cache_path=str(cache),
                    **common,
                )
        check()
    except Exception as e:
        raise CandidateFailed(f"onnxruntime's quantizer failed: {_short(e)}") from e


def _weight_only_to(prep: Prepared, cand: Candidate, out: Path, check: Callable[[], object]) -> None:
    """_quantize_to for mode weight-only: onnxruntime's MatMulNBitsQuantizer on the prepared model."""
    from onnxopt.quantization.weight_only import quantize_file

    try:
        with quiet_quantizer():
            quantize_file(prep.path, out, bits=cand.bits, block_size=cand.block_size, algorithm=cand.algorithm,
                          accuracy_level=cand.accuracy_level, exclude_nodes=cand.exclude_nodes,
                          external_data=prep.big)
        check()
    except OnnxoptError:
        raise
    except Exception as e:
        raise CandidateFailed(f"onnxruntime's MatMulNBits quantizer failed: {_short(e)}") from e


def _calib_method(name: str) -> Any:
    from onnxruntime.quantization import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile}[name]


def calibration_cache(prep: Prepared, method: str, source: Any, workdir: Path) -> Path:
    """The tensor-range cache of a prepared model (calibrated once per model and method)."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    from onnxopt.quantization.calibration import compute_ranges

    if method in prep.calib_cache:
        return prep.calib_cache[method]
    assert source is not None, "quantize() refuses static quantization without calibration data"
    sub = workdir / f"calib-{prep.variant}"
    sub.mkdir(exist_ok=True)
    op_types = sorted(set(QLinearOpsRegistry) | set(QDQRegistry))
    with quiet_quantizer():
        prep.calib_cache[method] = compute_ranges(prep.path, source, method=method, op_types=op_types, workdir=sub)
    return prep.calib_cache[method]


def check_runs(model: ModelProto, feed: Feed, source: ModelProto | Path | None = None) -> None:
    """Load the model in onnxruntime (from `source`, e.g. its file, when given) and run one batch;
    raise CandidateFailed with the reason."""
    try:
        from onnxopt.core.runtime import lean_session

        cfg = lean_session(model, SessionConfig(intra_op_threads=1, allow_spinning=False))
        sess = create_session(source if source is not None else model, cfg)
        n = run_batch(model) or 2
        run(sess, first_batch(feed, n, batch_axes(model)))
    except InvalidModelError as e:
        raise CandidateFailed(f"onnxruntime refused the quantized model: {e}") from e
    except Exception as e:
        raise CandidateFailed(f"the quantized model fails at run time: {_short(e)}") from e


def supported_ops(mode: str, fmt: str) -> frozenset[str]:
    """Op types onnxruntime's quantizer handles in a mode/format."""
    from onnxruntime.quantization.registry import (
        IntegerOpsRegistry,
        QDQRegistry,
        QLinearOpsRegistry,
    )

    if mode == "weight-only":
        return frozenset({"MatMul"})
    if mode == "dynamic":
        return frozenset(IntegerOpsRegistry)
    return frozenset(QDQRegistry if fmt == "qdq" else QLinearOpsRegistry)


# Ops that carry the weights and the arithmetic; the report lists these node by node.
COMPUTE_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm", "Attention", "LSTM", "GRU", "Gather",
                         "EmbedLayerNormalization", "Einsum"})


def node_changes(float_model: ModelProto, q_model: ModelProto, cand: Candidate) -> tuple[list[str], list[dict[str, str]]]:
    """(quantized compute nodes, float compute nodes with reasons) of a quantized model vs its float source."""
    q_nodes = {}
    producers: dict[str, str] = {}
    for g in all_graphs(q_model.graph):
        for n in g.node:
            q_nodes[n.name] = n
            for o in n.output:
                producers[o] = n.op_type
    supported = supported_ops(cand.mode, cand.format)
    quantized: list[str] = []
    left: list[dict[str, str]] = []
    for g in all_graphs(float_model.graph):
        for n in g.node:
            if n.op_type not in COMPUTE_OPS:
                continue
            qn = q_nodes.get(n.name)
            is_q = qn is None or qn.op_type in QUANT_OPS or any(
                producers.get(i) in ("DequantizeLinear", "DynamicQuantizeLinear") for i in qn.input
            )
            if is_q:
                quantized.append(n.name)
                continue
            if n.name in cand.exclude_nodes:
                reason = "kept in float (excluded or returned to float for accuracy)"
            elif cand.op_types and n.op_type not in cand.op_types:
                reason = f"op type {n.op_type} not selected"
            elif n.op_type not in supported:
                reason = f"onnxruntime's {cand.mode} quantizer does not support {n.op_type}"
            elif g is not float_model.graph:
                reason = "inside an If/Loop/Scan subgraph the quantizer did not touch"
            else:
                reason = "the quantizer left it in float (e.g. weights not constant, or a shape it cannot handle)"
            left.append({"node": n.name, "op": n.op_type, "reason": reason})
    return quantized, left


def model_size(model: ModelProto) -> int:
    """Serialized size in bytes (the file size when saved without external data)."""
    return byte_size(model)


def strip_quant_metadata(model: ModelProto) -> ModelProto:
    """A copy without onnxruntime's pre-processing marker metadata (keeps user metadata)."""
    return drop_quant_metadata(copy_model(model))


def drop_quant_metadata(model: ModelProto) -> ModelProto:
    """The model without onnxruntime's pre-processing marker metadata, changed in place."""
    keep = [p for p in model.metadata_props if p.key != QUANT_PRE_PROCESS_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    return model
