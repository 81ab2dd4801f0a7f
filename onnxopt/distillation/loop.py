"""The one distillation training loop, shared by the PyTorch and Keras back ends.

The loop owns what does not depend on the framework: checking and casting the data, caching
the teacher's targets, the epochs and batches, the per-step learning rate, when to stop
(`StopRule`: to convergence or a fixed budget, see onnxopt.distillation.core for the rules
and the loss), best-weights tracking and the history. A framework plugs in through a
`Framework` (frameworks/torch_distill.py, frameworks/keras_distill.py): a teacher cache, a
seeding function, a `Tap` on the student and a `Backend` that runs one optimizer step on a
batch of sample indices and evaluates the student on the validation split.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from onnx import ModelProto

from onnxopt.core.errors import InvalidInputError
from onnxopt.core.errors import short_message as _short
from onnxopt.distillation.core import (
    Data,
    DistillConfig,
    DistillHistory,
    EpochLog,
    ProgressFn,
    StopRule,
    check_classes,
    check_data,
)
from onnxopt.distillation.teacher import TeacherOutputs, as_logits, teacher_outputs

log = logging.getLogger(__name__)

# (teacher, training inputs, teacher hint layer or None) -> (logits, hint features, softmax handling)
TeacherCache = Callable[[Any, np.ndarray, str | None], tuple[np.ndarray, np.ndarray | None, str]]
# (batch of inputs) -> (float32 logits, float32 hint features or None) of a framework teacher
TeacherRun = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]]


class Backend(Protocol):
    """What the loop needs from a framework: one step, one evaluation, the student's weights."""

    def start_epoch(self) -> Any:
        """Put the trained models in training mode; return this epoch's sample order (sliceable)."""
        ...

    def train_step(self, idx: Any, lr: float) -> float:
        """One optimizer step at learning rate lr on the samples idx; the batch's mean loss."""
        ...

    def evaluate(self) -> tuple[float, float]:
        """(accuracy percent, mean cross-entropy) of the student on the validation split."""
        ...

    def get_weights(self) -> Any:
        """A copy of the student's weights (kept while they are the best so far)."""
        ...

    def set_weights(self, weights: Any) -> None:
        """Restore weights from get_weights."""
        ...


class Tap(Protocol):
    """A framework's view of a model that yields its logits (bypassing a final softmax) and hint."""

    softmax_handling: str  # "none" or how a final softmax is bypassed

    def close(self) -> None:
        """Undo what tapping did to the model."""
        ...


@dataclass(frozen=True)
class TrainingSet:
    """The checked float32 splits and the cached teacher targets a back end trains on."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    teacher_logits: np.ndarray | None  # None: labels only
    teacher_features: np.ndarray | None  # the teacher's hint layer output, when a hint is used
    teacher_handling: str  # how a teacher softmax was handled ("none" when there was none)
    mode: str  # "distill" | "labels-only"
    student_hint: str | None  # the student layer matched to teacher_features


def prepare(
    teacher: Any,
    train_data: Data,
    val_data: Data,
    config: DistillConfig,
    *,
    teacher_logits: np.ndarray | TeacherOutputs | None,
    cache: TeacherCache,
    seed: Callable[[int], None],
) -> TrainingSet:
    """Check the splits, seed the framework, then cache the teacher's logits (and hint features).

    Labels only when there is no teacher (nor precomputed teacher_logits), or when alpha is 0
    and no hint is asked for. teacher_logits skip the teacher pass unless a hint needs features
    they lack (TeacherOutputs from teacher_targets carry the features and the softmax handling).
    """
    check_data(train_data, val_data)
    x_tr, y_tr = (np.asarray(a) for a in train_data)
    x_val, y_val = (np.asarray(a) for a in val_data)
    x_tr = x_tr.astype(np.float32, copy=False)
    x_val = x_val.astype(np.float32, copy=False)
    labels_only = (teacher is None and teacher_logits is None) or (
        config.alpha == 0 and config.hint is None
    )
    seed(config.seed)
    t_logits: np.ndarray | None = None
    t_feats: np.ndarray | None = None
    handling = "none"
    t_hint = config.hint[0] if config.hint and not labels_only else None
    if not labels_only:
        if isinstance(teacher_logits, TeacherOutputs) and (t_hint is None or teacher_logits.features is not None):
            t_logits, handling = teacher_logits.logits, teacher_logits.softmax_handling
            t_feats = teacher_logits.features if t_hint else None
        elif teacher_logits is not None and not isinstance(teacher_logits, TeacherOutputs) and t_hint is None:
            t_logits = np.asarray(teacher_logits, np.float32)
        else:
            res = teacher_targets(teacher, x_tr, t_hint, cache)
            t_logits, t_feats, handling = res.logits, res.features, res.softmax_handling
        if len(t_logits) != len(x_tr):
            raise InvalidInputError(f"{len(t_logits)} teacher logits for {len(x_tr)} training samples")
    return TrainingSet(
        x_train=x_tr,
        y_train=y_tr,
        x_val=x_val,
        y_val=y_val,
        teacher_logits=t_logits,
        teacher_features=t_feats,
        teacher_handling=handling,
        mode="labels-only" if labels_only else "distill",
        student_hint=config.hint[1] if t_hint and config.hint else None,
    )


def teacher_targets(teacher: Any, x: np.ndarray, hint: str | None, cache: TeacherCache) -> TeacherOutputs:
    """The teacher's logits (and hint features) for every sample of x, computed once.

    An ONNX teacher (ModelProto or path) runs in onnxruntime; a framework teacher through cache.
    """
    if isinstance(teacher, (ModelProto, str, os.PathLike)):
        return teacher_outputs(teacher, np.asarray(x, np.float32), hint=hint)
    logits, feats, handling = cache(teacher, np.asarray(x, np.float32), hint)
    return TeacherOutputs(logits, feats, handling)


def batched_targets(
    run: TeacherRun, x: np.ndarray, hint: str | None, batch_size: int, softmax_handling: str
) -> tuple[np.ndarray, np.ndarray | None, str]:
    """(logits, hint features, softmax handling) of a framework teacher run over x batch by batch.

    A failure other than InvalidInputError is reported as data that does not fit the teacher.
    """
    logits: list[np.ndarray] = []
    feats: list[Any] = []
    try:
        for start in range(0, len(x), batch_size):
            lg, ft = run(x[start : start + batch_size])
            logits.append(lg)
            if hint:
                feats.append(ft)
    except InvalidInputError:
        raise
    except Exception as e:
        raise InvalidInputError(f"data of shape {tuple(x.shape)} does not fit the teacher: {_short(e)}") from e
    out, handling = as_logits(np.concatenate(logits), softmax_handling)
    return out, (np.concatenate(feats) if hint else None), handling


def probe_student(run: Callable[[], tuple[Any, Any]], data: TrainingSet) -> Any:
    """Check the student's logits on two samples (run() gives them and its hint feature); the hint feature."""
    try:
        s_out, s_feat = run()
    except Exception as e:
        raise InvalidInputError(
            f"data of shape {tuple(data.x_train.shape)} does not fit the student: {_short(e)}"
        ) from e
    _check_student_logits(tuple(s_out.shape), data)
    return s_feat


def _check_student_logits(shape: tuple[int, ...], data: TrainingSet) -> None:
    """Raise InvalidInputError unless the student returns [batch, classes] logits that fit the labels."""
    if len(shape) != 2:
        raise InvalidInputError(f"student output must be [batch, classes] logits; got shape {shape}")
    t_classes = None if data.teacher_logits is None else int(data.teacher_logits.shape[1])
    check_classes(t_classes, int(shape[1]), np.concatenate([data.y_train, data.y_val]))


def describe_handling(teacher: str, student: str) -> str:
    """The history's softmax_handling: what was done about a teacher's and a student's softmax."""
    parts = []
    if teacher != "none":
        parts.append(f"teacher: {teacher}")
    if student != "none":
        parts.append(f"student: {student} (the exported student keeps its softmax)")
    return "; ".join(parts) or "none"


def run_epochs(
    backend: Backend,
    data: TrainingSet,
    config: DistillConfig,
    *,
    student_softmax: str = "none",
    progress: ProgressFn | None = None,
) -> DistillHistory:
    """Train until the StopRule says stop, restore the best weights, return the history.

    student_softmax: how the back end handled a final softmax of the student (for the history).
    """
    t0 = time.perf_counter()
    n = len(data.x_train)
    limit = config.epoch_limit
    steps_per_epoch = (n + config.batch_size - 1) // config.batch_size
    total = steps_per_epoch * limit
    warm = steps_per_epoch * config.warmup_epochs
    rule = StopRule(config)
    best = backend.get_weights()
    losses: list[float] = []
    accs: list[float] = []
    vlosses: list[float] = []
    step = 0
    reason = ""
    lr = config.peak_lr
    for epoch in range(limit):
        order = backend.start_epoch()
        total_loss = 0.0
        for i in range(0, n, config.batch_size):
            idx = order[i : i + config.batch_size]
            lr = rule.lr(step, total, warm)
            total_loss += backend.train_step(idx, lr) * len(idx)
            step += 1
        acc, vloss = backend.evaluate()
        losses.append(total_loss / n)
        accs.append(acc)
        vlosses.append(vloss)
        if rule.update(epoch, acc, vloss):
            best = backend.get_weights()
        if progress is not None:
            progress(EpochLog(epoch + 1, limit, losses[-1], acc, vloss, lr, data.mode))
        stop = rule.decide(epoch)
        if stop is not None:
            reason = stop
            break
    log.info("%s: stopped after epoch %d: %s", data.mode, len(losses), reason)
    backend.set_weights(best)
    return DistillHistory(
        train_loss=tuple(losses),
        val_accuracy=tuple(accs),
        best_epoch=rule.best_epoch,
        stopped_early=len(losses) < limit,
        val_loss=tuple(vlosses),
        softmax_handling=describe_handling(data.teacher_handling, student_softmax),
        mode=data.mode,
        stop_reason=reason,
        lr_cut_epochs=tuple(rule.cut_epochs),
        seconds=time.perf_counter() - t0,
    )


@dataclass(frozen=True)
class Framework:
    """How a framework plugs into the loop."""

    cache: TeacherCache  # the targets of a framework teacher (an ONNX one is run by prepare)
    seed: Callable[[int], None]  # seed the framework's generators
    tap: Callable[[Any, str | None, str], Tap]  # (model, hint layer or None, who) -> Tap
    backend: Callable[[Any, Any, TrainingSet, DistillConfig], Backend]  # (student, tap, data, config)


def train(
    framework: Framework,
    teacher: Any,
    student: Any,
    train_data: Data,
    val_data: Data,
    config: DistillConfig,
    *,
    teacher_logits: np.ndarray | TeacherOutputs | None,
    progress: ProgressFn | None,
) -> DistillHistory:
    """Prepare the data and the teacher's targets, tap the student, run the epochs; the history."""
    data = prepare(teacher, train_data, val_data, config, teacher_logits=teacher_logits,
                   cache=framework.cache, seed=framework.seed)
    tap = framework.tap(student, data.student_hint, "student")
    try:
        backend = framework.backend(student, tap, data, config)
        return run_epochs(backend, data, config, student_softmax=tap.softmax_handling, progress=progress)
    finally:
        tap.close()
