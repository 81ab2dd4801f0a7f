"""Hinton distillation of a Keras 3 student from a Keras or ONNX teacher (logits cached once).

The Keras back end of onnxopt.distillation.loop: the teacher/student taps, the loss and the
traced optimizer step live here; epochs, schedule, stopping and history live in the loop.

The loss of a batch (student logits s, teacher logits t, labels y; see onnxopt.distillation.core):

    alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(y, softmax(s))
    [+ hint_weight * MSE(regressor(student feature), teacher feature)]
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from onnxopt.core.errors import InvalidInputError
from onnxopt.core.errors import short_message as _short
from onnxopt.distillation.core import Data, DistillConfig, DistillHistory, ProgressFn, pool_features
from onnxopt.distillation.loop import Framework, TrainingSet, batched_targets, probe_student, train
from onnxopt.distillation.teacher import TeacherOutputs
from onnxopt.frameworks import require_keras

log = logging.getLogger(__name__)


def _is_softmax(fn: Any) -> bool:
    return getattr(fn, "__name__", "") == "softmax"


class _Tap:
    """A view of a Keras model that returns (logits, hint features), bypassing a final softmax."""

    def __init__(self, model: Any, hint_layer: str | None, who: str) -> None:
        keras = require_keras()
        self.model = model
        self.softmax_handling = "none"
        self._restore: Any = None
        layers = getattr(model, "layers", [])
        last = layers[-1] if layers else None
        logits_tensor = None
        if last is not None and _is_softmax(getattr(last, "activation", None)) and not isinstance(
            last, keras.layers.Activation
        ):
            # A Dense(..., activation="softmax"): train on its pre-activation output.
            self._restore = (last, last.activation)
            last.activation = keras.activations.linear
            self.softmax_handling = "pre-softmax logits"
        elif last is not None and (
            isinstance(last, keras.layers.Softmax)
            or (isinstance(last, keras.layers.Activation) and _is_softmax(last.activation))
        ):
            logits_tensor = last.input
            self.softmax_handling = "pre-softmax logits"
        if self.softmax_handling != "none":
            log.info("%s ends in softmax: training on the pre-softmax logits", who)
        hint_tensor = None
        if hint_layer:
            try:
                hint_tensor = model.get_layer(hint_layer).output
            except (ValueError, AttributeError) as e:
                names = [layer.name for layer in layers][:30]
                raise InvalidInputError(
                    f"{who} has no layer {hint_layer!r}; choose among: {', '.join(names)}"
                ) from e
        self.hint = hint_tensor is not None
        if logits_tensor is None and not self.hint:
            self.view = model
            self.multi = False
        else:
            try:
                outs = [logits_tensor if logits_tensor is not None else model.outputs[0]]
                if hint_tensor is not None:
                    outs.append(hint_tensor)
                self.view = keras.Model(model.inputs, outs)
            except Exception as e:
                self.close()
                raise InvalidInputError(
                    f"{who}: cannot tap its layers ({_short(e)}); use a functional or Sequential Keras model"
                ) from e
            self.multi = True

    def __call__(self, x: Any, training: bool) -> tuple[Any, Any]:
        out = self.view(x, training=training)
        if self.multi:
            return out[0], (out[1] if self.hint else None)
        return out, None

    def close(self) -> None:
        """Give a Dense layer its softmax back."""
        if self._restore is not None:
            layer, act = self._restore
            layer.activation = act
            self._restore = None


def _seed(seed: int) -> None:
    keras = require_keras()
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    try:
        tf.config.experimental.enable_op_determinism()
    except Exception as e:  # pragma: no cover - older TF
        log.debug("op determinism unavailable: %s", e)


def teacher_cache(
    teacher: Any, x: np.ndarray, hint: str | None, batch_size: int = 256
) -> tuple[np.ndarray, np.ndarray | None, str]:
    """Logits (and hint features) of a Keras teacher for every sample, computed once in inference mode."""
    tap = _Tap(teacher, hint, "teacher")

    def run(xb: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        lg, ft = tap(xb, training=False)
        return np.asarray(lg, np.float32), (np.asarray(ft, np.float32) if hint else None)

    try:
        return batched_targets(run, x, hint, batch_size, tap.softmax_handling)
    finally:
        tap.close()


# The signature torch_distill.distill has too: onnxopt.distillation.api uses either module as its back end.
def distill(
    teacher: Any,
    student: Any,
    train_data: Data,
    val_data: Data,
    config: DistillConfig | None = None,
    *,
    progress: ProgressFn | None = None,
    teacher_logits: np.ndarray | TeacherOutputs | None = None,
) -> tuple[Any, DistillHistory]:
    """Train a Keras student in place with the Hinton loss and return (student, history).

    teacher: a keras.Model, an .onnx path / ModelProto (logits computed once in onnxruntime),
    or None for the labels-only baseline. The best validation weights are restored.
    """
    config = config or DistillConfig()
    hist = train(_KERAS, teacher, student, train_data, val_data, config,
                 teacher_logits=teacher_logits, progress=progress)
    return student, hist


class _KerasBackend:
    """The Keras side of the shared loop: AdamW, the Hinton loss in one traced tf.function."""

    def __init__(self, student: Any, tap: _Tap, data: TrainingSet, config: DistillConfig) -> None:
        keras = require_keras()
        self.student, self.tap, self.data = student, tap, data
        s_feat = self._probe()
        # The regressor (if any) is built before the optimizer: its initial weights draw from
        # the seed set in prepare().
        self.regressor, self.feats = _hint_target(s_feat, data.teacher_features)
        variables = list(tap.view.trainable_variables)
        if self.regressor is not None:
            variables += list(self.regressor.trainable_variables)
        self.opt = keras.optimizers.AdamW(learning_rate=config.peak_lr, weight_decay=config.weight_decay)
        self.opt.build(variables)
        self._step = self._make_step(variables, config)
        n = len(data.x_train)
        self.rng = np.random.default_rng(config.seed)
        self.y_tr32 = data.y_train.astype(np.int32)
        self.dummy_t = np.zeros((n, 1), np.float32)  # fills the unused teacher arguments of the step

    def _probe(self) -> Any:
        """Run the student on two samples: check its logits; return its hint feature (or None)."""
        return probe_student(lambda: self.tap(self.data.x_train[:2], training=False), self.data)

    def _make_step(self, variables: list[Any], config: DistillConfig) -> Any:
        """The traced training step: (x, y, teacher logits, teacher features) -> loss."""
        import tensorflow as tf

        tap, regressor, opt = self.tap, self.regressor, self.opt
        T, a, hw = float(config.temperature), float(config.alpha), float(config.hint_weight)
        t_logits, feats = self.data.teacher_logits, self.feats
        use_kd = t_logits is not None
        use_hint = feats is not None
        tb_dim = int(t_logits.shape[1]) if t_logits is not None else 1
        fb_shape = tuple(feats.shape[1:]) if feats is not None else (1,)
        signature = [
            tf.TensorSpec((None, *self.data.x_train.shape[1:]), tf.float32),
            tf.TensorSpec((None,), tf.int32),
            tf.TensorSpec((None, tb_dim), tf.float32),
            tf.TensorSpec((None, *fb_shape), tf.float32),
        ]

        # One trace for every batch size; autograph off: the step has no tensor-dependent branches.
        @tf.function(input_signature=signature, autograph=False)
        def train_step(xb: Any, yb: Any, tb: Any, fb: Any) -> Any:
            with tf.GradientTape() as tape:
                s, f = tap(xb, training=True)
                ce = tf.reduce_mean(
                    tf.nn.sparse_softmax_cross_entropy_with_logits(labels=yb, logits=s)
                )
                loss = ce
                if use_kd:
                    log_ps = tf.nn.log_softmax(s / T, axis=1)
                    log_pt = tf.nn.log_softmax(tb / T, axis=1)
                    kd = tf.reduce_mean(tf.reduce_sum(tf.exp(log_pt) * (log_pt - log_ps), axis=1)) * (T * T)
                    loss = a * kd + (1.0 - a) * ce
                if use_hint:
                    pred = regressor(f) if regressor is not None else f
                    loss = loss + hw * tf.reduce_mean(tf.square(pred - fb))
            grads = tape.gradient(loss, variables)
            opt.apply_gradients(zip(grads, variables))
            return loss

        return train_step

    def start_epoch(self) -> Any:
        """A permutation from the seeded numpy generator (Keras takes training=True per call)."""
        return self.rng.permutation(len(self.data.x_train))

    def train_step(self, idx: Any, lr: float) -> float:
        """One AdamW step on cross-entropy, the tempered KL term and the hint MSE."""
        self.opt.learning_rate.assign(lr)
        t_logits = self.data.teacher_logits
        tb = t_logits[idx] if t_logits is not None else self.dummy_t[idx]
        fb = self.feats[idx] if self.feats is not None else self.dummy_t[idx]
        return float(self._step(self.data.x_train[idx], self.y_tr32[idx], tb, fb))

    def evaluate(self) -> tuple[float, float]:
        """Accuracy and cross-entropy on the validation split."""
        return _evaluate(self.tap, self.data.x_val, self.data.y_val)

    def get_weights(self) -> Any:
        """The student's weights (numpy copies)."""
        return self.student.get_weights()

    def set_weights(self, weights: Any) -> None:
        """Restore weights from get_weights."""
        self.student.set_weights(weights)


_KERAS = Framework(cache=teacher_cache, seed=_seed, tap=_Tap, backend=_KerasBackend)


def _hint_target(s_feat: Any, t_feats: np.ndarray | None) -> tuple[Any, np.ndarray | None]:
    """(Dense regressor or None, teacher features pooled to the student's size) for the hint loss."""
    if t_feats is None:
        return None, None
    if s_feat is None:
        raise InvalidInputError("hint: the student layer produced no output")
    keras = require_keras()
    s_shape = tuple(int(d) for d in s_feat.shape)
    feats = pool_features(t_feats, s_shape[1:-1], channels_last=True) if len(s_shape) == 4 else t_feats
    if len(s_shape) != feats.ndim or s_shape[1:-1] != feats.shape[1:-1]:
        raise InvalidInputError(
            f"hint: student feature {s_shape[1:]} and teacher feature {feats.shape[1:]} do not line up "
            "(Keras features are channels-last; pick layers with matching spatial sizes)"
        )
    regressor = None
    if s_shape[-1] != feats.shape[-1]:
        regressor = keras.layers.Dense(int(feats.shape[-1]), name="hint_regressor")
        regressor.build(s_shape)
    return regressor, feats.astype(np.float32)


def _evaluate(tap: _Tap, x: np.ndarray, y: np.ndarray, batch_size: int = 512) -> tuple[float, float]:
    """(accuracy percent, mean cross-entropy) on a split."""
    outs = [np.asarray(tap(x[i : i + batch_size], training=False)[0], np.float64) for i in range(0, len(x), batch_size)]
    s = np.concatenate(outs)
    m = s.max(axis=1, keepdims=True)
    logz = m[:, 0] + np.log(np.exp(s - m).sum(axis=1))
    ce = float(np.mean(logz - s[np.arange(len(y)), y]))
    return 100.0 * float(np.mean(s.argmax(1) == y)), ce


def param_count(model: Any) -> int:
    """Number of weights of a Keras model (trainable and not)."""
    return int(model.count_params())


def fresh_copy(model: Any) -> Any:
    """A clone with the same initial weights (for the labels-only baseline)."""
    keras = require_keras()
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


def predict(model: Any, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Outputs of a Keras model on x in inference mode, as numpy."""
    outs = [np.asarray(model(x[i : i + batch_size], training=False)) for i in range(0, len(x), batch_size)]
    return np.concatenate(outs)
