"""The preprocessing spec: how a raw image becomes a model input.

Defined once and stored with every calibration set, report and bundle; calibration,
evaluation and the device runner all apply this same code. The module depends only on
numpy and Pillow on purpose: bundles copy this file next to the device runner.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

try:  # Pillow is optional for array-only use on the device
    from PIL import Image
except ImportError:  # pragma: no cover
    Image = None  # type: ignore[assignment]


@dataclass(frozen=True)
class PreprocessSpec:
    """Resize → center crop → colour → scale → normalize → layout → dtype.

    resize: None, an int (shorter side, aspect kept) or [height, width] (exact).
    center_crop: None, an int (square) or [height, width].
    color: "rgb" or "grayscale".
    scale: multiplier applied to the 0..255 pixel values (1/255 gives [0, 1]).
    mean, std: per-channel normalization after scaling (one value broadcasts).
    layout: "NCHW" or "NHWC" of the produced batch.
    """

    resize: int | tuple[int, int] | None = None
    center_crop: int | tuple[int, int] | None = None
    color: str = "rgb"
    scale: float = 1.0 / 255.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    layout: str = "NCHW"
    dtype: str = "float32"
    resample: str = "bilinear"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.color not in ("rgb", "grayscale"):
            raise ValueError(f"color must be 'rgb' or 'grayscale', got {self.color!r}")
        if self.layout not in ("NCHW", "NHWC"):
            raise ValueError(f"layout must be 'NCHW' or 'NHWC', got {self.layout!r}")
        if any(s == 0 for s in self.std):
            raise ValueError("std values must be non-zero")

    @property
    def channels(self) -> int:
        return 3 if self.color == "rgb" else 1

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("resize", "center_crop", "mean", "std"):
            if isinstance(data[key], tuple):
                data[key] = list(data[key])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PreprocessSpec":
        data = dict(data)
        for key in ("resize", "center_crop"):
            if isinstance(data.get(key), list):
                data[key] = tuple(data[key])
        for key in ("mean", "std"):
            if key in data:
                data[key] = tuple(float(v) for v in data[key])
        return cls(**data)

    # -- image path -------------------------------------------------------------------
    def image_to_array(self, image: "Image.Image") -> np.ndarray:
        """One PIL image → one HWC float array after resize, crop and colour conversion."""
        image = image.convert("RGB" if self.color == "rgb" else "L")
        resample = getattr(Image.Resampling, self.resample.upper())
        if isinstance(self.resize, int):
            width, height = image.size
            ratio = self.resize / min(width, height)
            image = image.resize((max(1, round(width * ratio)), max(1, round(height * ratio))), resample)
        elif self.resize is not None:
            image = image.resize((int(self.resize[1]), int(self.resize[0])), resample)
        if self.center_crop is not None:
            crop_h, crop_w = _pair(self.center_crop)
            width, height = image.size
            left, top = (width - crop_w) // 2, (height - crop_h) // 2
            image = image.crop((left, top, left + crop_w, top + crop_h))
        array = np.asarray(image, dtype=np.float32)
        return array[..., None] if array.ndim == 2 else array

    def images_to_batch(self, images: Sequence["Image.Image"]) -> np.ndarray:
        return self.normalize(np.stack([self.image_to_array(img) for img in images]))

    # -- array path -------------------------------------------------------------------
    def normalize(self, batch_nhwc: np.ndarray) -> np.ndarray:
        """NHWC pixel values (0..255) → scaled, normalized batch in the spec's layout/dtype."""
        batch = batch_nhwc.astype(np.float32) * np.float32(self.scale)
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        batch = (batch - mean) / std
        if self.layout == "NCHW":
            batch = batch.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(batch.astype(self.dtype))


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) else (int(value[0]), int(value[1]))
