"""Random views of training images for QAT (quantize/augment.py): the geometry is what it says, seeded, and only
image batches are varied."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgecompress.quantize.augment import ImageAugmentation, augment_images, is_image_batch
from edgecompress.quantize.qat import _augmentable
from edgecompress.source.layout import BatchLayout

NOTHING = ImageAugmentation(keep=0.0, min_area=1.0, aspect=1.0, mirror=0.0, contrast=0.0, brightness=0.0,
                            channel_gain=0.0, grey=0.0)


def _images(count: int = 8, channels: int = 3, size: tuple[int, int] = (24, 40)) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(0).standard_normal((count, channels, *size)).astype(np.float32))


@pytest.mark.parametrize("shape, dtype, expected", [
    ((2, 3, 32, 32), torch.float32, True), ((2, 1, 48, 192), torch.float32, True),
    ((2, 10), torch.float32, False), ((2, 3, 8, 8), torch.float32, False), ((2, 5, 32, 32), torch.float32, False),
    ((2, 3, 32, 32), torch.int64, False),
])
def test_only_nchw_float_images_of_one_or_three_channels_count_as_images(shape, dtype, expected):
    assert is_image_batch(torch.zeros(shape, dtype=dtype)) is expected


def test_the_identity_policy_returns_the_images_and_a_mirror_only_policy_flips_them():
    batch = _images()
    assert torch.allclose(augment_images(batch, torch.Generator().manual_seed(0), NOTHING), batch, atol=1e-5)
    mirrored = augment_images(batch, torch.Generator().manual_seed(0), ImageAugmentation(**{**NOTHING.__dict__, "mirror": 1.0}))
    assert torch.allclose(mirrored, torch.flip(batch, dims=[3]), atol=1e-5)


def test_views_are_seeded_new_per_call_and_keep_a_share_unchanged():
    batch = _images(count=64)
    first = augment_images(batch, torch.Generator().manual_seed(1))
    again = augment_images(batch, torch.Generator().manual_seed(1))
    other = augment_images(batch, torch.Generator().manual_seed(2))
    assert first.shape == batch.shape and first.dtype == batch.dtype
    assert torch.equal(first, again) and not torch.equal(first, other)
    unchanged = (first == batch).flatten(1).all(1).float().mean()
    assert 0.05 < float(unchanged) < 0.5  # keep = 0.25 of 64
    assert torch.isfinite(first).all()


def test_a_crop_zooms_in_and_colour_changes_contrast():
    ramp = torch.linspace(-1, 1, 64).repeat(1, 1, 64, 1)  # left to right
    zoomed = augment_images(ramp, torch.Generator().manual_seed(0),
                            ImageAugmentation(**{**NOTHING.__dict__, "min_area": 0.25}))
    # a crop of at most the whole width spans at most the whole ramp
    assert float(zoomed[..., -1].mean() - zoomed[..., 0].mean()) <= 2.0 + 1e-5
    flat = augment_images(ramp, torch.Generator().manual_seed(0), ImageAugmentation(**{**NOTHING.__dict__, "contrast": 0.9}))
    assert not torch.allclose(flat.std(), ramp.std(), rtol=0.01)


def test_qat_varies_one_image_input_and_leaves_other_inputs_alone():
    layout = BatchLayout({})
    assert _augmentable({"input": np.zeros((4, 1, 32, 32), np.float32)}, layout)
    assert not _augmentable({"features": np.zeros((4, 64), np.float32)}, layout)
    assert not _augmentable({"a": np.zeros((4, 3, 32, 32), np.float32), "b": np.zeros((4, 3, 32, 32), np.float32)}, layout)
    assert not _augmentable({"audio": np.zeros((1, 4, 3, 32, 32), np.float32)}, BatchLayout({"audio": 1}))
