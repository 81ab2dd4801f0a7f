"""Hinton distillation of a PyTorch student from a PyTorch or ONNX teacher (logits cached once).

The torch back end of onnxopt.distillation.loop: the teacher/student taps, the loss and the
optimizer step live here; epochs, schedule, stopping and history live in the loop.

The loss of a batch (student logits s, teacher logits t, labels y; see onnxopt.distillation.core):

    alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(y, softmax(s))
    [+ hint_weight * MSE(regressor(student feature), teacher feature)]
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import numpy as np

from onnxopt.core.errors import InvalidInputError
from onnxopt.distillation.core import Data, DistillConfig, DistillHistory, ProgressFn, pool_features
from onnxopt.distillation.loop import Framework, TrainingSet, batched_targets, probe_student, train
from onnxopt.distillation.teacher import TeacherOutputs
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
    teacher: Any, x: np.ndarray, hint: str | None, batch_size: int = 256
) -> tuple[np.ndarray, np.ndarray | None, str]:
    """Logits (and hint features) of a torch teacher for every sample, computed once with it frozen."""
    torch = require_torch()
    was_training = teacher.training
    teacher.eval()
    tap = _Tap(teacher, hint, "teacher")

    def run(xb: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        lg, ft = tap(teacher, torch.from_numpy(np.ascontiguousarray(xb)))
        return lg.detach().float().cpu().numpy(), (ft.detach().float().cpu().numpy() if hint else None)

    try:
        with torch.no_grad():
            return batched_targets(run, x, hint, batch_size, tap.softmax_handling)
    finally:
        tap.close()
        teacher.train(was_training)


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


# The signature keras_distill.distill has too: onnxopt.distillation.api uses either module as its back end.
def distill(
    teacher: Teacher,
    student: Any,
    train_data: Data,
    val_data: Data,
    config: DistillConfig | None = None,
    *,
    progress: ProgressFn | None = None,
    teacher_logits: np.ndarray | TeacherOutputs | None = None,
) -> tuple[Any, DistillHistory]:
    """Train student in place with the Hinton loss and return (student, history).

    teacher: an nn.Module, an .onnx path / ModelProto (logits computed once in onnxruntime),
    or None for the labels-only baseline (also used when config.alpha == 0 and no hint).
    teacher_logits: precomputed teacher logits for train_data (skips the teacher pass).
    The best weights on the validation split are restored; the student is left in eval mode.
    """
    torch = require_torch()
    config = config or DistillConfig()
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_threads = torch.get_num_threads()
    torch.use_deterministic_algorithms(True, warn_only=True)
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        hist = train(_TORCH, teacher, student, train_data, val_data, config,
                     teacher_logits=teacher_logits, progress=progress)
    finally:
        torch.use_deterministic_algorithms(prev_det)
        torch.set_num_threads(prev_threads)
    student.eval()
    return student, hist


class _TorchBackend:
    """The torch side of the shared loop: AdamW on the student (and a hint regressor), the Hinton loss."""

    def __init__(self, student: Any, tap: _Tap, data: TrainingSet, config: DistillConfig) -> None:
        torch = require_torch()
        self.student, self.tap, self.config = student, tap, config
        self.xt = torch.from_numpy(np.ascontiguousarray(data.x_train))
        self.yt = torch.from_numpy(data.y_train.astype(np.int64))
        self.xv = torch.from_numpy(np.ascontiguousarray(data.x_val))
        self.yv = torch.from_numpy(data.y_val.astype(np.int64))
        s_feat = self._probe(data)
        params = list(student.parameters())
        # Built before the optimizer and the shuffling generator: the regressor's initial
        # weights draw from torch's global generator, seeded in prepare().
        self.regressor, self.t_feats = _hint_target(s_feat, data.teacher_features)
        if self.regressor is not None:
            params += list(self.regressor.parameters())
        t_logits = data.teacher_logits
        self.t_logits = torch.from_numpy(t_logits) if t_logits is not None else None
        self.opt = torch.optim.AdamW(params, lr=config.peak_lr, weight_decay=config.weight_decay)
        self.gen = torch.Generator().manual_seed(config.seed)

    def _probe(self, data: TrainingSet) -> Any:
        """Run the student on two samples: check its logits; return its hint feature (or None)."""
        torch = require_torch()
        self.student.eval()
        with torch.no_grad():
            return probe_student(lambda: self.tap(self.student, self.xt[:2]), data)

    def start_epoch(self) -> Any:
        """Training mode; a permutation from the seeded generator."""
        torch = require_torch()
        self.student.train()
        if self.regressor is not None:
            self.regressor.train()
        return torch.randperm(len(self.xt), generator=self.gen)

    def train_step(self, idx: Any, lr: float) -> float:
        """One AdamW step on cross-entropy, the tempered KL term and the hint MSE."""
        F = require_torch().nn.functional
        config = self.config
        T, a = float(config.temperature), float(config.alpha)
        for g in self.opt.param_groups:
            g["lr"] = lr
        s, feat = self.tap(self.student, self.xt[idx])
        ce = F.cross_entropy(s, self.yt[idx])
        if self.t_logits is not None:
            kd = F.kl_div(
                F.log_softmax(s / T, dim=1),
                F.log_softmax(self.t_logits[idx] / T, dim=1),
                log_target=True,
                reduction="batchmean",
            ) * (T * T)
            loss = a * kd + (1 - a) * ce
        else:
            loss = ce
        if self.t_feats is not None:
            pred = self.regressor(feat) if self.regressor is not None else feat
            loss = loss + config.hint_weight * F.mse_loss(pred, self.t_feats[idx])
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return float(loss.detach())

    def evaluate(self) -> tuple[float, float]:
        """Accuracy and cross-entropy on the validation split."""
        return _evaluate(self.student, self.tap, self.xv, self.yv)

    def get_weights(self) -> Any:
        """A deep copy of the student's state dict."""
        return copy.deepcopy(self.student.state_dict())

    def set_weights(self, weights: Any) -> None:
        """Load a state dict from get_weights."""
        self.student.load_state_dict(weights)


_TORCH = Framework(cache=teacher_cache, seed=_seed, tap=_Tap, backend=_TorchBackend)


def _hint_target(s_feat: Any, t_feats: np.ndarray | None) -> tuple[Any, Any]:
    """(regressor or None, teacher features pooled to the student's size as a tensor) for the hint loss."""
    if t_feats is None:
        return None, None
    if s_feat is None:
        raise InvalidInputError("hint: the student layer produced no output")
    torch = require_torch()
    tfe = pool_features(t_feats, tuple(s_feat.shape[2:]), channels_last=False)
    regressor = _regressor(tuple(s_feat.shape), tfe.shape)
    if regressor is None and tuple(s_feat.shape[1:]) != tfe.shape[1:]:
        raise InvalidInputError(
            f"hint: student feature {tuple(s_feat.shape[1:])} does not match teacher {tfe.shape[1:]}"
        )
    return regressor, torch.from_numpy(np.ascontiguousarray(tfe))


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
