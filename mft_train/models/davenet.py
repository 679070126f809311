"""Residual DAVEnet audio encoders (v2 for Everything-at-Once, v1 for MCN), trained from scratch.

Input: log-mel (B, mels, T). A stem Conv2d(1 -> widths[0], kernel mels x 1) collapses the mel axis;
then residual stages of 1-D blocks [conv k9 -> BN -> ReLU -> conv k9 -> BN] + shortcut, ReLU after the
sum. The first block of every stage halves time, so the total stride is 2 ** len(depths) (x64 for v2,
x16 for v1). Convolutions on (B, C, 1, T) with 1 x 9 kernels are written as Conv1d on (B, C, T): same
parameters, same arithmetic. No conv biases (BatchNorm follows each); He init.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from howto_prep.schema import LOGMEL

# version -> (stage widths, stage depths); docs/recipes.md section 5 (v2) and section 8 (v1).
DAVENET_PRESETS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "v2": ((128, 256, 512, 1024, 2048, 4096), (2, 2, 1, 1, 1, 1)),
    "v1": ((128, 256, 512, 1024), (2, 2, 2, 2)),
}
KERNEL = 9


class ResidualBlock(nn.Module):
    """Two k9 convolutions with BatchNorm; a 1x1 conv + BN shortcut when the shape changes."""

    def __init__(self, in_width: int, out_width: int, stride: int) -> None:
        super().__init__()
        pad = KERNEL // 2
        self.conv1 = nn.Conv1d(in_width, out_width, KERNEL, stride=stride, padding=pad, bias=False)
        self.bn1 = nn.BatchNorm1d(out_width)
        self.conv2 = nn.Conv1d(out_width, out_width, KERNEL, padding=pad, bias=False)
        self.bn2 = nn.BatchNorm1d(out_width)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_width != out_width:
            self.shortcut = nn.Sequential(
                nn.Conv1d(in_width, out_width, 1, stride=stride, bias=False), nn.BatchNorm1d(out_width)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class DAVEnet(nn.Module):
    """Residual DAVEnet: (B, mels, T) log-mel -> (B, widths[-1], ceil(T / total_stride)) features."""

    def __init__(self, widths: Sequence[int], depths: Sequence[int], mels: int = LOGMEL.dim) -> None:
        super().__init__()
        if len(widths) != len(depths) or not widths:
            raise ValueError("DAVEnet needs one width per stage depth")
        self.mels = mels
        self.total_stride = 2 ** len(depths)
        self.out_dim = int(widths[-1])
        self.stem = nn.Conv2d(1, widths[0], kernel_size=(mels, 1), bias=False)
        self.stem_bn = nn.BatchNorm1d(widths[0])
        blocks: list[nn.Module] = []
        in_width = widths[0]
        for width, depth in zip(widths, depths):
            for index in range(depth):
                blocks.append(ResidualBlock(in_width, width, stride=2 if index == 0 else 1))
                in_width = width
        self.blocks = nn.Sequential(*blocks)
        self._he_init()

    def _he_init(self) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Conv1d, nn.Conv2d)):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm1d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def output_length(self, frames: int) -> int:
        """Token count for `frames` input frames: each stride-2 stage maps L to ceil(L / 2)."""
        return math.ceil(frames / self.total_stride)

    def forward(self, logmel: torch.Tensor) -> torch.Tensor:
        x = self.stem(logmel.unsqueeze(1)).squeeze(2)  # (B, 1, mels, T) -> (B, C, T)
        x = F.relu(self.stem_bn(x))
        return self.blocks(x)


def downsample_mask(mask: torch.Tensor, stride: int) -> torch.Tensor:
    """Frame mask (B, T) -> token mask (B, ceil(T / stride)): a token is real if any of its frames is.

    Matches DAVEnet's output length (ceil at every stage) and the EAO code's max-pooling of the mask.
    """
    pooled = F.max_pool1d(mask.to(torch.float32).unsqueeze(1), kernel_size=stride, stride=stride, ceil_mode=True)
    return pooled.squeeze(1) > 0


def build_davenet(
    version: str = "v2",
    widths: Sequence[int] | None = None,
    depths: Sequence[int] | None = None,
    mels: int = LOGMEL.dim,
) -> DAVEnet:
    """DAVEnet of a paper version, with optional width/depth overrides (small CPU presets)."""
    if version not in DAVENET_PRESETS:
        raise ValueError(f"unknown DAVEnet version {version!r}; expected one of {sorted(DAVENET_PRESETS)}")
    preset_widths, preset_depths = DAVENET_PRESETS[version]
    return DAVEnet(widths or preset_widths, depths or preset_depths, mels=mels)
