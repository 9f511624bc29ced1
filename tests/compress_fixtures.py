"""Tiny real models and real digits data shared by the compression tests (kept small: 2 shared cores)."""

from __future__ import annotations

import torch
from torch import nn

from edgecompress.compress.sources import split_labelled
from edgecompress.source.data import DigitsSplits, digits_splits
from edgecompress.source.zoo import PlainCNN

torch.set_num_threads(1)


def tiny_splits(count: int = 200) -> DigitsSplits:
    """`count` real digits images, split 60/20/20 like every data source."""
    full = digits_splits().train
    return split_labelled(full.x[:count], full.y[:count])


def tiny_cnn(widths: tuple[int, ...] = (4, 8), seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return PlainCNN(widths, num_classes=10, in_channels=1)


def tiny_digits_cnn() -> nn.Module:
    """A `package.module:factory` for build tests: a small digits CNN with random weights."""
    return tiny_cnn((16, 32, 64))


def ddp_teacher():
    """A factory (package.module:factory) for the torchrun test: teachers load without unpickling code."""
    return tiny_cnn((8, 16), seed=1)
