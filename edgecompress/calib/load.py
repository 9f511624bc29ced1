"""Load a calibration set and prove it fits the model before anything is quantized.

Format: an `.npz` whose keys are the model's input names, each the input as the model takes it
at batch N — N on the input's batch axis (calib/layout.py: axis 0 unless the model or --batch-axis
says otherwise), a 0-d array for a scalar input (one value for every sample). A single-input
model also accepts one array under any key, e.g. `x`.
Labels may ride along under `y`/`labels`; they are not model inputs.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgecompress.source.layout import BatchLayout
from edgecompress.source.specs import TensorSpec
from edgecompress.calib.manifest import arrays_sha256, verify_manifest
from edgecompress.core.errors import CalibrationError

LABEL_KEYS = ("y", "labels")
MAKE_A_SET = "make one with `edgecompress calib --from DIR|FILE.npz|digits --out calib.npz`"


@dataclass
class CalibrationSet:
    """Model inputs by name, each (N, ...) with the same N; `sha256` identifies the content."""

    arrays: dict[str, np.ndarray]
    sha256: str
    source: str
    labels: np.ndarray | None = None
    manifest: dict = field(default_factory=dict)
    layout: BatchLayout | None = None  # batch axis per input (calib/layout.py); None: axis 0

    @property
    def batch_layout(self) -> BatchLayout:
        return self.layout or BatchLayout({})

    def __len__(self) -> int:
        return self.batch_layout.count(self.arrays)

    def batches(self, batch_size: int):
        """Feeds of up to `batch_size` samples; a 0-d input (a sample rate) is one value fed with every batch."""
        yield from self.batch_layout.batches(self.arrays, batch_size)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise CalibrationError(f"calibration file {path} does not exist", MAKE_A_SET)
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise CalibrationError(f"{path} is not a readable .npz/.npy file ({exc})", MAKE_A_SET) from exc


def read_array_file(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a calibration .npz (by key) or .npy (as `x`), or a CalibrationError that says how to make one."""
    if path.suffix == ".npy":
        try:
            return {"x": np.load(path, allow_pickle=False)}
        except (ValueError, OSError) as exc:
            raise CalibrationError(f"{path} is not a readable .npy file ({exc})", MAKE_A_SET) from exc
    return _read_npz(path)


def check_finite(name: str, array: np.ndarray, where: str) -> None:
    """NaN or Inf in a float input is named, with how many, before any range is calibrated on it."""
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
        bad = int(np.sum(~np.isfinite(array)))
        raise CalibrationError(f"{where}: input '{name}' contains {bad} NaN/Inf values", "fix or drop those samples")


def match_inputs(arrays: dict[str, np.ndarray], inputs: list[TensorSpec], where: str) -> dict[str, np.ndarray]:
    """Map stored arrays to model inputs by name (or the single array to the single input)."""
    candidates = {k: v for k, v in arrays.items() if k not in LABEL_KEYS} or dict(arrays)
    names = [spec.name for spec in inputs]
    if all(name in candidates for name in names):
        return {name: candidates[name] for name in names}
    if len(inputs) == 1 and len(candidates) == 1:
        return {names[0]: next(iter(candidates.values()))}
    raise CalibrationError(
        f"{where} has arrays {sorted(candidates)} but the model's inputs are {names}",
        "store one array per model input under the input's name",
    )


def check_fits(arrays: dict[str, np.ndarray], inputs: list[TensorSpec], where: str,
               layout: BatchLayout | None = None) -> dict[str, np.ndarray]:
    """Check count, finiteness, rank, fixed dims and dtype; cast float arrays to the input's dtype.

    Each input is held as the model takes it at batch N, N on its batch axis (`layout`); a 0-d
    input of a 0-d model input is one value used for every sample.
    """
    layout = layout or BatchLayout({})
    fitted: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for spec in inputs:
        array = arrays[spec.name]
        axis = layout.axis(spec.name, array) if spec.shape else None
        if spec.shape and (axis is None or array.shape[axis] == 0):  # axis None: a 0-d array
            raise CalibrationError(f"{where}: input '{spec.name}' has no samples (empty set)", MAKE_A_SET)
        if array.ndim != len(spec.shape):
            raise CalibrationError(
                f"{where}: input '{spec.name}' is {array.shape} (rank {array.ndim}) but the model expects rank "
                f"{len(spec.shape)} {list(spec.shape)}",
                f"store each input as the model takes it at batch N (batch on axis {layout.axes.get(spec.name, 0)} for "
                f"'{spec.name}'; --batch-axis NAME:AXIS says otherwise)" if spec.shape else "store it as a 0-d array (one value)",
            )
        for dim, (want, have) in enumerate(zip(spec.shape, array.shape)):
            if dim != axis and want is not None and want != have:
                raise CalibrationError(
                    f"{where}: input '{spec.name}' has size {have} on axis {dim}, the model needs {want} "
                    f"(set shape {array.shape}, model {['?' if d is None else d for d in spec.shape]})",
                    "regenerate the set with the model's input size (edgecompress calib --size ...)",
                )
        if np.issubdtype(array.dtype, np.floating) != np.issubdtype(np.dtype(spec.dtype), np.floating):
            raise CalibrationError(
                f"{where}: input '{spec.name}' is {array.dtype} but the model expects {spec.dtype}",
                "store the preprocessed model inputs, not raw pixels or labels",
            )
        check_finite(spec.name, array, where)
        if axis is not None:
            counts[spec.name] = array.shape[axis]
        fitted[spec.name] = np.ascontiguousarray(array.astype(spec.dtype, copy=False))
    if len(set(counts.values())) > 1:
        raise CalibrationError(f"{where}: inputs have different sample counts {counts}", "store the same N for every input")
    return fitted


def load_calibration_set(path: Path, inputs: list[TensorSpec], layout: BatchLayout | None = None) -> CalibrationSet:
    """Read, match and check a set; verify its manifest checksum when one is beside it.

    With a manifest, the set's sha256 is the manifest's (verified) one, so report.json names
    the same set as `<name>.json`; without, it is the hash of the fitted arrays.
    """
    path = Path(path)
    raw = read_array_file(path)
    manifest = verify_manifest(path, raw)
    arrays = check_fits(match_inputs(raw, inputs, str(path)), inputs, str(path), layout)
    labels = next((raw[key] for key in LABEL_KEYS if key in raw), None)
    sha256 = manifest["sha256"] if manifest else arrays_sha256(arrays)
    return CalibrationSet(arrays=arrays, sha256=sha256, source=str(path), labels=labels, manifest=manifest or {}, layout=layout)


def calibration_set_from_arrays(arrays: dict[str, np.ndarray], inputs: list[TensorSpec], source: str,
                                layout: BatchLayout | None = None) -> CalibrationSet:
    fitted = check_fits(match_inputs(arrays, inputs, source), inputs, source, layout)
    return CalibrationSet(arrays=fitted, sha256=arrays_sha256(fitted), source=source, layout=layout)
