"""Build a PyTorch CNN from a search genome (the digits-CNN family of examples/search_space.toml).

The network is ``depth`` stages of [conv (optionally depthwise-separable) -> BatchNorm ->
activation -> optional 2x2 max-pool], then ``flatten`` or global average pooling, an optional
hidden fully-connected layer, and a linear classifier. Genes and defaults:

  depth (required), width_<i> or width, kernel_<i> or kernel (3), pool_<i> (after the last two
  stages), separable (false), activation (relu), batchnorm (true), head (flatten), hidden (0),
  dropout (0.0).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from onnxopt.core.errors import InvalidInputError
from onnxopt.frameworks import require_torch

ACTIVATIONS = ("relu", "relu6", "leaky_relu", "hardswish", "silu", "gelu", "tanh")
HEADS = ("flatten", "gap")
_FIXED = {"depth", "width", "kernel", "separable", "activation", "batchnorm", "head", "hidden", "dropout"}
_PER_STAGE = re.compile(r"^(width|kernel|pool)_(\d+)$")


def check_genes(names: Iterable[str]) -> None:
    """Raise InvalidInputError naming genes this builder does not understand (typos, other families)."""
    names = list(names)
    unknown = [n for n in names if n not in _FIXED and not _PER_STAGE.match(n)]
    if unknown:
        raise InvalidInputError(
            f"the PyTorch CNN builder does not know gene(s) {', '.join(unknown)}; "
            "known: depth, width_<i>/width, kernel_<i>/kernel, pool_<i>, separable, activation, "
            "batchnorm, head, hidden, dropout"
        )
    if "depth" not in names:
        raise InvalidInputError("the search space needs a 'depth' gene (number of conv stages)")


def stage_value(genome: Mapping[str, Any], name: str, i: int, default: Any) -> Any:
    """Gene <name>_<i> of stage i, else gene <name>, else default."""
    v = genome.get(f"{name}_{i}")
    if v is None:
        v = genome.get(name)
    return default if v is None else v


def stage_conv(genome: Mapping[str, Any], i: int) -> tuple[int, int]:
    """(width, kernel size) of stage i; InvalidInputError when the width is missing or the kernel even."""
    width = stage_value(genome, "width", i, None)
    if width is None:
        raise InvalidInputError(f"genome has no width for stage {i}: add gene width_{i} or width")
    width = int(width)
    k = int(stage_value(genome, "kernel", i, 3))
    if k < 1 or k % 2 == 0:
        raise InvalidInputError(f"kernel_{i} must be odd and >= 1, got {k}")
    return width, k


def stage_pools(genome: Mapping[str, Any], i: int, depth: int) -> bool:
    """Whether stage i ends in a 2x2 max-pool (pool_<i>; by default after the last two stages)."""
    pool = genome.get(f"pool_{i}")
    return bool(i > depth - 2 if pool is None else pool)


def _activation(name: str) -> Any:
    nn = require_torch().nn
    table = {
        "relu": nn.ReLU, "relu6": nn.ReLU6, "leaky_relu": lambda: nn.LeakyReLU(0.1),
        "hardswish": nn.Hardswish, "silu": nn.SiLU, "gelu": nn.GELU, "tanh": nn.Tanh,
    }
    if name not in table:
        raise InvalidInputError(f"activation {name!r} unknown; choose one of {', '.join(ACTIVATIONS)}")
    return table[name]()


def global_genes(
    genome: Mapping[str, Any], input_shape: Sequence[int]
) -> tuple[int, str, bool, bool, str, int, float]:
    """(depth, activation, batchnorm, separable, head, hidden, dropout) with defaults, validated."""
    if len(input_shape) != 3:
        raise InvalidInputError(f"the CNN builder needs images (C, H, W); got input shape {tuple(input_shape)}")
    depth = int(genome.get("depth") or 0)
    if depth < 1:
        raise InvalidInputError(f"depth must be >= 1, got {genome.get('depth')!r}")
    head = str(genome.get("head", "flatten"))
    if head not in HEADS:
        raise InvalidInputError(f"head {head!r} unknown; choose one of {', '.join(HEADS)}")
    return (
        depth,
        str(genome.get("activation", "relu")),
        bool(genome.get("batchnorm", True)),
        bool(genome.get("separable", False)),
        head,
        int(genome.get("hidden", 0) or 0),
        float(genome.get("dropout", 0.0) or 0.0),
    )


def build(genome: Mapping[str, Any], input_shape: Sequence[int], num_classes: int, seed: int = 0) -> Any:
    """A seeded nn.Module for genome; input_shape is (channels, height, width)."""
    torch = require_torch()
    nn = torch.nn
    depth, act, bn, separable, head, hidden, dropout = global_genes(genome, input_shape)
    torch.manual_seed(seed)
    c, h, w = (int(d) for d in input_shape)
    layers: list[Any] = []
    for i in range(1, depth + 1):
        width, k = stage_conv(genome, i)
        if separable and k > 1 and c > 1:
            layers += [nn.Conv2d(c, c, k, padding=k // 2, groups=c, bias=False),
                       nn.Conv2d(c, width, 1, bias=not bn)]
        else:
            layers.append(nn.Conv2d(c, width, k, padding=k // 2, bias=not bn))
        if bn:
            layers.append(nn.BatchNorm2d(width))
        layers.append(_activation(act))
        if stage_pools(genome, i, depth) and min(h, w) >= 2:
            layers.append(nn.MaxPool2d(2))
            h, w = h // 2, w // 2
        c = width
    if head == "gap":
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        features = c
    else:
        layers.append(nn.Flatten())
        features = c * h * w
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    if hidden > 0:
        layers += [nn.Linear(features, hidden), _activation(act), nn.Linear(hidden, num_classes)]
    else:
        layers.append(nn.Linear(features, num_classes))
    return nn.Sequential(*layers)


def count_params(genome: Mapping[str, Any], input_shape: Sequence[int], num_classes: int) -> int:
    """Parameters of build(genome, ...) computed without torch (cheap enough for constraints)."""
    depth = int(genome.get("depth") or 0)
    bn = bool(genome.get("batchnorm", True))
    separable = bool(genome.get("separable", False))
    hidden = int(genome.get("hidden", 0) or 0)
    c, h, w = (int(d) for d in input_shape)
    total = 0
    for i in range(1, depth + 1):
        width = int(stage_value(genome, "width", i, 0))
        k = int(stage_value(genome, "kernel", i, 3))
        if separable and k > 1 and c > 1:
            total += c * k * k + c * width + (0 if bn else width)
        else:
            total += c * width * k * k + (0 if bn else width)
        if bn:
            total += 2 * width
        if stage_pools(genome, i, depth) and min(h, w) >= 2:
            h, w = h // 2, w // 2
        c = width
    features = c if genome.get("head", "flatten") == "gap" else c * h * w
    if hidden > 0:
        return total + features * hidden + hidden + hidden * num_classes + num_classes
    return total + features * num_classes + num_classes


def param_count(module: Any) -> int:
    """Number of parameters of a torch module."""
    return int(sum(p.numel() for p in module.parameters()))


# The hand-written baseline of the family: models/digits_cnn.py expressed as a genome.
DIGITS_BASELINE: dict[str, Any] = {
    "depth": 3, "width_1": 16, "width_2": 32, "width_3": 64,
    "kernel_1": 3, "kernel_2": 3, "kernel_3": 3,
    "pool_1": False, "pool_2": True, "pool_3": True,
    "separable": False, "activation": "relu", "batchnorm": True, "head": "flatten", "hidden": 128,
}
