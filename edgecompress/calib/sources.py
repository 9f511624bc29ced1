"""Where calibration samples come from: an image folder, .npy/.npz arrays, or the built-in digits.

A source only *lists* candidates; each candidate decodes lazily, so sampling 256 images
from a folder of 50,000 decodes about 256 files. Decoding failures are raised as
`UnreadableSample`, which the sampler counts and skips instead of aborting the set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from edgecompress.calib.load import LABEL_KEYS
from edgecompress.core.errors import CalibrationError
from edgecompress.device.preprocess import PreprocessSpec
from edgecompress.source.images import UnreadableImage, list_image_folder, read_image



class UnreadableSample(Exception):
    """A candidate that cannot be decoded (truncated, corrupt, not an image)."""


@dataclass(frozen=True)
class DecodedSample:
    """One sample as model inputs (name → array without batch axis); `note` names a conversion done."""

    inputs: dict[str, np.ndarray]
    note: str | None = None


@dataclass(frozen=True)
class Candidate:
    """One listed sample: `key` names it in messages; `decode` may raise `UnreadableSample`."""

    key: str
    label: str | None
    decode: Callable[[], DecodedSample]


@dataclass
class Source:
    """The listed candidates of one source and the preprocessing that turns them into inputs.

    `spec` is None when the arrays are model-ready already and are used as given.
    """

    kind: str
    location: str
    candidates: list[Candidate]
    spec: PreprocessSpec | None
    notes: list[str] = field(default_factory=list)

    @property
    def labelled(self) -> bool:
        return any(c.label is not None for c in self.candidates)


def default_spec(location: str) -> PreprocessSpec:
    """The preprocessing a source gets when the user names none: the example's for digits, [0, 1] RGB else."""
    if location == "digits":
        from edgecompress.source.data import DIGITS_SPEC

        return DIGITS_SPEC
    return PreprocessSpec()


def open_source(location: str, spec: PreprocessSpec | None, input_name: str = "x") -> Source:
    """Dispatch on what `location` is: "digits", a folder of images, or a .npy/.npz file."""
    if location == "digits":
        return digits_source(spec or default_spec(location), input_name)
    path = Path(location).expanduser()
    if not path.exists():
        raise CalibrationError(
            f"calibration source '{location}' does not exist", "pass an image folder, a .npy/.npz file or 'digits'"
        )
    if path.is_dir():
        return image_folder_source(path, spec or default_spec(location), input_name)
    if path.suffix.lower() in (".npy", ".npz"):
        return array_source(path, spec, input_name)
    raise CalibrationError(
        f"calibration source '{location}' is neither a folder nor a .npy/.npz file",
        "pass an image folder, a .npy/.npz file or 'digits'",
    )


# -- image folder -------------------------------------------------------------------------
def image_folder_source(root: Path, spec: PreprocessSpec, input_name: str = "x") -> Source:
    """Every image under `root` (source.images: recursive, hidden entries skipped); the first sub-folder is the label."""
    images = list_image_folder(root)
    if not images:
        raise CalibrationError(
            f"no JPEG/PNG images found under '{root}'", "point --from at a folder that holds .jpg/.jpeg/.png files"
        )
    candidates = [Candidate(str(image.path), image.label, _image_decoder(image.path, spec, input_name)) for image in images]
    return Source("images", str(root), candidates, spec)


def _image_decoder(path: Path, spec: PreprocessSpec, input_name: str) -> Callable[[], DecodedSample]:
    def decode() -> DecodedSample:
        try:
            array, note = read_image(path, spec)
        except UnreadableImage as exc:
            raise UnreadableSample(str(exc)) from exc
        return DecodedSample({input_name: array}, note)

    return decode


# -- arrays -------------------------------------------------------------------------------
def array_source(path: Path, spec: PreprocessSpec | None, input_name: str = "x") -> Source:
    """A .npy (one input) or .npz (one array per input name, optional `y`/`labels`).

    Float arrays are model-ready and used as given; uint8 arrays are images (N,H,W) or
    (N,H,W,C) and go through the preprocessing spec like decoded files would.
    """
    arrays, labels = _read_arrays(path, input_name)
    count = _common_length(arrays, path)
    _reject_non_finite(arrays, path)
    image_mode = all(a.dtype == np.uint8 and a.ndim in (3, 4) for a in arrays.values())
    notes: list[str] = []
    if image_mode:
        spec = spec or default_spec(str(path))
        arrays = {name: spec.images_to_batch(_as_images(a)) for name, a in arrays.items()}
    elif spec is not None:
        notes.append("preprocessing options ignored: float arrays are used as given")
        spec = None
    candidates = [
        Candidate(
            f"{path}[{i}]",
            None if labels is None else str(labels[i]),
            _row_decoder(arrays, i),
        )
        for i in range(count)
    ]
    return Source("arrays", str(path), candidates, spec, notes)


def _read_arrays(path: Path, input_name: str) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    try:
        if path.suffix.lower() == ".npy":
            return {input_name: np.load(path, allow_pickle=False)}, None
        with np.load(path, allow_pickle=False) as archive:
            data = {key: archive[key] for key in archive.files}
    except (OSError, ValueError) as exc:
        raise CalibrationError(f"cannot read '{path}': {exc}", "pass a .npy/.npz written by numpy") from exc
    label_key = next((k for k in LABEL_KEYS if k in data), None)
    labels = data.pop(label_key) if label_key else None
    if not data:
        raise CalibrationError(f"'{path}' holds no input arrays", "save the inputs under 'x' or the model input names")
    if len(data) == 1:
        data = {input_name: next(iter(data.values()))}
    return data, labels


def _common_length(arrays: dict[str, np.ndarray], path: Path) -> int:
    lengths = {name: (len(a) if a.ndim else 0) for name, a in arrays.items()}
    if len(set(lengths.values())) != 1 or 0 in lengths.values():
        raise CalibrationError(
            f"'{path}' arrays have no common, non-zero number of samples: {lengths}",
            "give every input array the same first (sample) dimension",
        )
    return next(iter(lengths.values()))


def _reject_non_finite(arrays: dict[str, np.ndarray], path: Path) -> None:
    for name, array in arrays.items():
        if np.issubdtype(array.dtype, np.floating):
            bad = ~np.isfinite(array.reshape(len(array), -1)).all(axis=1)
            if bad.any():
                raise CalibrationError(
                    f"'{path}' input '{name}' has NaN/Inf in {int(bad.sum())} of {len(array)} samples "
                    f"(first at index {int(np.argmax(bad))})",
                    "remove or fix those samples; calibration ranges would be meaningless",
                )


def _as_images(array: np.ndarray) -> list:
    from PIL import Image

    if array.ndim == 4 and array.shape[-1] == 1:
        array = array[..., 0]
    return [Image.fromarray(image) for image in array]


def _row_decoder(arrays: dict[str, np.ndarray], index: int) -> Callable[[], DecodedSample]:
    return lambda: DecodedSample({name: a[index] for name, a in arrays.items()})


# -- built-in digits ----------------------------------------------------------------------
def digits_source(spec: PreprocessSpec, input_name: str = "x") -> Source:
    """The training split of the built-in digits: calibration never sees the test images."""
    from PIL import Image

    from edgecompress.source.data import digits_images, digits_split_indices

    images, labels = digits_images()
    train_indices = digits_split_indices().train

    def decoder(index: int) -> Callable[[], DecodedSample]:
        image = Image.fromarray(images[index])
        return lambda: DecodedSample({input_name: spec.images_to_batch([image])[0]})

    candidates = [Candidate(f"digits[{i}]", str(labels[i]), decoder(int(i))) for i in train_indices]
    return Source("digits", "digits (train split)", candidates, spec)
