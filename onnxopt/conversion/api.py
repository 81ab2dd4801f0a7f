"""Convert PyTorch, Keras and Hugging Face models to ONNX, prove numerical parity, stamp metadata, simplify.

convert() runs the source on seeded (and --data) inputs, tries each exporter
(conversion.attempts), picks one (conversion.choose), stamps metadata and writes a report.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from onnx import ModelProto

from onnxopt.conversion.attempts import export_failure, try_exporters
from onnxopt.conversion.choose import choose_exporter
from onnxopt.conversion.dynamic import RESIZE_FACTORS, Axes, axes_of, check_axes, resized
from onnxopt.conversion.edits import set_metadata
from onnxopt.conversion.parity import ParityReport, as_numpy, check_parity, seeded_inputs
from onnxopt.conversion.types import EXPORTERS, ConvertOptions, ConvertResult, Source
from onnxopt.core.errors import InvalidInputError, OnnxoptError
from onnxopt.core.errors import short_message as _short
from onnxopt.core.feeds import LABEL_KEYS, Feed
from onnxopt.core.model import graph_inputs, graph_outputs, save_model

log = logging.getLogger(__name__)

__all__ = ["EXPORTERS", "ConvertOptions", "ConvertResult", "Source", "convert", "convert_source",
           "from_keras", "from_torch"]

PARITY_BATCH = 3  # batch of the seeded parity inputs: neither 1 nor the export batch
MAX_DATA_SAMPLES = 256  # real --data samples used for parity
META_PREFIX = "onnxopt."


def convert(source: Source, options: ConvertOptions, *, data: Feed | None = None, output: str | Path | None = None) -> ConvertResult:
    """Export source to ONNX with each candidate exporter, check parity, simplify, pick one, save."""
    specs = source.inputs()
    in_names = list(options.input_names) if options.input_names else [s[0] for s in specs]
    if len(in_names) != len(specs):
        raise InvalidInputError(
            f"--input-names: the model takes {len(specs)} inputs, got {len(in_names)} names ({','.join(in_names)})"
        )
    default_out = source.output_names()
    out_names = list(options.output_names) if options.output_names else default_out
    examples = [ex for _, ex in specs]
    user_axes = axes_of(options.dynamic_axes)
    check_axes(user_axes, in_names, examples)
    feeds_arrays = _parity_arrays(source, examples, in_names, user_axes, options)
    if data is not None:
        feeds_arrays.append(_data_inputs(data, [n for n, _ in specs], in_names, options.dynamic_batch, examples,
                                         _all_axes(source, specs, in_names, default_out, out_names, user_axes)))
    t0 = time.perf_counter()
    reference = [_run_source(source, arrays, user_axes) for arrays in feeds_arrays]
    out_names = _output_names(out_names, len(reference[0]), options)
    axes = _all_axes(source, specs, in_names, default_out, out_names, user_axes)
    source_ms = (time.perf_counter() - t0) * 1000
    exporters = _exporters(source, options)
    attempts, candidates = try_exporters(
        source, exporters, options, in_names=in_names, out_names=out_names, examples=examples,
        reference=reference, feeds_arrays=feeds_arrays, dynamic_axes=axes,
    )
    if not candidates:
        raise export_failure(attempts)
    bench_arrays = source.benchmark_inputs() if hasattr(source, "benchmark_inputs") else None
    bench_feed = dict(zip(in_names, bench_arrays)) if bench_arrays is not None else None
    (name, model, parity), reason, bench = choose_exporter(candidates, options, feed=bench_feed)
    if len(exporters) > 1:
        log.info("exporter %s chosen: %s", name, reason)
    for a in attempts:
        if not a.get("ok"):
            log.warning("exporter %s failed (%s); using %s", a["exporter"], a.get("error", "failed"), name)
    model = set_metadata(model, _metadata(source, name, parity, options))
    report = _report(source, model, options, parity, name=name, reason=reason, attempts=attempts,
                     bench=bench, source_ms=source_ms)
    report["dynamic_axes"] = {n: {str(k): v for k, v in a.items()} for n, a in axes.items()}
    report["parity_by_input"] = _parity_by_input(model, in_names, feeds_arrays, reference, options)
    if hasattr(source, "describe"):
        report["source_model"] = source.describe()
    if output is not None:
        out = save_model(model, output)
        report["output"] = str(out)
    json.dumps(report)  # the report must stay JSON-serializable
    return ConvertResult(model=model, parity=parity, exporter=name, framework=source.framework, report=report)


def _parity_arrays(
    source: Source, examples: list[np.ndarray], in_names: list[str], user_axes: Axes, options: ConvertOptions,
) -> list[list[np.ndarray]]:
    """The inputs parity is checked on: the source's own (a transformer's several sequence
    lengths), else seeded ones shaped like the examples, plus resized ones for each --dynamic axis."""
    if hasattr(source, "parity_inputs"):
        return [list(a) for a in source.parity_inputs(options.seed)]
    base = seeded_inputs(examples, PARITY_BATCH if options.dynamic_batch else None, options.seed)
    feeds = [base]
    for i, factor in enumerate(RESIZE_FACTORS):
        other = resized(base, in_names, user_axes, factor, options.seed + 1 + i)
        if other is not None:
            feeds.append(other)
    return feeds


def _parity_by_input(
    model: ModelProto, in_names: list[str], feeds_arrays: list[list[np.ndarray]],
    reference: list[list[np.ndarray]], options: ConvertOptions,
) -> list[dict[str, Any]]:
    """The input shapes of each parity feed and the chosen model's largest differences on it."""
    from onnxopt.core.runtime import create_session

    sess = create_session(model) if len(feeds_arrays) > 1 else None
    out = []
    for arrays, ref in zip(feeds_arrays, reference):
        entry: dict[str, Any] = {"inputs": {n: list(a.shape) for n, a in zip(in_names, arrays)}}
        if sess is not None:
            names = {i.name for i in sess.get_inputs()}
            p = check_parity([ref], sess, [{n: a for n, a in zip(in_names, arrays) if n in names}],
                             atol=options.atol, rtol=options.rtol)
            entry.update(max_abs=p.max_abs, max_rel=p.max_rel)
        out.append(entry)
    return out


def _all_axes(
    source: Source, specs: list[tuple[str, np.ndarray]], in_names: list[str], default_out: list[str],
    out_names: list[str], user_axes: Axes,
) -> Axes:
    """The source's own dynamic axes (renamed like its inputs and outputs) and the --dynamic ones."""
    axes: Axes = {}
    if hasattr(source, "dynamic_axes"):
        rename = dict(zip([n for n, _ in specs], in_names))
        if len(default_out) == len(out_names):
            rename.update(zip(default_out, out_names))
        for name, dims in source.dynamic_axes().items():
            axes.setdefault(rename.get(name, name), {}).update(dims)
    for name, dims in user_axes.items():
        axes.setdefault(name, {}).update(dims)
    return axes


def _run_source(source: Source, arrays: list[np.ndarray], user_axes: Axes | None = None) -> list[np.ndarray]:
    """The source model's outputs (the parity reference); a failure names the input shapes."""
    try:
        return source.run(arrays)
    except OnnxoptError:
        raise
    except Exception as e:
        hint = "; an axis given with --dynamic may not be free in the model" if user_axes else "; check --input-shape"
        raise InvalidInputError(f"the {source.framework} model fails on inputs shaped "
                                f"{[a.shape for a in arrays]}: {_short(e)}{hint}") from e


def _output_names(names: list[str], n_outputs: int, options: ConvertOptions) -> list[str]:
    """The given or default output names, or output / output_0.. when they do not fit n_outputs."""
    if names and len(names) == n_outputs:
        return names
    if options.output_names:
        raise InvalidInputError(f"--output-names: the model returns {n_outputs} outputs, got {len(names)} names")
    return ["output"] if n_outputs == 1 else [f"output_{i}" for i in range(n_outputs)]


def _exporters(source: Source, options: ConvertOptions) -> list[str]:
    """The exporters to try, in order: all of the source's for 'auto', else the one asked for."""
    if options.exporter == "auto":
        return list(source.exporters)
    if options.exporter in source.exporters:
        return [options.exporter]
    raise InvalidInputError(
        f"--exporter {options.exporter}: not available for a {source.framework} model; "
        f"choose one of auto, {', '.join(source.exporters)}"
    )


def _metadata(source: Source, exporter: str, parity: ParityReport, options: ConvertOptions) -> dict[str, str]:
    """The onnxopt.* metadata_props stamped on the converted model."""
    from onnxopt import __version__

    props = {
        "version": __version__,
        "source_framework": source.framework,
        "source_framework_version": source.framework_version,
        "exporter": exporter,
        "parity_max_abs": f"{parity.max_abs:.3g}",
        "parity_max_rel": f"{parity.max_rel:.3g}",
        "parity_atol": f"{parity.atol:g}",
        "parity_rtol": f"{parity.rtol:g}",
        "parity_samples": str(parity.samples),
        "simplified": str(options.simplify).lower(),
    }
    return {META_PREFIX + k: v for k, v in props.items()}


def _report(
    source: Source, model: ModelProto, options: ConvertOptions, parity: ParityReport, *, name: str,
    reason: str, attempts: list[dict[str, Any]], bench: dict[str, Any] | None, source_ms: float,
) -> dict[str, Any]:
    """The JSON report of a conversion."""
    return {
        "framework": source.framework,
        "framework_version": source.framework_version,
        "exporter": name,
        "exporter_reason": reason,
        "opset": options.opset,
        "dynamic_batch": options.dynamic_batch,
        "inputs": [{"name": s.name, "dtype": s.dtype, "shape": list(s.shape)} for s in graph_inputs(model)],
        "outputs": [{"name": s.name, "dtype": s.dtype, "shape": list(s.shape)} for s in graph_outputs(model)],
        "parity": parity.to_dict(),
        "attempts": attempts,
        "benchmark": bench,
        "source_run_ms": round(source_ms, 1),
        "nodes": len(model.graph.node),
        "model_bytes": model.ByteSize(),
    }


def _data_inputs(
    data: Feed,
    src_names: Sequence[str],
    in_names: Sequence[str],
    dynamic_batch: bool,
    examples: Sequence[np.ndarray],
    axes: Axes | None = None,
) -> list[np.ndarray]:
    """The --data arrays for each input in call order (cast within a dtype kind, cut to MAX_DATA_SAMPLES)."""
    arrays = []
    axes = axes or {}
    for src_name, name, ex in zip(src_names, in_names, examples):
        dtype = ex.dtype
        key = name if name in data else src_name if src_name in data else None
        if key is None and len(src_names) == 1:
            cands = [k for k in data if k not in LABEL_KEYS]
            key = cands[0] if len(cands) == 1 else ("input" if "input" in data else None)
        if key is None:
            raise InvalidInputError(f"--data has no array for input {name!r} (has: {', '.join(sorted(data))})")
        arr = np.asarray(data[key])
        if arr.dtype != dtype and arr.dtype.kind == np.dtype(dtype).kind:
            arr = arr.astype(dtype)
        if arr.dtype != dtype:
            raise InvalidInputError(f"--data {key!r}: dtype {arr.dtype}, the model expects {np.dtype(dtype)}")
        free = set(axes.get(name, {}))
        if len(arr.shape) != len(ex.shape) or any(
            a != e for i, (a, e) in enumerate(zip(arr.shape, ex.shape)) if i > 0 and i not in free
        ):
            raise InvalidInputError(
                f"--data {key!r}: samples shaped {arr.shape[1:]}, the model expects {ex.shape[1:]}"
            )
        arrays.append(arr[: MAX_DATA_SAMPLES if dynamic_batch else ex.shape[0]])
    if not dynamic_batch and arrays and arrays[0].shape[0] != examples[0].shape[0]:
        raise InvalidInputError("--data with --static-batch needs at least one full batch of samples")
    return arrays


# ---------------------------------------------------------------- public entry points
# Each entry point spells out the same keywords (not **kwargs) so help() and type checkers show
# them; _options turns them into one validated ConvertOptions.


def _options(
    opset: int, exporter: str, dynamic_batch: bool, input_names: Sequence[str] | None,
    output_names: Sequence[str] | None, atol: float, rtol: float, simplify: bool, seed: int,
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
) -> ConvertOptions:
    return ConvertOptions(
        opset=opset, exporter=exporter, dynamic_batch=dynamic_batch,
        input_names=tuple(input_names) if input_names else None,
        output_names=tuple(output_names) if output_names else None,
        atol=atol, rtol=rtol, simplify=simplify, seed=seed,
        dynamic_axes=tuple((n, int(a), str(lbl)) for n, dims in (dynamic_axes or {}).items() for a, lbl in dims.items()),
    )


def _examples(example_inputs: Any) -> list[np.ndarray] | None:
    """Example inputs as a list of numpy arrays (a single array or tensor is one input)."""
    if example_inputs is None:
        return None
    if not isinstance(example_inputs, (tuple, list)):
        example_inputs = (example_inputs,)
    return [as_numpy(x) for x in example_inputs]


def from_torch(
    module: Any,
    example_inputs: Any,
    *,
    output: str | Path | None = None,
    opset: int = 17,
    exporter: str = "auto",
    dynamic_batch: bool = True,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    atol: float = 1e-4,
    rtol: float = 1e-3,
    simplify: bool = True,
    data: Feed | None = None,
    seed: int = 0,
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
) -> ConvertResult:
    """Export a torch nn.Module (or TorchScript / ExportedProgram) to ONNX with a parity check.

    dynamic_axes: symbolic axes besides the batch, e.g. {"input_ids": {1: "sequence"}}.
    """
    from onnxopt.frameworks.torch_export import TorchSource

    opts = _options(opset, exporter, dynamic_batch, input_names, output_names, atol, rtol, simplify, seed,
                    dynamic_axes)
    src = TorchSource(module, _examples(example_inputs))
    return convert(src, opts, data=data, output=output)


def from_keras(
    model: Any,
    *,
    example_inputs: Any = None,
    output: str | Path | None = None,
    opset: int = 17,
    dynamic_batch: bool = True,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    atol: float = 1e-4,
    rtol: float = 1e-3,
    simplify: bool = True,
    data: Feed | None = None,
    seed: int = 0,
    exporter: str = "auto",
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
) -> ConvertResult:
    """Export a Keras 3 model to ONNX (via model.export) with a parity check."""
    from onnxopt.frameworks.keras_export import KerasSource

    opts = _options(opset, exporter, dynamic_batch, input_names, output_names, atol, rtol, simplify, seed,
                    dynamic_axes)
    src = KerasSource(model, _examples(example_inputs))
    return convert(src, opts, data=data, output=output)


def convert_source(
    source: str,
    *,
    framework: str = "auto",
    weights: str | None = None,
    output: str | Path | None = None,
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
    input_dtypes: Mapping[str, str] | None = None,
    opset: int = 17,
    exporter: str = "auto",
    dynamic_batch: bool = True,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    atol: float = 1e-4,
    rtol: float = 1e-3,
    simplify: bool = True,
    data: Feed | Mapping[str, np.ndarray] | None = None,
    seed: int = 0,
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
    task: str = "auto",
    pooling: str = "auto",
    normalize: bool | None = None,
    with_tokenizer: bool = False,
    texts: Sequence[str] | None = None,
) -> ConvertResult:
    """Load a model from a file, folder or `file.py:factory` / `pkg.mod:factory` and convert it.

    A Hugging Face model folder (config.json + weights, or a sentence-transformers folder) is
    built with transformers: task (auto: from config.json), pooling (auto: the folder's
    sentence-transformers pooling; none, mean, cls, max, mean_sqrt_len) and normalize (None: the
    folder's) apply to it; with_tokenizer puts its tokenizer in front (strings in), verified on
    texts (default: a built-in set of 300 varied sentences).
    """
    from onnxopt.conversion.sources import load_source

    opts = _options(opset, exporter, dynamic_batch, input_names, output_names, atol, rtol, simplify, seed,
                    dynamic_axes)
    if output is not None and os.path.exists(source) and Path(output).resolve() == Path(source).resolve():
        raise InvalidInputError(f"{output}: refusing to overwrite the source model; choose another output path")
    from onnxopt.frameworks.hf_folder import is_hf_folder

    hf_only = [flag for flag, used in (("--with-tokenizer", with_tokenizer), ("--task", task != "auto"),
                                       ("--pooling", pooling != "auto"), ("--normalize", normalize is not None))
               if used]
    if hf_only and not is_hf_folder(Path(source)):
        raise InvalidInputError(f"{hf_only[0]} applies to a Hugging Face model folder as SOURCE")
    feed = dict(data) if data is not None else None
    src = load_source(source, framework=framework, weights=weights, input_shapes=input_shapes,
                      input_dtypes=input_dtypes, input_names=opts.input_names, data=feed,
                      hf={"task": task, "pooling": pooling, "normalize": normalize})
    if not with_tokenizer:
        return convert(src, opts, data=feed, output=output)
    from onnxopt.conversion.text import attach_tokenizer

    result = attach_tokenizer(convert(src, opts, data=feed), src, texts)
    if output is not None:
        result.report["output"] = str(save_model(result.model, output))
    return result
