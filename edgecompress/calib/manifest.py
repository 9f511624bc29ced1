"""The calibration-set file format: `<name>.npz` (one array per model input) + `<name>.json` manifest.

The checksum covers the arrays (names, dtypes, shapes, bytes), not the .npz container,
whose zip headers carry timestamps: the same arrays always hash the same, so a set
regenerated from the same recipe is recognised as unchanged by every build cache.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from edgecompress.core.artifacts import atomic_path, save_npz
from edgecompress.core.errors import CalibrationChecksumError, CalibrationError

MANIFEST_FORMAT = "edgecompress-calibration/1"


def arrays_sha256(arrays: Mapping[str, np.ndarray]) -> str:
    """Content hash over names, dtypes, shapes and bytes: the identity of a set."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def manifest_path(npz_path: Path) -> Path:
    """`calib.npz` → `calib.json`: the manifest always sits beside its arrays."""
    return Path(npz_path).with_suffix(".json")


def write_set(npz_path: Path, arrays: Mapping[str, np.ndarray], manifest: dict[str, Any]) -> tuple[Path, Path]:
    """Write arrays and manifest so that neither is ever half-written.

    Both go to temporary siblings first; the .npz is renamed into place before the manifest,
    so a crash in between leaves a manifest whose checksum no longer matches (detected on use).
    """
    npz_path = check_out_path(npz_path)
    json_path = manifest_path(npz_path)
    with atomic_path(npz_path) as npz_tmp, atomic_path(json_path) as json_tmp:
        save_npz(npz_tmp, arrays)
        json_tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return npz_path, json_path


def check_out_path(npz_path: Path) -> Path:
    """Reject a bad --out before any work is done (numpy would silently append .npz)."""
    npz_path = Path(npz_path)
    if npz_path.suffix != ".npz":
        raise CalibrationError(f"--out '{npz_path}' must end with .npz", f"use --out {npz_path.with_suffix('.npz')}")
    if npz_path.is_dir():
        raise CalibrationError(f"--out '{npz_path}' is a folder", "pass a file name such as calib.npz")
    return npz_path


def read_manifest(npz_path: Path) -> dict[str, Any] | None:
    """The manifest beside `npz_path`, or None for a bare .npz (sets made by other tools)."""
    path = manifest_path(npz_path)
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CalibrationError(f"cannot read calibration manifest '{path}': {exc}", "regenerate the set") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise CalibrationError(f"'{path}' is not an edgecompress calibration manifest", "regenerate the set")
    return manifest


def verify_manifest(npz_path: Path, stored: Mapping[str, np.ndarray]) -> dict[str, Any] | None:
    """Check the arrays as stored in the .npz against the manifest beside it; return the manifest.

    A bare .npz (no manifest) passes unverified and returns None: sets made by other tools
    are still usable, they just cannot be proven unchanged.
    """
    manifest = read_manifest(npz_path)
    if manifest is None:
        return None
    actual = arrays_sha256(stored)
    if manifest.get("sha256") != actual:
        raise CalibrationChecksumError(
            f"calibration set '{npz_path}' does not match its manifest (sha256 {actual[:12]}…, "
            f"manifest says {str(manifest.get('sha256'))[:12]}…)",
            "the arrays were changed or the copy is damaged: regenerate it with `edgecompress calib`",
        )
    return manifest
