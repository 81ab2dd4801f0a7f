"""Knowledge distillation end to end: tune, train to convergence, export, hand back the better student.

distill_model, in order:

1. the teacher's logits on the training split, computed once (an .onnx teacher in onnxruntime);
2. the labels-only baseline: a copy of the initial student trained on labels alone
   (alpha = 0), to convergence by default;
3. tuning (onnxopt.distillation.tune): a short proxy run per (T, alpha) of a small grid, from
   the same initial weights, scored on the validation split, as far as the budget allows;
4. the student distilled with the best (T, alpha) (or the config's when tuning is off or
   skipped), to convergence by default;
5. both students exported to ONNX (parity-checked) and measured in onnxruntime: the labels-only
   student is handed back instead of the distilled one when it is more accurate on the
   validation split (unless keep_distilled); the test split, when given, is only reported.

The loss, Hinton et al. (2015), with student logits s, teacher logits t, labels y:
alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(y, softmax(s)).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from onnx import ModelProto

from onnxopt.core.errors import InvalidInputError
from onnxopt.core.feeds import load_labelled_npz
from onnxopt.core.model import graph_inputs, initializer_stats, load_model, save_model
from onnxopt.distillation.core import (
    Data,
    DistillConfig,
    DistillHistory,
    EpochLog,
    ProgressFn,
    check_classes,
    check_data,
)
from onnxopt.distillation.loop import teacher_targets
from onnxopt.distillation.tune import TuneConfig, TuneResult, plan, proxy_epochs_for, tune_settings

log = logging.getLogger(__name__)

__all__ = [
    "DistillConfig",
    "DistillHistory",
    "DistillResult",
    "EpochLog",
    "ModelRow",
    "TuneConfig",
    "TuneResult",
    "distill_model",
    "distill_sources",
    "framework_of",
]

StageFn = Callable[[str], None]


@dataclass(frozen=True)
class ModelRow:
    """One line of the comparison: accuracy (percent), size and onnxruntime latency of a model."""

    name: str
    accuracy: float  # on the test split when one is given, else on the validation split
    params: int
    file_size: int
    latency_p50_ms: float | None = None
    latency_mean_ms: float | None = None
    latency_ratio: float | None = None  # latency / teacher latency (median ratio, same rounds)
    ratio_ci: tuple[float, float] | None = None
    val_accuracy: float | None = None  # on the validation split (the one choices are made on)
    test_accuracy: float | None = None  # on the test split, only when one is given

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict."""
        return {
            "name": self.name,
            "accuracy": self.accuracy,
            "val_accuracy": self.val_accuracy,
            "test_accuracy": self.test_accuracy,
            "params": self.params,
            "file_size": self.file_size,
            "latency_p50_ms": self.latency_p50_ms,
            "latency_mean_ms": self.latency_mean_ms,
            "latency_ratio": self.latency_ratio,
            "ratio_ci": list(self.ratio_ci) if self.ratio_ci else None,
        }


@dataclass(frozen=True)
class DistillResult:
    """The handed-back student, the training histories, the tuning trials and the comparison.

    model is the student written to the output: the distilled one, or the labels-only one when
    it is more accurate on the validation split (written says which; keep_distilled forces the
    distilled one). distilled_model is always the distilled student.
    """

    model: ModelProto
    history: DistillHistory  # of the distilled student
    rows: tuple[ModelRow, ...]  # teacher, "student" (distilled), "labels-only" (if trained)
    framework: str
    parity: Any  # onnxopt.convert.ParityReport of the written student
    baseline_model: ModelProto | None = None
    baseline_history: DistillHistory | None = None
    teacher_model: ModelProto | None = None
    config: DistillConfig = field(default_factory=DistillConfig)  # the distilled run's (tuned T, alpha)
    notes: tuple[str, ...] = ()
    written: str = "distilled"  # "distilled" | "labels-only"
    distilled_model: ModelProto | None = None
    tuning: TuneResult | None = None
    verdict: str = ""  # one line: which student was handed back and why
    seconds: float = 0.0  # wall-clock time of the whole distillation

    def row(self, name: str) -> ModelRow:
        """The row named teacher / student / labels-only."""
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable report."""
        return {
            "framework": self.framework,
            "config": self.config.to_dict(),
            "written": self.written,
            "verdict": self.verdict,
            "tuning": self.tuning.to_dict() if self.tuning else None,
            "seconds": self.seconds,
            "rows": [r.to_dict() for r in self.rows],
            "history": self.history.to_dict(),
            "baseline_history": self.baseline_history.to_dict() if self.baseline_history else None,
            "parity": self.parity.to_dict() if hasattr(self.parity, "to_dict") else None,
            "notes": list(self.notes),
        }


def framework_of(model: Any) -> str:
    """'onnx', 'torch' or 'keras' for a model object or path."""
    if isinstance(model, ModelProto) or (isinstance(model, (str, os.PathLike)) and str(model).endswith(".onnx")):
        return "onnx"
    for cls in type(model).__mro__:
        root = cls.__module__.split(".")[0]
        if root == "torch":
            return "torch"
        if root in ("keras", "tf_keras"):
            return "keras"
    raise InvalidInputError(
        f"cannot distill a {type(model).__name__}: give a torch.nn.Module, a keras.Model or an .onnx teacher"
    )


def _backend(framework: str) -> Any:
    if framework == "torch":
        from onnxopt.frameworks import torch_distill

        return torch_distill
    from onnxopt.frameworks import keras_distill

    return keras_distill


def export_student(model: Any, framework: str, x: np.ndarray, *, input_name: str = "input",
                   output_name: str = "logits", output: str | Path | None = None) -> Any:
    """Export a trained model with the conversion path (parity-checked on real samples).

    PyTorch models try the TorchScript exporter first (measured: 0.2 s vs 13 s for dynamo on
    the digits student, same parity), then the convert default.
    """
    from onnxopt.conversion.api import from_keras, from_torch
    from onnxopt.core.errors import UnsupportedModelError

    example = np.ascontiguousarray(x[:1])
    data = {input_name: np.ascontiguousarray(x[:256])}
    if framework == "torch":
        try:
            return from_torch(model, (example,), input_names=[input_name], output_names=[output_name],
                              data=data, output=output, exporter="torchscript")
        except UnsupportedModelError as e:
            log.info("TorchScript export failed (%s); trying the default exporter", e)
            return from_torch(model, (example,), input_names=[input_name], output_names=[output_name],
                              data=data, output=output)
    return from_keras(model, example_inputs=(example,), input_names=[input_name],
                      output_names=[output_name], data=data, output=output)


def _onnx_accuracy(model: ModelProto, x: np.ndarray, y: np.ndarray) -> float:
    from onnxopt.measure.fidelity import accuracy

    return accuracy(model, {graph_inputs(model)[0].name: x}, y)


def _check_teacher_onnx(teacher: ModelProto, x: np.ndarray) -> None:
    specs = graph_inputs(teacher)
    if len(specs) != 1:
        raise InvalidInputError(f"distillation needs a single-input teacher; this one has {len(specs)}")


def _teacher_as_onnx(
    teacher: Any, fw: str, x_tr: np.ndarray, x_val: np.ndarray, teacher_onnx: ModelProto | None,
    say: StageFn, notes: list[str],
) -> tuple[ModelProto, Any]:
    """(the teacher as ONNX, the teacher to train the fw student from); appends to notes.

    The ONNX teacher gives the teacher's accuracy/latency row, and the logits when the teacher
    comes from the other framework; a teacher of the student's framework is used natively.
    """
    tfw = framework_of(teacher)
    if tfw == "onnx":
        proto = teacher if isinstance(teacher, ModelProto) else load_model(teacher)
        _check_teacher_onnx(proto, x_tr)
        return proto, proto
    if teacher_onnx is None:
        say("exporting the teacher to ONNX")
        teacher_onnx = export_student(teacher, tfw, x_val, output_name="logits").model
    if tfw != fw:
        notes.append(f"{tfw} teacher used through its ONNX export for the {fw} student")
    return teacher_onnx, (teacher if tfw == fw else teacher_onnx)


def distill_model(
    teacher: Any,
    student: Any,
    train: Data,
    val: Data,
    config: DistillConfig | None = None,
    *,
    baseline: bool = True,
    output: str | Path | None = None,
    baseline_output: str | Path | None = None,
    bench: Any = None,
    benchmark_latency: bool = True,
    progress: ProgressFn | None = None,
    stage: StageFn | None = None,
    input_path: str | Path | None = None,
    test: Data | None = None,
    teacher_onnx: ModelProto | None = None,
    tune: TuneConfig | bool | None = None,
    keep_distilled: bool = False,
) -> DistillResult:
    """Distill student from teacher, train the same student on labels alone, export both, hand back the better.

    teacher: torch.nn.Module, keras.Model, or .onnx path / ModelProto (logits computed once in
    onnxruntime; works for any student framework). A teacher of the other framework is
    exported to ONNX first. student: torch.nn.Module or keras.Model, distilled in place (the
    baseline and the tuning runs train copies of its initial weights).
    config: training length (to convergence by default), T and alpha (used when tuning is off
    or skipped), seed. tune: a TuneConfig, True/None (the default grid and budget) or False.
    keep_distilled: write the distilled student even when labels-only is better on val.
    Accuracies are measured in onnxruntime on val (choices) and on test (report only).
    teacher_onnx: the teacher's ONNX export when already at hand (skips exporting it again).
    """
    started = time.monotonic()
    say = stage or (lambda _msg: None)
    config = config or DistillConfig()
    tune_cfg = tune if isinstance(tune, TuneConfig) else TuneConfig(enabled=tune is not False)
    check_data(train, val)
    fw = framework_of(student)
    if fw == "onnx":
        raise InvalidInputError("the student must be a PyTorch or Keras model to train, not an .onnx file")
    backend = _backend(fw)
    x_tr, x_val = np.asarray(train[0], np.float32), np.asarray(val[0], np.float32)
    notes: list[str] = []
    teacher_onnx, train_teacher = _teacher_as_onnx(teacher, fw, x_tr, x_val, teacher_onnx, say, notes)
    in_name = graph_inputs(teacher_onnx)[0].name
    initial = backend.fresh_copy(student)  # every other run starts from these weights
    say("computing the teacher's logits")
    targets = teacher_targets(train_teacher, x_tr, config.hint[0] if config.hint else None, backend.teacher_cache)
    _check_student_classes(backend, initial, x_tr, targets.logits, np.asarray(train[1]))

    def run(model: Any, cfg: DistillConfig, prog: ProgressFn | None = None) -> tuple[Any, DistillHistory]:
        return backend.distill(train_teacher, model, train, val, cfg, progress=prog, teacher_logits=targets)

    base_student = base_hist = None
    if baseline:
        say("training the labels-only baseline")
        base_student, base_hist = backend.distill(None, backend.fresh_copy(initial), train, val,
                                                  config.labels_only(), progress=progress)
    tuning = None
    if tune_cfg.enabled:
        tuning = _tune(lambda cfg: run(backend.fresh_copy(initial), cfg)[1], config, tune_cfg, base_hist,
                       started, say)
        if tuning.best is not None:
            config = replace(config, temperature=tuning.best[0], alpha=tuning.best[1])
    say(f"distilling (T {config.temperature:g}, alpha {config.alpha:g})")
    student, hist = run(student, config, progress)
    if hist.softmax_handling != "none":
        notes.append(f"softmax output: {hist.softmax_handling}")
    out_name = "probabilities" if "student:" in hist.softmax_handling else "logits"
    say("exporting the students")
    conv = export_student(student, fw, x_val, input_name=in_name, output_name=out_name)
    base_conv = None
    if base_student is not None:
        base_conv = export_student(base_student, fw, x_val, input_name=in_name, output_name=out_name)
    say("measuring")
    models = [("teacher", teacher_onnx), ("student", conv.model)]
    if base_conv is not None:
        models.append(("labels-only", base_conv.model))
    rows = _measure(models, val, test, bench if benchmark_latency else False)
    written, verdict = _choose(rows, keep_distilled)
    chosen = base_conv if written == "labels-only" and base_conv is not None else conv
    if output is not None:
        save_model(chosen.model, output, input_path=input_path)
    if baseline_output is not None and base_conv is not None:
        save_model(base_conv.model, baseline_output, input_path=input_path)
    return DistillResult(
        model=chosen.model,
        history=hist,
        rows=tuple(rows),
        framework=fw,
        parity=chosen.parity,
        baseline_model=base_conv.model if base_conv is not None else None,
        baseline_history=base_hist,
        teacher_model=teacher_onnx,
        config=config,
        notes=tuple(notes),
        written=written,
        distilled_model=conv.model,
        tuning=tuning,
        verdict=verdict,
        seconds=time.monotonic() - started,
    )


def _check_student_classes(backend: Any, student: Any, x: np.ndarray, logits: np.ndarray, labels: np.ndarray) -> None:
    """Teacher and student must predict as many classes (checked before any training).

    A student that does not even run on x is left to the training run, which says why.
    """
    try:
        out = backend.predict(backend.fresh_copy(student), x[:2])
    except Exception as e:
        log.debug("student probe failed (the training run reports it): %s", e)
        return
    if np.ndim(out) == 2:
        check_classes(int(logits.shape[1]), int(np.shape(out)[1]), labels)


def _tune(
    run: Callable[[DistillConfig], DistillHistory], config: DistillConfig, tune: TuneConfig,
    base_hist: DistillHistory | None, started: float, say: StageFn,
) -> TuneResult:
    """Grid-search (T, alpha) within the budget; the per-epoch cost comes from the baseline."""
    ref = base_hist.epochs_run if base_hist else None
    proxy = proxy_epochs_for(tune, ref, config)
    final = ref if ref is not None else config.epoch_limit
    spe = base_hist.seconds / base_hist.epochs_run if base_hist and base_hist.epochs_run else None
    if spe is not None:
        why = plan(tune, seconds_per_epoch=spe, proxy_epochs=proxy, final_epochs=final,
                   elapsed=time.monotonic() - started)
        if why is not None:
            log.info("tuning skipped: %s", why)
            return TuneResult((), None, proxy, skipped=why)
    say(f"tuning T and alpha: {len(tune.grid)} settings x {proxy} proxy epochs")
    return tune_settings(run, config, tune, proxy_epochs=proxy, seconds_per_epoch=spe, final_epochs=final,
                         started=started, on_trial=lambda t: say(
                             f"  T {t.temperature:g}, alpha {t.alpha:g}: {t.val_accuracy:.2f}% on validation"))


def _choose(rows: list[ModelRow], keep_distilled: bool) -> tuple[str, str]:
    """(which student to hand back, one line saying why) from the validation accuracies."""
    by = {r.name: r for r in rows}
    if "labels-only" not in by:
        return "distilled", "no labels-only baseline trained: wrote the distilled student"
    d, b = by["student"].val_accuracy or 0.0, by["labels-only"].val_accuracy or 0.0
    if b <= d:
        return "distilled", f"the distilled student is at least as accurate as labels-only on validation ({d:.2f}% vs {b:.2f}%)"
    if keep_distilled:
        return "distilled", (f"labels-only beats the distilled student on validation ({b:.2f}% vs {d:.2f}%); "
                             "kept the distilled one (--keep-distilled)")
    return "labels-only", (f"labels-only beats the distilled student on validation ({b:.2f}% vs {d:.2f}%): "
                           "wrote the labels-only student (--keep-distilled writes the distilled one)")


def _measure(models: list[tuple[str, ModelProto]], val: Data, test: Data | None, bench: Any) -> list[ModelRow]:
    """Accuracy (val, and test if given), parameters, size and (unless bench is False) latency of each model."""
    x_val, y_val = np.asarray(val[0], np.float32), np.asarray(val[1])
    rows = []
    for name, m in models:
        params, _ = initializer_stats(m)
        v = _onnx_accuracy(m, x_val, y_val)
        t = _onnx_accuracy(m, np.asarray(test[0], np.float32), np.asarray(test[1])) if test is not None else None
        rows.append(ModelRow(name, v if t is None else t, params, m.ByteSize(), val_accuracy=v, test_accuracy=t))
    if bench is False:
        return rows
    from onnxopt.measure.benchmark import BenchConfig, benchmark
    from onnxopt.measure.stats import latency_ratio

    cfg = bench if bench is not None else BenchConfig(runs=200, warmup=20)
    results = benchmark([m for _, m in models], cfg, names=[n for n, _ in models])
    ref = results[0]
    out = []
    for row, res in zip(rows, results):
        ci = latency_ratio(res, ref) if res is not ref else None
        out.append(replace(
            row,
            latency_p50_ms=res.stats.p50_ms,
            latency_mean_ms=res.stats.mean_ms,
            latency_ratio=ci.ratio if ci else 1.0,
            ratio_ci=(ci.low, ci.high) if ci else None,
        ))
    return out


def distill_sources(
    teacher: str,
    student: str,
    data: str | Path,
    val: str | Path,
    config: DistillConfig | None = None,
    *,
    framework: str = "auto",
    teacher_weights: str | None = None,
    student_weights: str | None = None,
    input_key: str | None = None,
    labels_key: str | None = None,
    **kwargs: Any,
) -> DistillResult:
    """distill_model for CLI-style sources: .onnx files, model files or `file.py:factory` specs."""
    config = config or DistillConfig()
    train = load_labelled_npz(data, input_key=input_key, labels_key=labels_key)
    val_data = load_labelled_npz(val, input_key=input_key, labels_key=labels_key)
    check_data(train, val_data)
    examples = {"input": train[0][:1]}
    if Path(teacher).suffix == ".onnx":
        t: Any = load_model(teacher)
    else:
        t = _load(teacher, "auto", teacher_weights, examples)
    s = _load(student, framework, student_weights, examples)
    return distill_model(t, s, train, val_data, config, input_path=teacher if isinstance(t, ModelProto) else None,
                         **kwargs)


def _load(spec: str, framework: str, weights: str | None, data: dict[str, np.ndarray]) -> Any:
    """The native model object behind a model file or `file.py:factory`."""
    from onnxopt.conversion.sources import load_source

    if Path(spec).suffix == ".onnx":
        raise InvalidInputError(
            f"{spec}: an ONNX student cannot be trained; give a PyTorch/Keras model or file.py:factory"
        )
    src = load_source(spec, framework=framework, weights=weights, data=data)
    model = getattr(src, "module", None)
    if model is None:
        model = getattr(src, "model", None)
    if model is None:
        raise InvalidInputError(f"{spec}: cannot be trained here (a SavedModel has no trainable Keras model)")
    return model
