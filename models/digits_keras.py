"""The digits sample model in Keras 3: `onnxopt convert models/digits_keras.keras -o digits_keras.onnx`.

It takes the same NCHW input as the PyTorch CNN (`input`, float32 [batch, 1, 8, 8], pixels / 16)
so the same .npz files feed both; a Permute layer moves channels last for Keras' Conv2D.
"""

from __future__ import annotations

import numpy as np


def build(width: int = 16) -> object:
    """Factory: an untrained conv-BN-ReLU digits classifier that outputs 10 `logits`."""
    import keras
    from keras import layers

    w = width
    x = inputs = keras.Input((1, 8, 8), name="input")
    x = layers.Permute((2, 3, 1))(x)  # NCHW -> NHWC
    for i, filters in enumerate((w, 2 * w, 4 * w)):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
        if i > 0:
            x = layers.MaxPooling2D(2)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(128, activation="relu")(x)
    outputs = layers.Dense(10, name="logits")(x)
    return keras.Model(inputs, outputs, name="digits_keras")


def example_inputs() -> tuple[np.ndarray]:
    """One example input (used by `onnxopt convert models/digits_keras.py:build`)."""
    return (np.zeros((1, 1, 8, 8), np.float32),)
