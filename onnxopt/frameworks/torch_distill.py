"""Hinton distillation of a PyTorch student from a PyTorch or ONNX teacher (logits cached once)."""

from __future__ import annotations

import copy
import logging
import os
from typing import Any

import numpy as np
from onnx import ModelProto

from onnxopt.core.errors import InvalidInputError
from onnxopt.core.errors import short_message as _short
from onnxopt.distillation.core import (
    Data,
    DistillConfig,
    DistillHistory,
    EarlyStopping,
    EpochLog,
    ProgressFn,
    check_classes,
    check_data,
    lr_at,
    pool_features,
)
from onnxopt.distillation.teacher import as_logits, teacher_outputs
from onnxopt.frameworks import require_torch

log = logging.getLogger(__name__)

Teacher = Any  # nn.Module | ModelProto | str | PathLike | None


def _last_leaf(module: Any) -> Any:
    leaves = [m for m in module.modules() if not list(m.children())]
    return leaves[-1] if leaves else None


class _Tap:
    """Forward hooks that capture a module's input (pre-softmax logits) or output (hint)."""

    def __init__(self, model: Any, hint_layer: str | None, who: str) -> None:
        torch = require_torch()
        self.values: dict[str, Any] = {}
        self.handles: list[Any] = []
        self.softmax_handling = "none"
        last = _last_leaf(model)
        if isinstance(last, torch.nn.Softmax):
            self.softmax_handling = "pre-softmax logits"
            log.info("%s ends in nn.Softmax: training on its input (the pre-softmax logits)", who)
            self.handles.append(last.register_forward_hook(self._save_input))
        if hint_layer:
            modules = dict(model.named_modules())
            if hint_layer not in modules:
                names = [n for n in modules if n][:30]
                raise InvalidInputError(
                    f"{who} has no layer {hint_layer!r}; choose among: {', '.join(names)}"
                )
            self.handles.append(modules[hint_layer].register_forward_hook(self._save_output))

    def _save_input(self, module: Any, inputs: Any, output: Any) -> None:
        self.values["logits"] = inputs[0]

    def _save_output(self, module: Any, inputs: Any, output: Any) -> None:
        self.values["hint"] = output

    def __call__(self, model: Any, x: Any) -> tuple[Any, Any]:
        self.values.clear()
        out = model(x)
        return self.values.get("logits", out), self.values.get("hint")

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _seed(seed: int) -> None:
    torch = require_torch()
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def teacher_cache(
    teacher: Teacher, x: np.ndarray, hint: str | None, batch_size: int = 256
) -> tuple[np.ndarray, np.ndarray | None, str]:
    """Teacher logits (and hint features) for every sample, computed once with the teacher frozen."""
    if isinstance(teacher, (ModelProto, str, os.PathLike)):
        res = teacher_outputs(teacher, x, hint=hint, batch_size=batch_size)
        return res.logits, res.features, res.softmax_handling
    torch = require_torch()
    was_training = teacher.training
    teacher.eval()
    tap = _Tap(teacher, hint, "teacher")
    logits, feats = [], []
    try:
        with torch.no_grad():
            for start in range(0, len(x), batch_size):
                xb = torch.from_numpy(np.ascontiguousarray(x[start : start + batch_size]))
                lg, ft = tap(teacher, xb)
                logits.append(lg.detach().float().cpu().numpy())
                if hint:
                    feats.append(ft.detach().float().cpu().numpy())
    except InvalidInputError:
        raise
    except Exception as e:
        raise InvalidInputError(
            f"data of shape {tuple(x.shape)} does not fit the teacher: {_short(e)}"
        ) from e
    finally:
        tap.close()
        teacher.train(was_training)
    out, handling = as_logits(np.concatenate(logits), tap.softmax_handling)
    return out, (np.concatenate(feats) if hint else None), handling




def _regressor(s_shape: tuple[int, ...], t_shape: tuple[int, ...]) -> Any:
    """A learned 1x1 conv / linear map from student to teacher channels (None when equal)."""
    torch = require_torch()
    if len(s_shape) != len(t_shape) or len(s_shape) not in (2, 4):
        raise InvalidInputError(
            f"hint: student feature {s_shape[1:]} and teacher feature {t_shape[1:]} must both be "
            "[N, C] or [N, C, H, W]"
        )
    if s_shape[1] == t_shape[1]:
        return None
    if len(s_shape) == 4:
        return torch.nn.Conv2d(s_shape[1], t_shape[1], 1)
    return torch.nn.Linear(s_shape[1], t_shape[1])


def distill(
    teacher: Teacher,
    student: Any,
    train_data: Data,
    val_data: Data,
    config: DistillConfig | None = None,
    *,
    progress: ProgressFn | None = None,
    teacher_logits: np.ndarray | None = None,
) -> tuple[Any, DistillHistory]:
    """Train student in place with the Hinton loss and return (student, history).

    teacher: an nn.Module, an .onnx path / ModelProto (logits computed once in onnxruntime),
    or None for the labels-only baseline (also used when config.alpha == 0 and no hint).
    teacher_logits: precomputed teacher logits for train_data (skips the teacher pass).
    The best weights on the validation split are restored; the student is left in eval mode.
    """
    torch = require_torch()
    config = config or DistillConfig()
    check_data(train_data, val_data)
    x_tr, y_tr = (np.asarray(a) for a in train_data)
    x_val, y_val = (np.asarray(a) for a in val_data)
    x_tr = x_tr.astype(np.float32, copy=False)
    x_val = x_val.astype(np.float32, copy=False)
    labels_only = (teacher is None and teacher_logits is None) or (
        config.alpha == 0 and config.hint is None
    )
    mode = "labels-only" if labels_only else "distill"
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_threads = torch.get_num_threads()
    torch.use_deterministic_algorithms(True, warn_only=True)
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        _seed(config.seed)
        t_logits: np.ndarray | None = None
        t_feats: np.ndarray | None = None
        handling = "none"
        t_hint = config.hint[0] if config.hint and not labels_only else None
        if not labels_only:
            if teacher_logits is not None and t_hint is None:
                t_logits = np.asarray(teacher_logits, np.float32)
            else:
                t_logits, t_feats, handling = teacher_cache(teacher, x_tr, t_hint)
            if len(t_logits) != len(x_tr):
                raise InvalidInputError(
                    f"{len(t_logits)} teacher logits for {len(x_tr)} training samples"
                )
        tap = _Tap(student, config.hint[1] if t_hint and config.hint else None, "student")
        try:
            return _train(student, tap, x_tr, y_tr, x_val, y_val, t_logits, t_feats, handling,
                          config, mode, progress)
        finally:
            tap.close()
    finally:
        torch.use_deterministic_algorithms(prev_det)
        torch.set_num_threads(prev_threads)


def _train(
    student: Any,
    tap: _Tap,
    x_tr: np.ndarray,
    y_tr: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    t_logits: np.ndarray | None,
    t_feats: np.ndarray | None,
    handling: str,
    config: DistillConfig,
    mode: str,
    progress: ProgressFn | None,
) -> tuple[Any, DistillHistory]:
    torch = require_torch()
    F = torch.nn.functional
    xt = torch.from_numpy(np.ascontiguousarray(x_tr))
    yt = torch.from_numpy(y_tr.astype(np.int64))
    xv = torch.from_numpy(np.ascontiguousarray(x_val))
    yv = torch.from_numpy(y_val.astype(np.int64))
    student.eval()
    try:
        with torch.no_grad():
            s_out, s_feat = tap(student, xt[:2])
    except Exception as e:
        raise InvalidInputError(
            f"data of shape {tuple(x_tr.shape)} does not fit the student: {_short(e)}"
        ) from e
    if s_out.ndim != 2:
        raise InvalidInputError(f"student output must be [batch, classes] logits; got shape {tuple(s_out.shape)}")
    check_classes(None if t_logits is None else int(t_logits.shape[1]), int(s_out.shape[1]),
                  np.concatenate([y_tr, y_val]))
    s_softmax = tap.softmax_handling
    params = list(student.parameters())
    regressor = None
    tf_t: Any = None
    if t_feats is not None:
        if s_feat is None:
            raise InvalidInputError("hint: the student layer produced no output")
        tfe = pool_features(t_feats, tuple(s_feat.shape[2:]), channels_last=False)
        regressor = _regressor(tuple(s_feat.shape), tfe.shape)
        if regressor is None and tuple(s_feat.shape[1:]) != tfe.shape[1:]:
            raise InvalidInputError(
                f"hint: student feature {tuple(s_feat.shape[1:])} does not match teacher {tfe.shape[1:]}"
            )
        if regressor is not None:
            params += list(regressor.parameters())
        tf_t = torch.from_numpy(np.ascontiguousarray(tfe))
    tl_t = torch.from_numpy(t_logits) if t_logits is not None else None
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    n = len(xt)
    steps_per_epoch = (n + config.batch_size - 1) // config.batch_size
    total = steps_per_epoch * config.epochs
    warm = steps_per_epoch * config.warmup_epochs
    T, a = float(config.temperature), float(config.alpha)
    gen = torch.Generator().manual_seed(config.seed)
    stopper = EarlyStopping(config.patience)
    best_state = copy.deepcopy(student.state_dict())
    losses: list[float] = []
    accs: list[float] = []
    vlosses: list[float] = []
    step = 0
    stopped = False
    for epoch in range(config.epochs):
        student.train()
        if regressor is not None:
            regressor.train()
        perm = torch.randperm(n, generator=gen)
        total_loss = 0.0
        for i in range(0, n, config.batch_size):
            idx = perm[i : i + config.batch_size]
            lr = lr_at(step, total, warm, config.lr)
            for g in opt.param_groups:
                g["lr"] = lr
            s, feat = tap(student, xt[idx])
            ce = F.cross_entropy(s, yt[idx])
            if tl_t is not None:
                kd = F.kl_div(
                    F.log_softmax(s / T, dim=1),
                    F.log_softmax(tl_t[idx] / T, dim=1),
                    log_target=True,
                    reduction="batchmean",
                ) * (T * T)
                loss = a * kd + (1 - a) * ce
            else:
                loss = ce
            if tf_t is not None:
                pred = regressor(feat) if regressor is not None else feat
                loss = loss + config.hint_weight * F.mse_loss(pred, tf_t[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total_loss += float(loss.detach()) * len(idx)
            step += 1
        acc, vloss = _evaluate(student, tap, xv, yv)
        losses.append(total_loss / n)
        accs.append(acc)
        vlosses.append(vloss)
        if stopper.update(epoch, acc, vloss):
            best_state = copy.deepcopy(student.state_dict())
        if progress is not None:
            progress(EpochLog(epoch + 1, config.epochs, losses[-1], acc, vloss, lr, mode))
        if stopper.should_stop:
            stopped = epoch + 1 < config.epochs
            log.info("early stop after epoch %d (best %d)", epoch + 1, stopper.best_epoch + 1)
            break
    student.load_state_dict(best_state)
    student.eval()
    hist = DistillHistory(
        train_loss=tuple(losses),
        val_accuracy=tuple(accs),
        best_epoch=stopper.best_epoch,
        stopped_early=stopped,
        val_loss=tuple(vlosses),
        softmax_handling=_describe_handling(handling, s_softmax),
        mode=mode,
    )
    return student, hist


def _describe_handling(teacher: str, student: str) -> str:
    parts = []
    if teacher != "none":
        parts.append(f"teacher: {teacher}")
    if student != "none":
        parts.append(f"student: {student} (the exported student keeps its softmax)")
    return "; ".join(parts) or "none"


def _evaluate(student: Any, tap: _Tap, x: Any, y: Any, batch_size: int = 512) -> tuple[float, float]:
    """(accuracy percent, mean cross-entropy) of the student on a split."""
    torch = require_torch()
    student.eval()
    correct = 0
    loss = 0.0
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            s, _ = tap(student, x[i : i + batch_size])
            yb = y[i : i + batch_size]
            correct += int((s.argmax(1) == yb).sum())
            loss += float(torch.nn.functional.cross_entropy(s, yb, reduction="sum"))
    return 100.0 * correct / len(x), loss / len(x)


def param_count(module: Any) -> int:
    """Number of parameters of a torch module."""
    return int(sum(p.numel() for p in module.parameters()))


def fresh_copy(module: Any) -> Any:
    """A deep copy with the same initial weights (for the labels-only baseline)."""
    return copy.deepcopy(module)


def predict(module: Any, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Outputs of a torch module on x (eval mode, no grad) as numpy."""
    torch = require_torch()
    module.eval()
    outs = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            outs.append(module(torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size]))).numpy())
    return np.concatenate(outs)
