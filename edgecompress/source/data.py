"""The built-in example's data: scikit-learn's handwritten digits (real, shipped, offline).

1,797 8×8 grayscale scans are turned into 8-bit images and preprocessed with the same
`PreprocessSpec` that calibration, evaluation and the device runner use. The split is
stratified and seeded, so every build sees the same train/validation/test images.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from edgecompress.device.preprocess import PreprocessSpec

DIGITS_INPUT_NAME = "input"
DIGITS_SIZE = 32
DIGITS_SPEC = PreprocessSpec(
    resize=(DIGITS_SIZE, DIGITS_SIZE), color="grayscale", scale=1.0 / 255.0, mean=(0.5,), std=(0.5,)
)
DIGITS_LABELS = [str(d) for d in range(10)]


@dataclass(frozen=True)
class LabelledArrays:
    """Model-ready inputs `x` (N, C, H, W float32) with integer labels `y` (N,)."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)

    def take(self, count: int) -> "LabelledArrays":
        return LabelledArrays(self.x[:count], self.y[:count])


@dataclass(frozen=True)
class DigitsSplits:
    train: LabelledArrays
    val: LabelledArrays
    test: LabelledArrays


def digits_images() -> tuple[np.ndarray, np.ndarray]:
    """Raw digits as uint8 8×8 images (N, 8, 8) with labels (N,)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.clip(np.round(bunch.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    return images, bunch.target.astype(np.int64)


def preprocess_digits(images: np.ndarray, spec: PreprocessSpec = DIGITS_SPEC) -> np.ndarray:
    from PIL import Image

    return spec.images_to_batch([Image.fromarray(img, mode="L") for img in images])


@dataclass(frozen=True)
class SplitIndices:
    """Indices into `digits_images()` of each split, so other code can pick raw images per split."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


@lru_cache(maxsize=2)
def digits_split_indices(seed: int = 0) -> SplitIndices:
    """Stratified, seeded 60/20/20 train/validation/test split of the digits."""
    from sklearn.model_selection import train_test_split

    _, labels = digits_images()
    indices = np.arange(len(labels))
    train, rest = train_test_split(indices, test_size=0.4, stratify=labels, random_state=seed)
    val, test = train_test_split(rest, test_size=0.5, stratify=labels[rest], random_state=seed)
    return SplitIndices(train, val, test)


@lru_cache(maxsize=2)
def digits_splits(seed: int = 0) -> DigitsSplits:
    """The split of `digits_split_indices`, preprocessed for the zoo's models."""
    images, labels = digits_images()
    x = preprocess_digits(images)
    split = digits_split_indices(seed)
    return DigitsSplits(*(LabelledArrays(x[i], labels[i]) for i in (split.train, split.val, split.test)))
