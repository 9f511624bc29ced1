"""The one image-folder reader: calibration sets (`edgecompress calib --from DIR`) and training data
(`--data DIR`) list and decode folders the same way, so a folder means the same thing to both."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgecompress.device.preprocess import PreprocessSpec

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")


class UnreadableImage(Exception):
    """A file that cannot be decoded as an image (truncated, corrupt, not an image)."""


@dataclass(frozen=True)
class FolderImage:
    """One image under a folder; `label` is its first sub-folder's name (None for files at the top)."""

    path: Path
    label: str | None


def list_image_folder(root: Path) -> list[FolderImage]:
    """Every image under `root` (recursive, hidden entries skipped), sorted, labelled by its first sub-folder."""
    root = Path(root)
    files = sorted(
        path
        for path in root.rglob("*")
        if path.is_file()
        and path.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in path.relative_to(root).parts)
    )
    return [FolderImage(path, _folder_label(root, path)) for path in files]


def _folder_label(root: Path, path: Path) -> str | None:
    parts = path.relative_to(root).parts
    return parts[0] if len(parts) > 1 else None


def read_image(path: Path, spec: PreprocessSpec) -> tuple[np.ndarray, str | None]:
    """One image as a model-ready array (no batch axis) and the colour conversion the spec applied, if any."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            note = colour_conversion(image.mode, spec)
            array = spec.images_to_batch([image])[0]
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise UnreadableImage(f"{path}: {exc}") from exc
    return array, note


def colour_conversion(mode: str, spec: PreprocessSpec) -> str | None:
    """Name the colour conversion the spec applies to an image of this PIL mode, if any."""
    gray = mode in GRAY_MODES
    if spec.color == "rgb" and gray:
        return "grayscale converted to RGB"
    if spec.color == "grayscale" and not gray:
        return "colour converted to grayscale"
    if mode in ("RGBA", "RGBa", "LA", "La", "PA"):
        return "alpha channel dropped"
    return None
