"""Digits teacher and student architectures in PyTorch and Keras (factories for `onnxopt distill`).

All models take the bundled digits input: float32 [batch, 1, 8, 8] (NCHW, pixels / 16) and
return 10 logits. The teacher is VGG-style: blocks of padding-preserving 3x3 convs and
max-pools with doubled widths (64-128-256), then a two-layer classifier (~1.2 M parameters).
The student is a small conv net with ~1/34 of the teacher's parameters.

    onnxopt distill --teacher teacher.onnx --student examples/distill_models.py:torch_student \\
        --data models/digits_train.npz --val models/digits_val.npz -o student.onnx
"""

from __future__ import annotations

from typing import Any

VGG_BLOCKS = ((64, 64), (128, 128), (256, 256))


def torch_teacher(classes: int = 10, blocks: tuple[tuple[int, ...], ...] = VGG_BLOCKS) -> Any:
    """A VGG-style PyTorch CNN for 1x8x8 inputs: conv3x3-BN-ReLU blocks, max-pool after each."""
    from torch import nn

    layers: list[nn.Module] = []
    cin = 1
    for block in blocks:
        for cout in block:
            layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
            cin = cout
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(
        *layers,
        nn.Flatten(),
        nn.Linear(cin, 256),
        nn.ReLU(),
        nn.Dropout(0.3),
        nn.Linear(256, classes),
    )


def torch_student(classes: int = 10, width: int = 32) -> Any:
    """A small PyTorch CNN: two conv-ReLU-max-pool stages and a two-layer classifier."""
    from torch import nn

    w = width
    return nn.Sequential(
        nn.Conv2d(1, w, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(w, 2 * w, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * w * 2 * 2, 64),
        nn.ReLU(),
        nn.Linear(64, classes),
    )


def keras_teacher(classes: int = 10, blocks: tuple[tuple[int, ...], ...] = VGG_BLOCKS) -> Any:
    """The VGG-style teacher in Keras (NCHW input, permuted to NHWC inside)."""
    from onnxopt.frameworks import require_keras

    keras = require_keras()
    L = keras.layers
    inp = keras.Input((1, 8, 8), name="input")
    x = L.Permute((2, 3, 1))(inp)
    for block in blocks:
        for cout in block:
            x = L.Conv2D(cout, 3, padding="same", use_bias=False)(x)
            x = L.BatchNormalization()(x)
            x = L.ReLU()(x)
        x = L.MaxPooling2D(2)(x)
    x = L.Flatten()(x)
    x = L.Dense(256, activation="relu")(x)
    x = L.Dropout(0.3)(x)
    out = L.Dense(classes, name="logits")(x)
    return keras.Model(inp, out, name="vgg_teacher")


def keras_student(classes: int = 10, width: int = 32) -> Any:
    """The small student in Keras (NCHW input, permuted to NHWC inside)."""
    from onnxopt.frameworks import require_keras

    keras = require_keras()
    L = keras.layers
    w = width
    inp = keras.Input((1, 8, 8), name="input")
    x = L.Permute((2, 3, 1))(inp)
    x = L.Conv2D(w, 3, padding="same", activation="relu", name="conv1")(x)
    x = L.MaxPooling2D(2)(x)
    x = L.Conv2D(2 * w, 3, padding="same", activation="relu", name="conv2")(x)
    x = L.MaxPooling2D(2)(x)
    x = L.Flatten()(x)
    x = L.Dense(64, activation="relu", name="fc1")(x)
    out = L.Dense(classes, name="logits")(x)
    return keras.Model(inp, out, name="student")


# ---------------------------------------------------------------- issue 17: a 3-conv teacher, students of three sizes

# Conv widths and classifier hidden units (0: none) of students of about 1/500, 1/50 and 1/10
# of the 3-conv teacher's 749,495 parameters; each conv is 3x3 + ReLU + 2x2 max-pool.
STUDENT_SIZES: dict[str, tuple[tuple[int, ...], int]] = {
    "1/500": ((8,), 0),  # 1,370 parameters: one 8-channel conv + linear
    "1/50": ((26, 52), 0),  # 14,570
    "1/10": ((48, 96), 80),  # 73,658
}


def torch_teacher3(classes: int = 10, hidden: int = 1255) -> Any:
    """A 3-conv PyTorch CNN (32-64-128, BN, two max-pools) + a wide two-layer classifier: 749,495 parameters.

    Most parameters sit in the classifier, so it trains in about a third of the time of a
    64-128-256 conv stack of the same size (3 M vs 10 M multiply-adds per sample).
    """
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 3, padding=1), nn.BatchNorm2d(128), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(128 * 2 * 2, hidden), nn.ReLU(), nn.Dropout(0.3), nn.Linear(hidden, classes),
    )  # fmt: skip


def torch_sized_student(size: str = "1/500", classes: int = 10) -> Any:
    """A PyTorch student of STUDENT_SIZES[size]: conv-ReLU-max-pool stages, then linear layers."""
    from torch import nn

    convs, hidden = STUDENT_SIZES[size]
    layers: list[nn.Module] = []
    cin, side = 1, 8
    for cout in convs:
        layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        cin, side = cout, side // 2
    layers.append(nn.Flatten())
    feats = cin * side * side
    if hidden:
        layers += [nn.Linear(feats, hidden), nn.ReLU()]
        feats = hidden
    layers.append(nn.Linear(feats, classes))
    return nn.Sequential(*layers)


def keras_sized_student(size: str = "1/500", classes: int = 10) -> Any:
    """The Keras twin of torch_sized_student (NCHW input, permuted to NHWC inside; same parameter count)."""
    from onnxopt.frameworks import require_keras

    keras = require_keras()
    L = keras.layers
    convs, hidden = STUDENT_SIZES[size]
    inp = keras.Input((1, 8, 8), name="input")
    x = L.Permute((2, 3, 1))(inp)
    for i, cout in enumerate(convs):
        x = L.Conv2D(cout, 3, padding="same", activation="relu", name=f"conv{i + 1}")(x)
        x = L.MaxPooling2D(2)(x)
    x = L.Flatten()(x)
    if hidden:
        x = L.Dense(hidden, activation="relu", name="fc")(x)
    return keras.Model(inp, L.Dense(classes, name="logits")(x), name="student")


def tiny_student() -> Any:
    """The ~1/500 PyTorch student for `onnxopt distill --student examples/distill_models.py:tiny_student`."""
    return torch_sized_student("1/500")
