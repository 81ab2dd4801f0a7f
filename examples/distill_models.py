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
