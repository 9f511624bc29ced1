"""Tiny real digits classifiers for quantization tests, built in well under a second.

Random conv features + a ridge-regression head fitted in closed form: real torch modules,
real ONNX export, real digits data, ~95% top-1, and no training loop to wait for.
`outlier_scale` makes one channel of the first conv's output huge (and divides the
second conv's weights for it by the same factor), so fp32 is unchanged but int8 per-tensor
activation ranges are ruined at that tensor: a deliberately fragile layer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgecompress.data import digits_splits


class RidgeDigitsNet(nn.Module):
    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 4, stride=4)
        self.conv2 = nn.Conv2d(width, width, 1)
        self.head = nn.Linear(width * 8 * 8, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(torch.relu(self.conv2(torch.relu(self.conv1(x)))), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@torch.no_grad()
def ridge_digits_net(outlier_scale: float = 1.0, seed: int = 0) -> RidgeDigitsNet:
    torch.manual_seed(seed)
    model = RidgeDigitsNet().eval()
    train = digits_splits().train
    feats = model.features(torch.from_numpy(train.x)).double()
    feats = torch.cat([feats, torch.ones(len(feats), 1, dtype=torch.float64)], 1)
    targets = torch.nn.functional.one_hot(torch.from_numpy(train.y), 10).double()
    solution = torch.linalg.solve(feats.T @ feats + 1.0 * torch.eye(feats.shape[1], dtype=torch.float64), feats.T @ targets)
    model.head.weight.copy_(solution[:-1].T.float())
    model.head.bias.copy_(solution[-1].float())
    if outlier_scale != 1.0:  # ReLU is positively homogeneous: fp32 output unchanged
        model.conv1.weight[0] *= outlier_scale
        model.conv1.bias[0] *= outlier_scale
        model.conv2.weight[:, 0] /= outlier_scale
    return model


def export_onnx(model: nn.Module, path: Path, sample: np.ndarray) -> Path:
    torch.onnx.export(
        model, torch.from_numpy(sample[:1]), str(path), input_names=["input"], output_names=["logits"],
        dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}}, dynamo=False,
    )
    return path
