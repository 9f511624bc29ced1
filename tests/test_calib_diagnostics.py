"""Warnings about sets that would quietly give worse int8 ranges."""

from __future__ import annotations

import numpy as np
import pytest

from edgecompress.calib.diagnostics import MIN_RECOMMENDED_COUNT, diagnose
from edgecompress.core.errors import CalibrationError
from tests.calib_fixtures import bn_training_data, tiny_bn_model


def varied(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((count, 1, 8, 8), dtype=np.float32)


def test_a_healthy_set_has_no_warnings():
    assert diagnose({"x": bn_training_data(count=MIN_RECOMMENDED_COUNT)}, tiny_bn_model()) == []


def test_too_small_a_set_is_flagged():
    (finding,) = diagnose({"x": varied(8)})
    assert "only 8 samples" in finding


def test_constant_images_are_flagged():
    x = varied(MIN_RECOMMENDED_COUNT)
    x[5] = 0.25
    x[9] = 0.0
    (finding,) = diagnose({"x": x})
    assert "2 constant samples" in finding and "index 5" in finding


def test_near_duplicates_are_flagged():
    x = varied(MIN_RECOMMENDED_COUNT)
    x[10] = x[3] * 1.01 + 0.002  # the same picture, slightly brighter
    (finding,) = diagnose({"x": x})
    assert "1 near-duplicate pairs" in finding and "indices 3 and 10" in finding


def test_preprocessing_unlike_training_is_flagged_against_the_first_batchnorm():
    wrong_scale = bn_training_data(count=MIN_RECOMMENDED_COUNT) * 255.0  # forgot to scale to [0, 1]
    (finding,) = diagnose({"x": wrong_scale}, tiny_bn_model())
    assert "first BatchNorm" in finding and "preprocessing" in finding


def test_a_set_that_does_not_fit_the_model_is_an_error():
    with pytest.raises(CalibrationError, match="do not fit the model"):
        diagnose({"x": np.zeros((MIN_RECOMMENDED_COUNT, 3, 8, 8), np.float32) + varied(1)}, tiny_bn_model())


def test_integer_inputs_are_not_judged_as_images():
    """Token ids and attention masks are not quantized: all-ones masks and repeated sentences are normal text input."""
    masks = np.ones((MIN_RECOMMENDED_COUNT, 16), np.int64)
    ids = np.tile(np.arange(16, dtype=np.int64), (MIN_RECOMMENDED_COUNT, 1))
    assert diagnose({"input_ids": ids, "attention_mask": masks}) == []
