"""Build a Keras 3 CNN from a search genome: the same genes and layers as torch_genome, NCHW input.

The model takes ``input`` float32 [N, C, H, W] (the project's data layout), permutes it to
channels-last as its first layer (like models/digits_keras.py), then ``depth`` stages of
[conv (optionally depthwise-separable) -> BatchNorm -> activation -> optional 2x2 max-pool],
``flatten`` or global average pooling, an optional hidden dense layer and a linear classifier
named ``logits`` (no softmax). Gene checking and defaults are torch_genome's.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from onnxopt.core.errors import InvalidInputError
from onnxopt.frameworks import require_keras
from onnxopt.frameworks.torch_genome import (
    ACTIVATIONS,
    check_genes,
    global_genes,
    stage_conv,
    stage_pools,
)

__all__ = ["build", "check_genes", "limit_threads", "param_count"]

log = logging.getLogger(__name__)


def _activation(name: str) -> Any:
    layers = require_keras().layers
    if name not in ACTIVATIONS:
        raise InvalidInputError(f"activation {name!r} unknown; choose one of {', '.join(ACTIVATIONS)}")
    if name == "relu":
        return layers.ReLU()
    if name == "relu6":
        return layers.ReLU(max_value=6.0)
    if name == "leaky_relu":
        return layers.LeakyReLU(negative_slope=0.1)  # torch_genome uses LeakyReLU(0.1)
    if name == "gelu":  # exact GELU via erf, like torch; Keras' own uses Erfc, which tf2onnx cannot export
        return layers.Activation(_gelu_erf)
    return layers.Activation({"hardswish": "hard_swish"}.get(name, name))


def _gelu_erf(x: Any) -> Any:
    ops = require_keras().ops
    return 0.5 * x * (1.0 + ops.erf(x * 0.7071067811865476))


def build(genome: Mapping[str, Any], input_shape: Sequence[int], num_classes: int, seed: int = 0) -> Any:
    """A seeded keras.Model for genome; input_shape is (channels, height, width), NCHW like torch."""
    keras = require_keras()
    layers = keras.layers
    check_genes(genome)
    depth, act, bn, separable, head, hidden, dropout = global_genes(genome, input_shape)
    keras.utils.set_random_seed(seed)
    c, h, w = (int(d) for d in input_shape)
    x = inputs = keras.Input((c, h, w), name="input")
    x = layers.Permute((2, 3, 1))(x)  # NCHW -> NHWC for Keras' Conv2D
    for i in range(1, depth + 1):
        width, k = stage_conv(genome, i)
        if separable and k > 1 and c > 1:
            x = layers.DepthwiseConv2D(k, padding="same", use_bias=False)(x)
            x = layers.Conv2D(width, 1, use_bias=not bn)(x)
        else:
            x = layers.Conv2D(width, k, padding="same", use_bias=not bn)(x)
        if bn:  # torch's BatchNorm2d defaults (eps 1e-5, momentum 0.1)
            x = layers.BatchNormalization(epsilon=1e-5, momentum=0.9)(x)
        x = _activation(act)(x)
        if stage_pools(genome, i, depth) and min(h, w) >= 2:
            x = layers.MaxPooling2D(2)(x)
            h, w = h // 2, w // 2
        c = width
    x = layers.GlobalAveragePooling2D()(x) if head == "gap" else layers.Flatten()(x)
    if dropout > 0:
        x = layers.Dropout(dropout, seed=seed)(x)
    if hidden > 0:
        x = layers.Dense(hidden)(x)
        x = _activation(act)(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="genome_cnn")


def param_count(model: Any) -> int:
    """Number of weights of a Keras model (trainable and not, e.g. BatchNorm statistics)."""
    return int(model.count_params())


def limit_threads(threads: int) -> None:
    """Limit TensorFlow's intra- and inter-op threads for training candidates.

    Possible only before TensorFlow's runtime starts; later it keeps its setting (logged at
    debug level). Raises MissingExtraError when Keras / TensorFlow is not installed.
    """
    require_keras()
    import tensorflow as tf

    threading = tf.config.threading
    try:
        if threading.get_intra_op_parallelism_threads() != threads:
            threading.set_intra_op_parallelism_threads(threads)
        if threading.get_inter_op_parallelism_threads() != threads:
            threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        log.debug("TensorFlow already initialized: keeping its thread settings")
