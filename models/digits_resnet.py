"""The demo model of `make demo`: a ResNet-style CNN for the 8x8 digits, upsampled 4x inside the model.

Same input and output as the digits CNN (`input` [batch, 1, 8, 8] in [0, 1], `logits` [batch, 10]),
so it uses the same data files; at 32x32 and 1.2 M parameters (4.9 MB) it is big enough for int8
to pay on a CPU without VNNI. `onnxopt convert models/digits_resnet.py:build --weights models/digits_resnet.pt`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


# Same block as scripts/resnet.py on purpose: files in models/ are self-contained factories that
# `onnxopt convert models/digits_resnet.py:...` loads by path, without the scripts folder.
class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity or 1x1 projection shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.down: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.down(x))


class DigitsResNet(nn.Module):
    """Nearest 4x upsampling, a 3x3 stem, four basic blocks (32-64-128-256 wide), global pool, linear head."""

    def __init__(self, widths: tuple[int, ...] = (32, 64, 128, 256)) -> None:
        super().__init__()
        w0 = widths[0]
        self.upsample = nn.Upsample(scale_factor=4, mode="nearest")
        self.stem = nn.Sequential(nn.Conv2d(1, w0, 3, 1, 1, bias=False), nn.BatchNorm2d(w0), nn.ReLU())
        blocks = []
        cin = w0
        for i, cout in enumerate(widths):
            blocks.append(BasicBlock(cin, cout, 1 if i == 0 else 2))
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(self.upsample(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def build() -> nn.Module:
    """Factory used by `onnxopt convert` and scripts/build_models.py."""
    return DigitsResNet()


def example_inputs() -> tuple[np.ndarray, ...]:
    """One example batch (1x1x8x8 float32), so `onnxopt convert` needs no --input-shape."""
    return (np.zeros((1, 1, 8, 8), np.float32),)
