"""3D ResNeXt-101 (Hara et al., CVPR 2018), written to match the released Kinetics checkpoint.

Module names and shapes follow the layout of `resnext101.pth` (the checkpoint the HowTo100M
extractor loads): conv1 / bn1 / layer1..layer4 (blocks with conv1-3, bn1-3, downsample.0/.1) / fc.
Cardinality 32, shortcut type B (1x1x1 conv + BN when the shape changes), bottleneck expansion 2.
For a 16x112x112 clip the last stage is 1x4x4; the average pool over it gives the 2048-d feature.
"""

from __future__ import annotations

import torch
from torch import nn

LAYERS_101 = (3, 4, 23, 3)
STAGE_PLANES = (128, 256, 512, 1024)
CARDINALITY = 32
EXPANSION = 2
KINETICS_CLASSES = 400


class ResNeXtBottleneck3d(nn.Module):
    """1x1x1 reduce -> grouped 3x3x3 (carries the stride) -> 1x1x1 expand, plus the shortcut."""

    def __init__(self, in_channels: int, planes: int, cardinality: int, stride: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        width = cardinality * (planes // 32)
        self.conv1 = nn.Conv3d(in_channels, width, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm3d(width)
        self.conv2 = nn.Conv3d(width, width, kernel_size=3, stride=stride, padding=1, groups=cardinality,
                               bias=False)
        self.bn2 = nn.BatchNorm3d(width)
        self.conv3 = nn.Conv3d(width, planes * EXPANSION, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm3d(planes * EXPANSION)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + shortcut)


class ResNeXt3d(nn.Module):
    """Clips (B, 3, T, H, W) -> pooled features (B, 2048); `fc` kept only so checkpoints load as saved."""

    def __init__(self, layers: tuple[int, ...] = LAYERS_101, cardinality: int = CARDINALITY,
                 num_classes: int | None = KINETICS_CLASSES) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(3, 64, kernel_size=7, stride=(1, 2, 2), padding=3, bias=False)
        self.bn1 = nn.BatchNorm3d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d(kernel_size=3, stride=2, padding=1)
        in_channels = 64
        stages = []
        for index, (planes, blocks) in enumerate(zip(STAGE_PLANES, layers)):
            stride = 1 if index == 0 else 2
            stages.append(make_stage(in_channels, planes, blocks, cardinality, stride))
            in_channels = planes * EXPANSION
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.feature_dim = in_channels
        self.fc = nn.Linear(in_channels, num_classes) if num_classes else None
        initialise(self)

    def features(self, clips: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(clips))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return x.mean(dim=(2, 3, 4))

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        """The 2048-d pooled feature (the extractor never applies the classifier)."""
        return self.features(clips)


def make_stage(in_channels: int, planes: int, blocks: int, cardinality: int, stride: int) -> nn.Sequential:
    downsample = None
    if stride != 1 or in_channels != planes * EXPANSION:
        downsample = nn.Sequential(
            nn.Conv3d(in_channels, planes * EXPANSION, kernel_size=1, stride=stride, bias=False),
            nn.BatchNorm3d(planes * EXPANSION),
        )
    layers = [ResNeXtBottleneck3d(in_channels, planes, cardinality, stride, downsample)]
    layers += [ResNeXtBottleneck3d(planes * EXPANSION, planes, cardinality) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


def initialise(model: nn.Module) -> None:
    """He init for convolutions and BN at identity, as in Hara et al.'s code."""
    for module in model.modules():
        if isinstance(module, nn.Conv3d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out")
        elif isinstance(module, nn.BatchNorm3d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
