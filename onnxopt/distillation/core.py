"""Framework-independent pieces of distillation: config, history, data checks, early stopping."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from onnxopt.core.errors import InvalidInputError

Data = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class DistillConfig:
    """Hyper-parameters of Hinton distillation (and of the labels-only baseline)."""

    temperature: float = 4.0
    alpha: float = 0.7
    epochs: int = 40
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    patience: int = 8
    seed: int = 0
    hint: tuple[str, str] | None = None  # (teacher layer/tensor, student layer)
    hint_weight: float = 1.0
    warmup_epochs: int = 0
    threads: int = 0  # torch intra-op threads while training (0: leave the framework's setting)

    def __post_init__(self) -> None:
        if not (isinstance(self.temperature, (int, float)) and self.temperature > 0 and math.isfinite(self.temperature)):
            raise InvalidInputError(
                f"temperature must be > 0; got {self.temperature}: use e.g. --temperature 4"
            )
        if not (0.0 <= self.alpha <= 1.0):
            raise InvalidInputError(
                f"alpha must be in [0, 1]; got {self.alpha}: use e.g. --alpha 0.7 (0 = labels only, 1 = teacher only)"
            )
        if self.epochs < 1:
            raise InvalidInputError(f"epochs must be >= 1; got {self.epochs}")
        if self.batch_size < 1:
            raise InvalidInputError(f"batch size must be >= 1; got {self.batch_size}")
        if not self.lr > 0:
            raise InvalidInputError(f"learning rate must be > 0; got {self.lr}: use e.g. --lr 3e-3")
        if self.weight_decay < 0:
            raise InvalidInputError(f"weight decay must be >= 0; got {self.weight_decay}")
        if self.patience < 0:
            raise InvalidInputError(f"patience must be >= 0 (0 disables early stopping); got {self.patience}")
        if self.hint_weight < 0:
            raise InvalidInputError(f"hint weight must be >= 0; got {self.hint_weight}")
        if self.warmup_epochs < 0 or self.warmup_epochs >= self.epochs:
            raise InvalidInputError(
                f"warmup epochs must be in [0, epochs); got {self.warmup_epochs} with {self.epochs} epochs"
            )
        if self.threads < 0:
            raise InvalidInputError(f"threads must be >= 0 (0 keeps the framework default); got {self.threads}")
        if self.hint is not None and (len(self.hint) != 2 or not all(self.hint)):
            raise InvalidInputError(
                "hint must name a teacher and a student layer: --hint TEACHER_LAYER:STUDENT_LAYER"
            )

    def labels_only(self) -> DistillConfig:
        """The same config for the baseline: cross-entropy on labels alone, no hint."""
        from dataclasses import replace

        return replace(self, alpha=0.0, hint=None)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict."""
        d = asdict(self)
        d["hint"] = list(self.hint) if self.hint else None
        return d


@dataclass(frozen=True)
class DistillHistory:
    """Per-epoch training loss and validation accuracy (percent), and where training stopped."""

    train_loss: tuple[float, ...]
    val_accuracy: tuple[float, ...]
    best_epoch: int  # 0-based index of the restored epoch
    stopped_early: bool
    val_loss: tuple[float, ...] = ()
    softmax_handling: str = "none"
    mode: str = "distill"  # "distill" | "labels-only"

    @property
    def best_val_accuracy(self) -> float:
        """Validation accuracy of the restored weights (percent)."""
        return self.val_accuracy[self.best_epoch]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict."""
        d = asdict(self)
        d["best_val_accuracy"] = self.best_val_accuracy
        return d


@dataclass(frozen=True)
class EpochLog:
    """What a progress callback receives after every epoch."""

    epoch: int  # 1-based
    epochs: int
    train_loss: float
    val_accuracy: float
    val_loss: float
    lr: float
    mode: str


ProgressFn = Callable[[EpochLog], None]


def check_data(train: Data, val: Data) -> None:
    """Raise InvalidInputError when inputs/labels are missing, mismatched or not class indices."""
    for name, (x, y) in (("training", train), ("validation", val)):
        x, y = np.asarray(x), np.asarray(y)
        if x.ndim < 2:
            raise InvalidInputError(f"{name} inputs must be [samples, ...]; got shape {x.shape}")
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise InvalidInputError(
                f"{name} labels must be a 1-D integer array of class indices; got {y.dtype} {y.shape}"
            )
        if len(x) != len(y):
            raise InvalidInputError(f"{name} data has {len(x)} inputs but {len(y)} labels")
        if len(x) == 0:
            raise InvalidInputError(f"{name} data is empty")
        if y.min() < 0:
            raise InvalidInputError(f"{name} labels must be >= 0; found {int(y.min())}")
    if train[0].shape[1:] != val[0].shape[1:]:
        raise InvalidInputError(
            f"training inputs {train[0].shape[1:]} and validation inputs {val[0].shape[1:]} differ in shape"
        )


def check_classes(teacher_classes: int | None, student_classes: int, labels: np.ndarray) -> None:
    """Raise InvalidInputError when teacher, student and labels disagree on the number of classes."""
    if teacher_classes is not None and teacher_classes != student_classes:
        raise InvalidInputError(
            f"teacher predicts {teacher_classes} classes but the student predicts {student_classes}; "
            "give the student a final layer with as many outputs as the teacher"
        )
    top = int(np.max(labels))
    if top >= student_classes:
        raise InvalidInputError(
            f"labels go up to {top} but the student predicts only {student_classes} classes"
        )


def pool_features(t: np.ndarray, target_spatial: tuple[int, ...], channels_last: bool) -> np.ndarray:
    """Average-pool teacher hint features [N, C, H, W] (or NHWC) to the student's spatial size."""
    if t.ndim != 4:
        return t
    h, w = target_spatial
    if channels_last:
        n, hh, ww, c = t.shape
    else:
        n, c, hh, ww = t.shape
    if (hh, ww) == (h, w):
        return t
    if hh % h or ww % w:
        raise InvalidInputError(
            f"hint: teacher feature map {hh}x{ww} cannot be pooled to the student's {h}x{w}; "
            "pick layers whose spatial sizes divide evenly"
        )
    if channels_last:
        return t.reshape(n, h, hh // h, w, ww // w, c).mean(axis=(2, 4))
    return t.reshape(n, c, h, hh // h, w, ww // w).mean(axis=(3, 5))


class EarlyStopping:
    """Track the best epoch by validation accuracy (lower validation loss breaks ties)."""

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.best_epoch = -1
        self.best_key: tuple[float, float] | None = None
        self.bad_epochs = 0

    def update(self, epoch: int, val_accuracy: float, val_loss: float) -> bool:
        """Record an epoch; True when it is the new best (the caller saves weights)."""
        key = (round(val_accuracy, 6), -val_loss)
        if self.best_key is None or key > self.best_key:
            self.best_key, self.best_epoch, self.bad_epochs = key, epoch, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        """True when patience is exhausted (patience 0 never stops)."""
        return self.patience > 0 and self.bad_epochs >= self.patience


def lr_at(step: int, total_steps: int, warmup_steps: int, base_lr: float) -> float:
    """Linear warmup then cosine decay to 0 (per optimizer step)."""
    if warmup_steps and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * min(1.0, t)))
