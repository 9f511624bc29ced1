"""Shared fixtures: tiny real models, real digits data, and a shared teacher cache."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

# The built-in teacher is trained once per machine and reused by every test that needs it.
os.environ.setdefault("EDGECOMPRESS_CACHE", str(Path(__file__).resolve().parent.parent / ".pytest_cache" / "edgecompress"))
os.environ.setdefault("EDGECOMPRESS_QUIET", "1")
torch.set_num_threads(2)


class TinyNet(torch.nn.Module):
    """Conv-BN-ReLU-pool-linear on 1×8×8 inputs: the smallest model that still quantizes like a real CNN."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(torch.relu(self.bn(self.conv(x)))), 1))


def make_tiny_net() -> torch.nn.Module:
    """Factory used by tests as `tests.conftest:make_tiny_net`."""
    torch.manual_seed(0)
    return TinyNet().eval()


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory) -> Path:
    """A tiny fp32 ONNX file exported by torch (the TorchScript exporter: fast)."""
    from edgecompress.export.torch_export import export_torch

    path = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    export_torch(make_tiny_net(), {"input": (1, 1, 8, 8)}, path, exporter="torchscript")
    return path


@pytest.fixture(scope="session")
def tiny_calib(tmp_path_factory) -> Path:
    """Real digits images (8×8, scaled to [0, 1]) as a calibration .npz for TinyNet."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images[:64] / 16.0).astype(np.float32)[:, None]
    path = tmp_path_factory.mktemp("calib") / "tiny_calib.npz"
    np.savez(path, input=x, y=digits.target[:64])
    return path
