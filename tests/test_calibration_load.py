"""Calibration sets are checked against the model's inputs before anything is quantized."""

from __future__ import annotations

import numpy as np
import pytest

from edgecompress.calib.load import load_calibration_set

from edgecompress.calib.manifest import arrays_sha256
from edgecompress.source.specs import TensorSpec
from edgecompress.core.errors import CalibrationError

INPUTS = [TensorSpec("input", (None, 1, 8, 8))]


def _save(tmp_path, **arrays):
    path = tmp_path / "set.npz"
    np.savez(path, **arrays)
    return path


def test_single_input_model_accepts_one_array_under_any_key(tmp_path):
    x = np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32)
    calibration = load_calibration_set(_save(tmp_path, x=x, y=np.arange(4)), INPUTS)
    assert list(calibration.arrays) == ["input"] and len(calibration) == 4
    assert calibration.labels.tolist() == [0, 1, 2, 3]
    assert calibration.sha256 == arrays_sha256({"input": x})


def test_content_hash_changes_with_one_value():
    x = np.zeros((2, 1, 8, 8), np.float32)
    y = x.copy()
    y[1, 0, 3, 3] = 1e-3
    assert arrays_sha256({"input": x}) != arrays_sha256({"input": y})


@pytest.mark.parametrize("array, message", [
    (np.zeros((0, 1, 8, 8), np.float32), "empty set"),
    (np.full((3, 1, 8, 8), np.nan, np.float32), "NaN/Inf"),
    (np.zeros((3, 3, 8, 8), np.float32), "size 3 on axis 1"),
    (np.zeros((3, 8, 8), np.float32), "rank 4"),
    (np.zeros((3, 1, 8, 8), np.int64), "expects float32"),
])
def test_bad_sets_are_refused_with_the_reason(tmp_path, array, message):
    with pytest.raises(CalibrationError, match=message):
        load_calibration_set(_save(tmp_path, input=array), INPUTS)


def test_missing_and_unreadable_files_say_how_to_make_a_set(tmp_path):
    with pytest.raises(CalibrationError, match="edgecompress calib"):
        load_calibration_set(tmp_path / "nope.npz", INPUTS)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip")
    with pytest.raises(CalibrationError, match="not a readable"):
        load_calibration_set(garbage, INPUTS)


def test_multi_input_model_needs_names(tmp_path):
    inputs = [TensorSpec("a", (None, 2)), TensorSpec("b", (None, 2))]
    with pytest.raises(CalibrationError, match="inputs are \\['a', 'b'\\]"):
        load_calibration_set(_save(tmp_path, x=np.zeros((2, 2), np.float32)), inputs)
