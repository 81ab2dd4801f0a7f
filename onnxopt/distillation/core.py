"""Framework-independent pieces of distillation: config, history, data checks, stopping rules.

The loss (Hinton et al., 2015) of a student with logits s, a teacher with logits t, labels y,
temperature T and weight alpha, averaged over the batch:

    L = alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(y, softmax(s))

KL(p || q) = sum_k p_k (log p_k - log q_k). The T^2 factor keeps the soft term's gradients at
the scale of the hard term's as T changes (the soft gradients shrink as 1/T^2). alpha = 0 is
the labels-only baseline; an optional hint term adds hint_weight * MSE(r(f_s), f_t) between an
intermediate student feature f_s (through a learned map r) and the teacher's f_t.

Two training lengths (`DistillConfig.epochs`):

- None (the default), to convergence: the learning rate stays at lr (after optional warmup)
  until a plateau, `patience` epochs without progress (progress: a new best validation
  accuracy, or a validation loss 1% below the best); then it is multiplied by lr_factor, at
  most lr_cuts times. A plateau at the lowest rate, or one after a cut that brought no
  progress, stops training, but never before min_epochs; max_epochs bounds the run.
- N, a fixed budget: N epochs, cosine decay of the learning rate to 0; `patience` epochs
  without improvement stop early (0: never).

The validation score is accuracy, lower cross-entropy breaking ties; the best epoch's weights
are restored either way.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from onnxopt.core.errors import InvalidInputError

Data = tuple[np.ndarray, np.ndarray]


LR_CONVERGE = 1e-2  # default peak learning rate when training to convergence
LR_FIXED = 3e-3  # default peak learning rate for a fixed budget of epochs


@dataclass(frozen=True)
class DistillConfig:
    """Hyper-parameters of Hinton distillation (and of the labels-only baseline)."""

    temperature: float = 4.0
    alpha: float = 0.7
    epochs: int | None = None  # None: train to convergence; N: a fixed budget of N epochs (cosine)
    batch_size: int = 64
    lr: float | None = None  # peak AdamW rate; None: 1e-2 to convergence, 3e-3 for a fixed budget
    weight_decay: float = 1e-4
    patience: int = 10  # epochs without validation improvement before a cut / a stop (0: never)
    seed: int = 0
    hint: tuple[str, str] | None = None  # (teacher layer/tensor, student layer)
    hint_weight: float = 1.0
    warmup_epochs: int = 0
    threads: int = 0  # torch intra-op threads while training (0: leave the framework's setting)
    min_epochs: int = 20  # to convergence: never stop before this many epochs
    max_epochs: int = 300  # to convergence: never train longer
    lr_cuts: int = 2  # to convergence: learning-rate cuts on plateaus before the stop
    lr_factor: float = 0.2  # to convergence: the learning rate is multiplied by this at each cut

    def __post_init__(self) -> None:
        if not (isinstance(self.temperature, (int, float)) and self.temperature > 0 and math.isfinite(self.temperature)):
            raise InvalidInputError(
                f"temperature must be > 0; got {self.temperature}: use e.g. --temperature 4"
            )
        if not (0.0 <= self.alpha <= 1.0):
            raise InvalidInputError(
                f"alpha must be in [0, 1]; got {self.alpha}: use e.g. --alpha 0.7 (0 = labels only, 1 = teacher only)"
            )
        if self.epochs is not None and self.epochs < 1:
            raise InvalidInputError(f"epochs must be >= 1 (or None: to convergence); got {self.epochs}")
        if self.min_epochs < 1 or self.max_epochs < self.min_epochs:
            raise InvalidInputError(
                f"need 1 <= min epochs <= max epochs; got {self.min_epochs} and {self.max_epochs}: "
                "use e.g. --min-epochs 20 --max-epochs 300"
            )
        if self.lr_cuts < 0:
            raise InvalidInputError(f"learning-rate cuts must be >= 0; got {self.lr_cuts}")
        if not 0 < self.lr_factor < 1:
            raise InvalidInputError(f"learning-rate factor must be in (0, 1); got {self.lr_factor}")
        if self.batch_size < 1:
            raise InvalidInputError(f"batch size must be >= 1; got {self.batch_size}")
        if self.lr is not None and not self.lr > 0:
            raise InvalidInputError(f"learning rate must be > 0; got {self.lr}: use e.g. --lr 3e-3")
        if self.weight_decay < 0:
            raise InvalidInputError(f"weight decay must be >= 0; got {self.weight_decay}")
        if self.patience < 0:
            raise InvalidInputError(f"patience must be >= 0 (0 disables early stopping); got {self.patience}")
        if self.hint_weight < 0:
            raise InvalidInputError(f"hint weight must be >= 0; got {self.hint_weight}")
        if self.warmup_epochs < 0 or self.warmup_epochs >= self.epoch_limit:
            raise InvalidInputError(
                f"warmup epochs must be in [0, epochs); got {self.warmup_epochs} with {self.epoch_limit} epochs"
            )
        if self.threads < 0:
            raise InvalidInputError(f"threads must be >= 0 (0 keeps the framework default); got {self.threads}")
        if self.hint is not None and (len(self.hint) != 2 or not all(self.hint)):
            raise InvalidInputError(
                "hint must name a teacher and a student layer: --hint TEACHER_LAYER:STUDENT_LAYER"
            )

    @property
    def converge(self) -> bool:
        """True when training runs to convergence (epochs is None), not for a fixed budget."""
        return self.epochs is None

    @property
    def peak_lr(self) -> float:
        """The learning rate training starts from: lr, or the default of the training length.

        Measured on digits (students of 1.4k, 15k and 74k parameters, 2 seeds): to convergence,
        1e-2 reached the same or better validation accuracy as 3e-3 in about half the epochs
        (the plateau cuts anneal it); a fixed budget keeps the historical 3e-3 under its cosine.
        """
        if self.lr is not None:
            return self.lr
        return LR_CONVERGE if self.epochs is None else LR_FIXED

    @property
    def epoch_limit(self) -> int:
        """The most epochs a run can take: epochs, or max_epochs when training to convergence."""
        return self.max_epochs if self.epochs is None else self.epochs

    def labels_only(self) -> DistillConfig:
        """The same config for the baseline: cross-entropy on labels alone, no hint."""
        from dataclasses import replace

        return replace(self, alpha=0.0, hint=None)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict."""
        d = asdict(self)
        d["hint"] = list(self.hint) if self.hint else None
        d["peak_lr"] = self.peak_lr
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
    stop_reason: str = ""  # why training ended, in words
    lr_cut_epochs: tuple[int, ...] = ()  # 1-based epochs after which the learning rate was cut
    seconds: float = 0.0  # wall-clock training time

    @property
    def epochs_run(self) -> int:
        """How many epochs were trained (the stop epoch, 1-based)."""
        return len(self.train_loss)

    @property
    def best_val_loss(self) -> float:
        """Validation cross-entropy of the restored weights (nan when not recorded)."""
        return self.val_loss[self.best_epoch] if self.val_loss else float("nan")

    @property
    def best_val_accuracy(self) -> float:
        """Validation accuracy of the restored weights (percent)."""
        return self.val_accuracy[self.best_epoch]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict."""
        d = asdict(self)
        d["best_val_accuracy"] = self.best_val_accuracy
        d["epochs_run"] = self.epochs_run
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


LOSS_PROGRESS = 0.01  # to convergence: a validation loss 1% below the best counts as progress
PROGRESS = "a higher accuracy or a 1% lower loss"


class StopRule:
    """Epoch by epoch: which epoch is best, when to cut the learning rate, when and why to stop.

    Fixed budget (config.epochs = N): stop after N epochs, or earlier after `patience` epochs
    without a new best. To convergence (config.epochs None): on a plateau (`patience` epochs
    without progress) cut the rate (times lr_factor, up to lr_cuts times); stop on a plateau
    at the lowest rate or right after a cut that brought no progress, not before min_epochs;
    stop at max_epochs whatever happens.
    """

    def __init__(self, config: DistillConfig) -> None:
        self.config = config
        self.tracker = EarlyStopping(config.patience)
        self.lr_scale = 1.0
        self.cut_epochs: list[int] = []
        self.best_acc = -math.inf
        self.best_loss = math.inf
        self.stale = 0  # to convergence: epochs since the last progress
        self.progress_epoch = 0  # 1-based epoch of the last progress

    @property
    def best_epoch(self) -> int:
        """0-based index of the best epoch so far."""
        return self.tracker.best_epoch

    def update(self, epoch: int, val_accuracy: float, val_loss: float) -> bool:
        """Record an epoch (0-based); True when it is the new best (the caller saves weights).

        Progress, for the plateau test when training to convergence, is a new best accuracy
        or a validation loss LOSS_PROGRESS (relative) below the best so far: a loss creeping
        down by 0.01% per epoch is a plateau.
        """
        progress = val_accuracy > self.best_acc + 1e-9 or val_loss < self.best_loss * (1 - LOSS_PROGRESS)
        self.best_acc = max(self.best_acc, val_accuracy)
        if math.isfinite(val_loss):
            self.best_loss = min(self.best_loss, val_loss)
        self.stale = 0 if progress else self.stale + 1
        if progress:
            self.progress_epoch = epoch + 1
        return self.tracker.update(epoch, val_accuracy, val_loss)

    @property
    def plateau(self) -> bool:
        """To convergence: `patience` epochs without progress (patience 0: never)."""
        return self.config.patience > 0 and self.stale >= self.config.patience

    def decide(self, epoch: int) -> str | None:
        """After epoch (0-based) was recorded: None to go on, else why training stops.

        May cut the learning rate (lr_scale) instead of stopping.
        """
        c, n, best = self.config, epoch + 1, self.tracker.best_epoch + 1
        if c.epochs is not None:
            if n >= c.epochs:
                return f"fixed budget of {c.epochs} epochs done (best epoch {best})"
            if self.tracker.should_stop:
                return f"early stop: no validation improvement in {c.patience} epochs (best epoch {best})"
            return None
        if n >= c.max_epochs:
            return f"reached max epochs {c.max_epochs} before a plateau (best epoch {best})"
        if not self.plateau:
            return None
        cuts = len(self.cut_epochs)
        useless_cut = cuts > 0 and self.progress_epoch < self.cut_epochs[-1]
        if cuts < c.lr_cuts and not useless_cut:
            self.lr_scale *= c.lr_factor
            self.cut_epochs.append(n)
            self.stale = 0
            return None
        if n < c.min_epochs:
            return None
        what = f"no progress on validation ({PROGRESS}) in {c.patience} epochs"
        if useless_cut and cuts < c.lr_cuts:
            return f"converged: {what} after the learning-rate cut at epoch {self.cut_epochs[-1]} (best epoch {best})"
        after = f" after {cuts} learning-rate cut{'s' if cuts != 1 else ''}" if cuts else ""
        return f"converged: {what}{after} (best epoch {best})"

    def lr(self, step: int, total_steps: int, warmup_steps: int) -> float:
        """The learning rate of an optimizer step: cosine for a fixed budget, else constant (cut on plateaus)."""
        base = self.config.peak_lr
        if self.config.epochs is not None:
            return lr_at(step, total_steps, warmup_steps, base)
        if warmup_steps and step < warmup_steps:
            return base * self.lr_scale * (step + 1) / warmup_steps
        return base * self.lr_scale


def lr_at(step: int, total_steps: int, warmup_steps: int, base_lr: float) -> float:
    """Linear warmup then cosine decay to 0 (per optimizer step)."""
    if warmup_steps and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * min(1.0, t)))
