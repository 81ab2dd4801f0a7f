"""Convert PyTorch / Keras models to ONNX, prove numerical parity, stamp metadata, simplify."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnx
from onnx import ModelProto

from onnxopt.conversion.edits import (
    check_dynamic_batch,
    name_batch_dim,
    rename_inputs,
    rename_outputs,
    set_metadata,
    simplify,
)
from onnxopt.conversion.parity import (
    ParityError,
    ParityReport,
    as_numpy,
    check_parity,
    parity_message,
    seeded_inputs,
)
from onnxopt.core.errors import InvalidInputError, OnnxoptError, UnsupportedModelError
from onnxopt.core.errors import short_message as _short
from onnxopt.core.feeds import Feed
from onnxopt.core.model import graph_inputs, graph_outputs, save_model

log = logging.getLogger(__name__)

EXPORTERS = ("auto", "dynamo", "torchscript", "keras", "tf2onnx")
PARITY_BATCH = 3  # batch of the seeded parity inputs: neither 1 nor the export batch
MAX_DATA_SAMPLES = 256  # real --data samples used for parity
META_PREFIX = "onnxopt."




class ExportError(UnsupportedModelError):
    """Every exporter attempted failed on this model."""


@dataclass(frozen=True)
class ConvertOptions:
    """How to export and check a model; validated on creation."""

    opset: int = 17
    exporter: str = "auto"
    dynamic_batch: bool = True
    input_names: tuple[str, ...] | None = None
    output_names: tuple[str, ...] | None = None
    atol: float = 1e-4
    rtol: float = 1e-3
    simplify: bool = True
    seed: int = 0
    benchmark_runs: int = 30

    def __post_init__(self) -> None:
        if not 11 <= self.opset <= 23:
            raise InvalidInputError(f"--opset {self.opset}: choose an opset between 11 and 23 (17 is a safe default)")
        if self.exporter not in EXPORTERS:
            raise InvalidInputError(f"--exporter {self.exporter!r}: choose one of {', '.join(EXPORTERS)}")
        if not (self.atol >= 0 and self.rtol >= 0) or math.isnan(self.atol + self.rtol):
            raise InvalidInputError(f"--atol/--rtol must be >= 0; got {self.atol}, {self.rtol}")
        for kind, names in (("input", self.input_names), ("output", self.output_names)):
            if names is not None:
                if any(not n for n in names):
                    raise InvalidInputError(f"--{kind}-names: empty name; give comma-separated names like a,b")
                if len(set(names)) != len(names):
                    raise InvalidInputError(f"--{kind}-names: duplicate names in {','.join(names)}")
        if self.benchmark_runs < 1:
            raise InvalidInputError("benchmark_runs must be >= 1")




@dataclass(frozen=True)
class ConvertResult:
    """The converted model, its parity figures, the exporter used, and a JSON report."""

    model: ModelProto
    parity: ParityReport
    exporter: str
    framework: str
    report: dict[str, Any]


class Source(Protocol):
    """A loaded source model that can run itself and export itself to ONNX."""

    framework: str  # "torch" | "keras" | "tensorflow"
    framework_version: str
    exporters: tuple[str, ...]  # in order of preference for exporter="auto"

    def inputs(self) -> list[tuple[str, np.ndarray]]:
        """(default name, example array) of each input, in call order."""
        ...

    def output_names(self) -> list[str]:
        """Default names of the outputs."""
        ...

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Run the source model in inference mode on inputs given in call order."""
        ...

    def export(
        self,
        exporter: str,
        *,
        opset: int,
        dynamic_batch: bool,
        input_names: Sequence[str],
        output_names: Sequence[str],
        examples: Sequence[np.ndarray],
    ) -> ModelProto:
        """Export with the named exporter; raise ExportError with a short, actionable message."""
        ...




# ---------------------------------------------------------------- parity






# ---------------------------------------------------------------- graph edits


















# ---------------------------------------------------------------- the conversion


def convert(source: Source, options: ConvertOptions, *, data: Feed | None = None, output: str | Path | None = None) -> ConvertResult:
    """Export source to ONNX with each candidate exporter, check parity, simplify, pick one, save."""
    specs = source.inputs()
    in_names = list(options.input_names) if options.input_names else [s[0] for s in specs]
    if len(in_names) != len(specs):
        raise InvalidInputError(
            f"--input-names: the model takes {len(specs)} inputs, got {len(in_names)} names ({','.join(in_names)})"
        )
    out_names = list(options.output_names) if options.output_names else source.output_names()
    examples = [ex for _, ex in specs]
    feeds_arrays: list[list[np.ndarray]] = [
        seeded_inputs(examples, PARITY_BATCH if options.dynamic_batch else None, options.seed)
    ]
    if data is not None:
        feeds_arrays.append(_data_inputs(data, [n for n, _ in specs], in_names, options.dynamic_batch, examples))
    t0 = time.perf_counter()
    reference = []
    for arrays in feeds_arrays:
        try:
            ref = source.run(arrays)
        except OnnxoptError:
            raise
        except Exception as e:
            raise InvalidInputError(f"the {source.framework} model fails on inputs shaped "
                                    f"{[a.shape for a in arrays]}: {_short(e)}; check --input-shape") from e
        reference.append(ref)
    if not out_names or len(out_names) != len(reference[0]):
        if options.output_names:
            raise InvalidInputError(
                f"--output-names: the model returns {len(reference[0])} outputs, got {len(out_names)} names"
            )
        out_names = ["output"] if len(reference[0]) == 1 else [f"output_{i}" for i in range(len(reference[0]))]
    source_ms = (time.perf_counter() - t0) * 1000

    if options.exporter == "auto":
        exporters = list(source.exporters)
    elif options.exporter in source.exporters:
        exporters = [options.exporter]
    else:
        raise InvalidInputError(
            f"--exporter {options.exporter}: not available for a {source.framework} model; "
            f"choose one of auto, {', '.join(source.exporters)}"
        )

    attempts: list[dict[str, Any]] = []
    candidates: list[tuple[str, ModelProto, ParityReport]] = []
    for name in exporters:
        attempt: dict[str, Any] = {"exporter": name}
        attempts.append(attempt)
        t = time.perf_counter()
        try:
            model = source.export(
                name,
                opset=options.opset,
                dynamic_batch=options.dynamic_batch,
                input_names=in_names,
                output_names=out_names,
                examples=examples,
            )
            model = _normalize(model, in_names, out_names, options.dynamic_batch)
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

    if not candidates:
        raise _failure(source, attempts)
    chosen, reason, bench = _choose(candidates, feeds_arrays, in_names, options)
    if len(exporters) > 1:
        log.info("exporter %s chosen: %s", chosen[0], reason)
    name, model, parity = chosen
    for a in attempts:
        if not a.get("ok"):
            log.warning("exporter %s failed (%s); using %s", a["exporter"], a.get("error", "failed"), name)
    from onnxopt import __version__

    props = {
        META_PREFIX + "version": __version__,
        META_PREFIX + "source_framework": source.framework,
        META_PREFIX + "source_framework_version": source.framework_version,
        META_PREFIX + "exporter": name,
        META_PREFIX + "parity_max_abs": f"{parity.max_abs:.3g}",
        META_PREFIX + "parity_max_rel": f"{parity.max_rel:.3g}",
        META_PREFIX + "parity_atol": f"{parity.atol:g}",
        META_PREFIX + "parity_rtol": f"{parity.rtol:g}",
        META_PREFIX + "parity_samples": str(parity.samples),
        META_PREFIX + "simplified": str(options.simplify).lower(),
    }
    model = set_metadata(model, props)
    report: dict[str, Any] = {
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
    if output is not None:
        out = save_model(model, output)
        report["output"] = str(out)
    json.dumps(report)  # the report must stay JSON-serializable
    return ConvertResult(model=model, parity=parity, exporter=name, framework=source.framework, report=report)


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


def _data_inputs(
    data: Feed,
    src_names: Sequence[str],
    in_names: Sequence[str],
    dynamic_batch: bool,
    examples: Sequence[np.ndarray],
) -> list[np.ndarray]:
    arrays = []
    for src_name, name, ex in zip(src_names, in_names, examples):
        dtype = ex.dtype
        key = name if name in data else src_name if src_name in data else None
        if key is None and len(src_names) == 1:
            cands = [k for k in data if k not in ("labels", "y", "label", "targets")]
            key = cands[0] if len(cands) == 1 else ("input" if "input" in data else None)
        if key is None:
            raise InvalidInputError(f"--data has no array for input {name!r} (has: {', '.join(sorted(data))})")
        arr = np.asarray(data[key])
        if arr.dtype != dtype and arr.dtype.kind == np.dtype(dtype).kind:
            arr = arr.astype(dtype)
        if arr.dtype != dtype:
            raise InvalidInputError(f"--data {key!r}: dtype {arr.dtype}, the model expects {np.dtype(dtype)}")
        if arr.shape[1:] != ex.shape[1:]:
            raise InvalidInputError(
                f"--data {key!r}: samples shaped {arr.shape[1:]}, the model expects {ex.shape[1:]}"
            )
        arrays.append(arr[: MAX_DATA_SAMPLES if dynamic_batch else ex.shape[0]])
    if not dynamic_batch and arrays and arrays[0].shape[0] != examples[0].shape[0]:
        raise InvalidInputError("--data with --static-batch needs at least one full batch of samples")
    return arrays


def _only_model_inputs(model: ModelProto, feed: Feed) -> Feed:
    names = {s.name for s in graph_inputs(model)}
    missing = names - set(feed)
    if missing:
        raise ExportError(f"the exported model has unexpected inputs {sorted(missing)}")
    return {k: v for k, v in feed.items() if k in names}


def _normalize(model: ModelProto, in_names: Sequence[str], out_names: Sequence[str], dynamic: bool) -> ModelProto:
    ins = [s.name for s in graph_inputs(model)]
    if len(ins) == len(in_names):
        rename_inputs(model, in_names)
    if len(model.graph.output) == len(out_names):
        rename_outputs(model, out_names)
    if dynamic:
        name_batch_dim(model)
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




def _failure(source: Source, attempts: list[dict[str, Any]]) -> OnnxoptError:
    if len(attempts) == 1:
        a = attempts[0]
        msg = f"{a['exporter']} export: {a.get('error', 'failed')}"
    else:
        msg = "; ".join(f"{a['exporter']}: {a.get('error', 'failed')}" for a in attempts)
        msg = f"no exporter produced a matching model ({msg})"
    parity_failed = all("parity check failed" in str(a.get("error", "")) for a in attempts)
    return ParityError(msg) if parity_failed else ExportError(msg)


def _choose(
    candidates: list[tuple[str, ModelProto, ParityReport]],
    feeds_arrays: list[list[np.ndarray]],
    in_names: Sequence[str],
    options: ConvertOptions,
) -> tuple[tuple[str, ModelProto, ParityReport], str, dict[str, Any] | None]:
    if len(candidates) == 1:
        return candidates[0], "the only exporter that passed", None
    try:
        from onnxopt.measure.benchmark import BenchConfig, benchmark
        from onnxopt.measure.stats import latency_ratio
    except ImportError:
        return candidates[0], "first exporter that passed (benchmark unavailable)", None
    try:
        cfg = BenchConfig(runs=options.benchmark_runs, warmup=3, batch=1, seed=options.seed)
        results = benchmark([c[1] for c in candidates], cfg, names=[c[0] for c in candidates])
        ref, cand = results[0], results[1]
        ratio = latency_ratio(cand, ref)
    except Exception as e:  # benchmarking is advisory: never lose a good export to it
        log.warning("benchmark of the exporters failed, keeping %s: %s", candidates[0][0], _short(e))
        return candidates[0], f"first exporter that passed (benchmark failed: {_short(e)})", None
    bench: dict[str, Any] = {
        r.name: {"p50_ms": round(r.stats.p50_ms, 4), "mean_ms": round(r.stats.mean_ms, 4)} for r in results
    }
    bench["ratio"] = {"candidate": cand.name, "reference": ref.name, "ratio": round(ratio.ratio, 4),
                      "low": round(ratio.low, 4), "high": round(ratio.high, 4), "significant": ratio.significant}
    if ratio.significant and ratio.ratio < 1.0:
        reason = f"{cand.name} is {1 / ratio.ratio:.2f}x as fast as {ref.name} (p50, 95% CI {ratio.low:.3f}-{ratio.high:.3f})"
        return candidates[1], reason, bench
    if ratio.significant:
        return candidates[0], f"{ref.name} is {ratio.ratio:.2f}x as fast as {cand.name}", bench
    # A tie on latency: the smaller file wins (exporters differ in how they store weights).
    sizes = [c[1].ByteSize() for c in candidates[:2]]
    pick = 1 if sizes[1] < 0.98 * sizes[0] else 0
    reason = (
        f"no significant latency difference (ratio {ratio.ratio:.3f}); kept {candidates[pick][0]}"
        + (f", the smaller file ({sizes[1] / 2**20:.1f} vs {sizes[0] / 2**20:.1f} MiB)" if pick else "")
    )
    return candidates[pick], reason, bench


# ---------------------------------------------------------------- public entry points


def _options(
    opset: int, exporter: str, dynamic_batch: bool, input_names: Sequence[str] | None,
    output_names: Sequence[str] | None, atol: float, rtol: float, simplify: bool, seed: int,
) -> ConvertOptions:
    return ConvertOptions(
        opset=opset, exporter=exporter, dynamic_batch=dynamic_batch,
        input_names=tuple(input_names) if input_names else None,
        output_names=tuple(output_names) if output_names else None,
        atol=atol, rtol=rtol, simplify=simplify, seed=seed,
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
) -> ConvertResult:
    """Export a torch nn.Module (or TorchScript / ExportedProgram) to ONNX with a parity check."""
    from onnxopt.frameworks.torch_export import TorchSource

    opts = _options(opset, exporter, dynamic_batch, input_names, output_names, atol, rtol, simplify, seed)
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
) -> ConvertResult:
    """Export a Keras 3 model to ONNX (via model.export) with a parity check."""
    from onnxopt.frameworks.keras_export import KerasSource

    opts = _options(opset, exporter, dynamic_batch, input_names, output_names, atol, rtol, simplify, seed)
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
) -> ConvertResult:
    """Load a model from a file, folder or `file.py:factory` / `pkg.mod:factory` and convert it."""
    from onnxopt.conversion.sources import load_source

    opts = ConvertOptions(
        opset=opset, exporter=exporter, dynamic_batch=dynamic_batch,
        input_names=tuple(input_names) if input_names else None,
        output_names=tuple(output_names) if output_names else None,
        atol=atol, rtol=rtol, simplify=simplify, seed=seed,
    )
    if output is not None and os.path.exists(source) and Path(output).resolve() == Path(source).resolve():
        raise InvalidInputError(f"{output}: refusing to overwrite the source model; choose another output path")
    feed = dict(data) if data is not None else None
    src = load_source(source, framework=framework, weights=weights, input_shapes=input_shapes,
                      input_dtypes=input_dtypes, input_names=opts.input_names, data=feed)
    return convert(src, opts, data=feed, output=output)
