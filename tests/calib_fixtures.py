"""Real data for calibration tests: scikit-image's bundled photos written as JPEG/PNG files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

COLOUR_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "colorwheel")
GRAY_PHOTOS = ("camera", "coins", "moon", "page", "clock", "grass")


def photo(name: str, side: int = 96) -> Image.Image:
    """A skimage sample photo, shrunk so tests stay fast (aspect ratio kept)."""
    import skimage.data

    image = Image.fromarray(getattr(skimage.data, name)())
    image.thumbnail((side, side))
    return image


def write_photo_folder(root: Path, names_by_class: dict[str, tuple[str, ...]], suffix: str = ".jpg") -> Path:
    """root/<class>/<photo><suffix> for every class; returns root."""
    for label, names in names_by_class.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        for name in names:
            photo(name).save(root / label / f"{name}{suffix}")
    return root


def tiny_bn_model(in_channels: int = 1, classes: int = 3) -> nn.Module:
    """Conv → BN → ReLU → pool → linear, its BN statistics gathered from `bn_training_data`."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(in_channels, 4, 3, padding=1, bias=False),
        nn.BatchNorm2d(4, momentum=None),  # momentum None: running stats are the plain average
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, classes),
    )
    model.train()
    with torch.no_grad():
        for batch in np.split(bn_training_data(in_channels), 4):
            model(torch.from_numpy(batch))
    return model.eval()


def bn_training_data(in_channels: int = 1, count: int = 64, side: int = 8) -> np.ndarray:
    """The 'training data' of the tiny model: values centred on 0.5 with spread 0.2."""
    rng = np.random.default_rng(0)
    return (0.5 + 0.2 * rng.standard_normal((count, in_channels, side, side))).astype(np.float32)


def export_tiny_onnx(path: Path) -> Path:
    """The tiny BatchNorm model as ONNX (input 'input', 1×8×8; the fast TorchScript exporter)."""
    from edgecompress.export.torch_export import export_torch

    export_torch(tiny_bn_model(), {"input": (1, 1, 8, 8)}, path, exporter="torchscript")
    return path
