"""Where compression's inputs come from: labelled data (`--data`) and models (`--teacher`, `--student`).

Data is `digits` (the built-in example), a `.npz` holding model-ready `x` and integer
labels `y` (labels may be absent for soft-only distillation), or an image folder with
one sub-folder per class read through the build's preprocessing spec. Every source is
split the same seeded, stratified 60/20/20 way into train/validation/test.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import nn

from edgecompress.source.data import DigitsSplits as Splits
from edgecompress.source.data import LabelledArrays, digits_splits
from edgecompress.core.errors import ModelLoadError, TrainingDataError
from edgecompress.source.model import load_factory, load_serialized_torch
from edgecompress.device.preprocess import PreprocessSpec
from edgecompress.source.images import UnreadableImage, list_image_folder, read_image

UNLABELLED = -1  # label value of samples from a .npz without `y`


def split_labelled(x: np.ndarray, y: np.ndarray, seed: int = 0) -> Splits:
    """Seeded 60/20/20 split, stratified when every class has enough samples."""
    from sklearn.model_selection import train_test_split

    counts = np.unique(y, return_counts=True)[1]
    stratify = y if counts.min() >= 5 else None
    x_train, x_rest, y_train, y_rest = train_test_split(x, y, test_size=0.4, stratify=stratify, random_state=seed)
    x_val, x_test, y_val, y_test = train_test_split(
        x_rest, y_rest, test_size=0.5, stratify=y_rest if stratify is not None else None, random_state=seed
    )
    return Splits(LabelledArrays(x_train, y_train), LabelledArrays(x_val, y_val), LabelledArrays(x_test, y_test))


def _load_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = dict(archive)
    except (OSError, ValueError) as error:
        raise TrainingDataError(f"cannot read {path}: {error}", "pass a .npz written by numpy.savez(x=..., y=...)") from None
    if "x" not in arrays:
        raise TrainingDataError(f"{path} has no array 'x' (found: {', '.join(arrays) or 'none'})", "save inputs as x=")
    x = np.ascontiguousarray(arrays["x"], dtype=np.float32)
    if x.ndim < 2 or len(x) < 10 or not np.isfinite(x).all():
        raise TrainingDataError(
            f"{path}: x must be a finite batch (N, ...) with N >= 10, got shape {x.shape}", "save model-ready inputs"
        )
    if "y" not in arrays:
        return x, np.full(len(x), UNLABELLED, dtype=np.int64)
    y = np.asarray(arrays["y"])
    if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
        raise TrainingDataError(
            f"{path}: y must hold one non-negative integer class per sample, got shape {y.shape} dtype {y.dtype}",
            "save class indices as y=",
        )
    return x, y.astype(np.int64)


def _load_image_folder(root: Path, preprocess: PreprocessSpec | None) -> tuple[np.ndarray, np.ndarray]:
    """DIR/<class>/<image> (source.images, the reader calibration uses too) -> images and class indices."""
    if preprocess is None:
        raise TrainingDataError(f"image folder {root} needs a preprocessing spec", "set the [preprocess] config section")
    images = [image for image in list_image_folder(root) if image.label is not None]
    labels = [image.label for image in images if image.label is not None]  # all of them, typed as present
    classes = sorted(set(labels))
    if len(classes) < 2 or len(images) < 10:
        raise TrainingDataError(
            f"{root} holds {len(classes)} class folders and {len(images)} images", "use DIR/<class>/<image> with >= 2 classes"
        )
    try:
        x = np.stack([read_image(image.path, preprocess)[0] for image in images])
    except UnreadableImage as exc:
        raise TrainingDataError(f"cannot read training image {exc}", "remove or replace the file") from None
    index = {name: position for position, name in enumerate(classes)}
    return x, np.array([index[label] for label in labels], dtype=np.int64)


def load_labelled_data(source: str, preprocess: PreprocessSpec | None = None, seed: int = 0) -> Splits:
    """`digits`, `FILE.npz` or `DIR` -> train/val/test splits of model-ready arrays."""
    if source == "digits":
        return digits_splits(seed)
    path = Path(source)
    if path.is_dir():
        return split_labelled(*_load_image_folder(path, preprocess), seed=seed)
    if path.is_file() and path.suffix == ".npz":
        return split_labelled(*_load_npz(path), seed=seed)
    raise TrainingDataError(f"no training data at '{source}'", "pass --data digits, an image folder or a .npz with x and y")


def has_labels(data: LabelledArrays) -> bool:
    return bool(len(data)) and bool((data.y != UNLABELLED).all())


def load_model(spec: str, num_classes: int | None = None, in_channels: int | None = None) -> nn.Module:
    """A zoo name, `package.module:factory` (called without arguments), TorchScript .pt or torch.export .pt2."""
    from edgecompress.source.zoo import ZOO, build_model

    if spec in ZOO:
        return build_model(spec, num_classes, in_channels)
    if spec.endswith((".pt", ".pth", ".pt2", ".ts")):
        model = load_serialized_torch(Path(spec))  # one loader for --model, --teacher and --student: no unpickling
    elif ":" in spec:
        model = load_factory(spec, None)
    else:
        raise ModelLoadError(
            f"unknown model '{spec}'",
            f"use a zoo name ({', '.join(ZOO)}), package.module:factory, a TorchScript .pt or a torch.export .pt2 file",
        )
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"'{spec}' gave a {type(model).__name__}, not a torch.nn.Module", "return an nn.Module")
    return model


def parse_feature_pairs(pairs: list[str]) -> tuple[tuple[str, str], ...]:
    """`student_layer=teacher_layer` strings -> pairs for feature distillation."""
    from edgecompress.core.errors import DistillationError

    parsed = []
    for pair in pairs:
        student, sep, teacher = pair.partition("=")
        if not sep or not student or not teacher:
            raise DistillationError(f"feature pair '{pair}' is not student_layer=teacher_layer", "e.g. features.3=features.5")
        parsed.append((student.strip(), teacher.strip()))
    return tuple(parsed)
