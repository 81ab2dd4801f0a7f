"""Synthetic probe inputs for the pruning fidelity floor, used when the user gives no data.

Two kinds of samples, each at batch 1 and seeded:
- `noise`: core.feeds.synthesize_feed (standard normal floats, small non-negative integers),
  with integer inputs named like a mask ('attention_mask') set to ones: random ids in a mask
  make a transformer's outputs NaN.
- `image-like`, for models with an image input (4-D float, 1/3/4 channels first or last):
  smooth random fields with a few flat rectangles (edges) and a little noise, in turn in
  [0, 1], [-1, 1] and standardized to mean 0 / std 1, since the normalization a model expects
  is unknown. Noise alone saturates classifier heads and never looks like a scene; on the
  scripts/realmodels corpus a 2-class text-orientation classifier pruned to output cosine
  0.999995 on noise was at 0.989 on real-looking text lines, and image-like samples see it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np
from onnx import ModelProto

from onnxopt.core.feeds import Feed, concat_feeds, synthesize_feed
from onnxopt.core.model import batch_axes

_CHANNELS = (1, 3, 4)


def _is_mask(name: str, arr: np.ndarray) -> bool:
    return bool(np.issubdtype(arr.dtype, np.integer)) and "mask" in re.findall(r"[a-z]+", name.lower())


def _image_layout(arr: np.ndarray) -> str | None:
    """'nchw' or 'nhwc' for a 4-D float array with a 1/3/4 channel axis and spatial dims > 4, else None."""
    if arr.ndim != 4 or not np.issubdtype(arr.dtype, np.floating):
        return None
    if arr.shape[1] in _CHANNELS and min(arr.shape[2:]) > 4:
        return "nchw"
    if arr.shape[3] in _CHANNELS and min(arr.shape[1:3]) > 4:
        return "nhwc"
    return None


def _interp(size: int, cells: int) -> np.ndarray:
    """(cells + 1, size) weights of linear interpolation from a coarse grid to `size` points."""
    points = np.linspace(0.0, cells, size)
    return np.stack([np.interp(points, np.arange(cells + 1), e) for e in np.eye(cells + 1)])


def _smooth(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth random field in [0, 1] of shape (h, w): a coarse random grid, bilinearly upsampled."""
    cells = int(rng.integers(2, 9))
    grid = rng.random((cells + 1, cells + 1))
    return _interp(h, cells).T @ grid @ _interp(w, cells)


def image_like(rng: np.random.Generator, shape: tuple[int, ...], layout: str, kind: int) -> np.ndarray:
    """One image-like batch of `shape`: per channel a smooth field, flat rectangles, a little noise;
    kind 0: in [0, 1], 1: in [-1, 1], 2: standardized."""
    n, c, h, w = (shape[0], shape[1], shape[2], shape[3]) if layout == "nchw" else (shape[0], shape[3], shape[1], shape[2])
    img = np.stack([np.stack([_smooth(rng, h, w) for _ in range(c)]) for _ in range(n)])
    for b in range(n):
        for _ in range(int(rng.integers(2, 6))):
            y, x = int(rng.integers(0, h)), int(rng.integers(0, w))
            dy, dx = int(rng.integers(h // 10 + 1, h // 2 + 2)), int(rng.integers(w // 10 + 1, w // 2 + 2))
            img[b, :, y:y + dy, x:x + dx] = rng.random((c, 1, 1))
    img = np.clip(img + rng.normal(0.0, 0.02, img.shape), 0.0, 1.0)
    if kind == 1:
        img = img * 2.0 - 1.0
    elif kind == 2:
        img = (img - img.mean()) / (img.std() + 1e-6)
    return img if layout == "nchw" else img.transpose(0, 2, 3, 1)


def synthetic_feed(
    model: ModelProto,
    samples: int,
    seed: int = 0,
    overrides: Mapping[str, tuple[int, ...]] | None = None,
) -> tuple[Feed, str]:
    """`samples` noise samples (seeds seed..seed+samples-1), plus as many image-like ones when
    the model has an image input, joined sample-wise; and a description ('8 noise + 8 image-like')."""
    axes = batch_axes(model)
    parts = []
    for i in range(samples):
        part = synthesize_feed(model, batch=1, overrides=overrides, seed=seed + i)
        parts.append({k: np.ones_like(v) if _is_mask(k, v) else v for k, v in part.items()})
    if not any(a is not None for a in axes.values()):
        return parts[0], "1 noise"  # nothing batched: one sample is all there is
    images = {k: layout for k, v in parts[0].items() if (layout := _image_layout(v)) is not None}
    described = f"{samples} noise"
    if images:
        for i in range(samples):
            rng = np.random.default_rng([seed, i, 1])
            parts.append({k: image_like(rng, v.shape, images[k], i % 3).astype(v.dtype) if k in images else v
                          for k, v in parts[i].items()})
        described += f" + {samples} image-like"
    return concat_feeds(parts, axes), described
