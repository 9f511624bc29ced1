"""The set format: arrays + manifest written together, checksum over arrays, verified on load."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgecompress.calib.load import load_calibration_set

from edgecompress.calib.manifest import arrays_sha256
from edgecompress.calib.manifest import MANIFEST_FORMAT, verify_manifest, write_set
from edgecompress.source.specs import TensorSpec
from edgecompress.core.errors import CalibrationChecksumError, CalibrationError

INPUTS = [TensorSpec("input", (None, 2, 3))]


def written(tmp_path, x):
    arrays = {"x": x}
    write_set(tmp_path / "set.npz", arrays, {"format": MANIFEST_FORMAT, "sha256": arrays_sha256(arrays)})
    return tmp_path / "set.npz"


def test_checksum_is_of_the_arrays_not_the_zip_container(tmp_path):
    x = np.arange(12, dtype=np.float32).reshape(2, 2, 3)
    first = written(tmp_path / "a", x)
    second = written(tmp_path / "b", x)
    assert verify_manifest(first, {"x": x})["sha256"] == verify_manifest(second, {"x": x})["sha256"]


def test_inputs_named_like_numpy_savez_keywords_are_written_as_arrays(tmp_path):
    """ONNX input names are anyone's: `np.savez(f, **arrays)` raised for `file` and dropped `allow_pickle`."""
    arrays = {"file": np.ones((2, 3), np.float32), "allow_pickle": np.zeros((2, 1), np.int64)}
    path, _ = write_set(tmp_path / "set.npz", arrays, {"format": MANIFEST_FORMAT, "sha256": arrays_sha256(arrays)})
    with np.load(path) as stored:
        assert set(stored.files) == {"file", "allow_pickle"}
        np.testing.assert_array_equal(stored["allow_pickle"], arrays["allow_pickle"])
    assert verify_manifest(path, arrays)["sha256"] == arrays_sha256(arrays)


def test_loading_a_set_with_a_manifest_verifies_it_and_keeps_its_sha256(tmp_path):
    x = np.ones((2, 2, 3), np.float32)
    path = written(tmp_path, x)
    loaded = load_calibration_set(path, INPUTS)
    assert loaded.sha256 == arrays_sha256({"x": x}) and loaded.manifest["format"] == MANIFEST_FORMAT


def test_changed_arrays_fail_verification(tmp_path):
    path = written(tmp_path, np.ones((2, 2, 3), np.float32))
    np.savez(path, x=np.zeros((2, 2, 3), np.float32))
    with pytest.raises(CalibrationChecksumError, match="does not match its manifest"):
        load_calibration_set(path, INPUTS)


def test_a_bare_npz_without_manifest_loads_unverified(tmp_path):
    np.savez(tmp_path / "bare.npz", input=np.ones((2, 2, 3), np.float32))
    assert load_calibration_set(tmp_path / "bare.npz", INPUTS).manifest == {}


def test_a_damaged_manifest_is_a_clear_error(tmp_path):
    path = written(tmp_path, np.ones((2, 2, 3), np.float32))
    path.with_suffix(".json").write_text("{ not json")
    with pytest.raises(CalibrationError, match="cannot read calibration manifest"):
        load_calibration_set(path, INPUTS)
    path.with_suffix(".json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(CalibrationError, match="not an edgecompress calibration manifest"):
        load_calibration_set(path, INPUTS)
