"""The digits CNN sample model in PyTorch: `onnxopt convert models/digits_cnn.py:build --weights models/digits_cnn.pt`."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class DigitsCNN(nn.Module):
    """A small conv-BN-ReLU network for 1x8x8 digit images (values in [0, 1]); outputs 10 logits."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(1, w, 3, padding=1, bias=False),
            nn.BatchNorm2d(w),
            nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * w),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1, bias=False),
            nn.BatchNorm2d(4 * w),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(4 * w * 2 * 2, 128),
            nn.ReLU(),
            nn.Linear(128, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def build() -> nn.Module:
    """Factory used by `onnxopt convert` and scripts/build_models.py."""
    return DigitsCNN()


def example_inputs() -> tuple[np.ndarray, ...]:
    """One example batch (1x1x8x8 float32), so `onnxopt convert` needs no --input-shape."""
    return (np.zeros((1, 1, 8, 8), np.float32),)
