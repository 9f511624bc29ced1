"""Random views of the training images for quantization-aware fine-tuning.

The loss is distillation, so the fp32 model labels any input: a few hundred photo crops become an unbounded stream
of new crops, scales, mirror images and colours. Without it the fine-tuning fits the training photos (agreement on
held-back crops of those photos 0.82 -> 0.92) and not other photos (0.86 on EfficientNet-Lite0). Geometry is one
batched `grid_sample` (crop, zoom, aspect, mirror); colour is a per-image contrast, brightness and channel gain in the
model's own normalised units, with an occasional grey image. A quarter of every batch stays as it was, so the
inputs the model will see are always in the mix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

MIN_IMAGE_SIDE = 16  # smaller "images" are feature vectors or spectrogram frames: left alone


@dataclass(frozen=True)
class ImageAugmentation:
    keep: float = 0.25  # fraction of each batch left unchanged
    min_area: float = 0.3  # of the image a crop keeps, at least
    aspect: float = 4 / 3  # crops' aspect ratio jitter: within [1/aspect, aspect]
    mirror: float = 0.5
    contrast: float = 0.4  # factor within [1 - contrast, 1 + contrast]
    brightness: float = 0.3  # shift within +-brightness, in the input's units (normalised: about one std)
    channel_gain: float = 0.1
    grey: float = 0.1


def is_image_batch(tensor: torch.Tensor) -> bool:
    """An NCHW float batch with 1 or 3 channels and sides of at least MIN_IMAGE_SIDE."""
    return (tensor.dim() == 4 and tensor.is_floating_point() and tensor.shape[1] in (1, 3)
            and min(tensor.shape[2:]) >= MIN_IMAGE_SIDE)


def _uniform(count: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(count, generator=generator)


def augment_images(batch: torch.Tensor, generator: torch.Generator,
                   policy: ImageAugmentation = ImageAugmentation()) -> torch.Tensor:
    """A randomly cropped, zoomed, mirrored and recoloured view of each image (a `policy.keep` share unchanged)."""
    count, channels = batch.shape[:2]
    area = _uniform(count, policy.min_area, 1.0, generator)
    log_aspect = _uniform(count, -float(torch.log(torch.tensor(policy.aspect))), float(torch.log(torch.tensor(policy.aspect))), generator)
    scale_x = (area * log_aspect.exp()).sqrt().clamp(max=1.0)
    scale_y = (area / log_aspect.exp()).sqrt().clamp(max=1.0)
    shift_x = (2 * torch.rand(count, generator=generator) - 1) * (1 - scale_x)
    shift_y = (2 * torch.rand(count, generator=generator) - 1) * (1 - scale_y)
    mirror = torch.where(torch.rand(count, generator=generator) < policy.mirror, -1.0, 1.0)
    theta = torch.zeros(count, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = scale_x * mirror, shift_x
    theta[:, 1, 1], theta[:, 1, 2] = scale_y, shift_y
    grid = F.affine_grid(theta, list(batch.shape), align_corners=False)
    views = F.grid_sample(batch, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    mean = views.mean(dim=(1, 2, 3), keepdim=True)
    contrast = _uniform(count, 1 - policy.contrast, 1 + policy.contrast, generator).view(-1, 1, 1, 1)
    brightness = _uniform(count, -policy.brightness, policy.brightness, generator).view(-1, 1, 1, 1)
    gain = _uniform(count * channels, 1 - policy.channel_gain, 1 + policy.channel_gain, generator).view(count, channels, 1, 1)
    views = (views - mean) * contrast + mean + brightness
    views = views * gain
    if channels == 3:
        grey = (torch.rand(count, generator=generator) < policy.grey).view(-1, 1, 1, 1)
        views = torch.where(grey, views.mean(dim=1, keepdim=True).expand_as(views), views)
    keep = (torch.rand(count, generator=generator) < policy.keep).view(-1, 1, 1, 1)
    return torch.where(keep, batch, views).contiguous()
