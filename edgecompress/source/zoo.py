"""A small model zoo (own code: torchvision has no CPU build here).

Teachers and students for the built-in digits example, and ResNet-18-style and
MobileNetV2-style networks for 224×224 benchmarks. `build_model(name, ...)` is the
one entry point; `ZOO` lists what exists.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn


def conv_bn_relu(in_ch: int, out_ch: int, stride: int = 1, groups: int = 1, relu6: bool = False) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, stride, 1, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU6(inplace=True) if relu6 else nn.ReLU(inplace=True),
    )


class PlainCNN(nn.Module):
    """A VGG-like stack: `widths[i]` channels per stage, stride 2 between stages, GAP + linear head.

    `first_stride = 2` halves the input at once: wide layers then cost a quarter as much,
    and the single-channel input conv, which int8 kernels gain nothing on, stays small.
    """

    def __init__(
        self, widths: tuple[int, ...] = (32, 64, 128), num_classes: int = 10, in_channels: int = 1, first_stride: int = 1
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for index, width in enumerate(widths):
            layers.append(conv_bn_relu(channels, width, stride=first_stride if index == 0 else 2))
            layers.append(conv_bn_relu(width, width))
            channels = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class BasicBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet18(nn.Module):
    """ResNet-18 layout (2-2-2-2 basic blocks); `small_input` swaps the 7×7/2 stem + maxpool for a 3×3/1 conv."""

    def __init__(
        self, num_classes: int = 1000, in_channels: int = 3, width: int = 64, small_input: bool = False
    ) -> None:
        super().__init__()
        if small_input:
            self.stem = conv_bn_relu(in_channels, width)
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, width, 7, 2, 3, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, 2, 1),
            )
        widths = [width, width * 2, width * 4, width * 8]
        blocks: list[nn.Module] = []
        channels = width
        for stage, stage_width in enumerate(widths):
            for index in range(2):
                stride = 2 if stage > 0 and index == 0 else 1
                blocks.append(BasicBlock(channels, stage_width, stride))
                channels = stage_width
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


def _make_divisible(value: float, divisor: int = 8) -> int:
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class InvertedResidual(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = in_ch * expand_ratio
        self.use_residual = stride == 1 and in_ch == out_ch
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers += [nn.Conv2d(in_ch, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True)]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
        ]
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.use_residual else self.block(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 layout with a width multiplier; `small_input` keeps the stem at stride 1."""

    SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]

    def __init__(
        self, num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0, small_input: bool = False
    ) -> None:
        super().__init__()
        channels = _make_divisible(32 * width_mult)
        last = _make_divisible(1280 * max(1.0, width_mult))
        layers: list[nn.Module] = [conv_bn_relu(in_channels, channels, stride=1 if small_input else 2, relu6=True)]
        for expand, width, repeats, stride in self.SETTINGS:
            out_ch = _make_divisible(width * width_mult)
            for index in range(repeats):
                layers.append(InvertedResidual(channels, out_ch, stride if index == 0 else 1, expand))
                channels = out_ch
        layers += [nn.Conv2d(channels, last, 1, bias=False), nn.BatchNorm2d(last), nn.ReLU6(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


ModelFactory = Callable[..., nn.Module]

ZOO: dict[str, ModelFactory] = {
    # digits-sized (1×32×32) models. The built-in example: a ResNet-18-layout teacher, distilled into
    # cnn-wide, whose layers are wide enough (64-256 channels at 16×16 to 4×4) for int8 kernels to pay
    "resnet18-digits": lambda num_classes=10, in_channels=1: ResNet18(num_classes, in_channels, width=16, small_input=True),
    "cnn-wide": lambda num_classes=10, in_channels=1: PlainCNN((64, 128, 256), num_classes, in_channels, first_stride=2),
    "digits-teacher": lambda num_classes=10, in_channels=1: PlainCNN((32, 64, 128), num_classes, in_channels),
    "cnn-small": lambda num_classes=10, in_channels=1: PlainCNN((16, 32, 64), num_classes, in_channels),
    "cnn-tiny": lambda num_classes=10, in_channels=1: PlainCNN((8, 16, 32), num_classes, in_channels),
    "mobilenetv2-digits": lambda num_classes=10, in_channels=1: MobileNetV2(
        num_classes, in_channels, width_mult=0.35, small_input=True
    ),
    # full-width MobileNetV2 (stride-2 stem) for grayscale digits upscaled past 32×32 (benchmarks/phones.py)
    "mobilenetv2-digits-wide": lambda num_classes=10, in_channels=1: MobileNetV2(num_classes, in_channels),
    # ImageNet-sized (3×224×224) models for benchmarks
    "resnet18": lambda num_classes=1000, in_channels=3: ResNet18(num_classes, in_channels),
    "mobilenetv2": lambda num_classes=1000, in_channels=3: MobileNetV2(num_classes, in_channels),
}


def build_model(name: str, num_classes: int | None = None, in_channels: int | None = None) -> nn.Module:
    from edgecompress.core.errors import ModelLoadError

    if name not in ZOO:
        raise ModelLoadError(f"unknown zoo model '{name}'", f"use one of: {', '.join(ZOO)} or package.module:factory")
    kwargs = {}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if in_channels is not None:
        kwargs["in_channels"] = in_channels
    return ZOO[name](**kwargs)
