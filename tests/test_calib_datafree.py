"""Data-free calibration: inputs synthesized so BatchNorm layers see their stored statistics."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from edgecompress.calib.datafree import DataFreeConfig, make_data_free_set, synthesize

from edgecompress.calib.bn_stats import record_batchnorm_inputs
from edgecompress.core.errors import DataFreeError, InputShapeError
from edgecompress.device.preprocess import PreprocessSpec
from tests.calib_fixtures import tiny_bn_model

FAST = DataFreeConfig(steps=40, lr=0.1, batch_size=16)


def bn_loss(model: nn.Module, inputs: np.ndarray) -> float:
    with torch.no_grad(), record_batchnorm_inputs(model) as records:
        model(torch.from_numpy(inputs))
    return float(sum(record.loss() for record in records))


def test_synthetic_inputs_match_batchnorm_statistics_far_better_than_noise():
    model = tiny_bn_model()
    synthetic, summary = synthesize(model, (1, 1, 8, 8), 16, FAST)
    noise = np.random.default_rng(0).standard_normal((16, 1, 8, 8)).astype(np.float32)
    assert synthetic.shape == (16, 1, 8, 8) and synthetic.dtype == np.float32
    assert bn_loss(model, synthetic) < 0.2 * bn_loss(model, noise)
    assert summary["final_bn_loss"] == pytest.approx(bn_loss(model, synthetic), rel=0.5)


def test_synthetic_pixels_stay_inside_the_range_the_spec_can_produce():
    spec = PreprocessSpec(color="grayscale", mean=(0.5,), std=(0.5,))  # pixels map to [-1, 1]
    synthetic, _ = synthesize(tiny_bn_model(), (1, 1, 8, 8), 8, FAST, spec)
    assert synthetic.min() >= -1.0 and synthetic.max() <= 1.0


def test_same_seed_gives_the_same_set():
    first, _ = synthesize(tiny_bn_model(), (1, 1, 8, 8), 4, FAST)
    second, _ = synthesize(tiny_bn_model(), (1, 1, 8, 8), 4, FAST)
    assert np.array_equal(first, second)


def test_model_without_batchnorm_is_refused_with_the_alternative():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    with pytest.raises(DataFreeError, match="no BatchNorm") as caught:
        synthesize(model, (1, 1, 8, 8), 4, FAST)
    assert "--from" in caught.value.fix


def test_scripted_model_is_refused_because_its_batchnorm_is_hidden(tmp_path):
    scripted = torch.jit.script(tiny_bn_model())
    with pytest.raises(DataFreeError, match="TorchScript"):
        make_data_free_set(scripted, (1, 1, 8, 8), 4, tmp_path / "s.npz", FAST)
    assert not list(tmp_path.iterdir())


def test_input_shape_the_model_cannot_take_is_a_clear_error():
    with pytest.raises(InputShapeError, match="cannot run on inputs of shape \\[3, 8, 8\\]"):
        synthesize(tiny_bn_model(), (1, 3, 8, 8), 4, FAST)


def test_data_free_set_is_written_with_a_manifest(tmp_path):
    made = make_data_free_set(tiny_bn_model(), (1, 1, 8, 8), 20, tmp_path / "synth.npz", FAST, input_name="input")
    manifest = json.loads((tmp_path / "synth.json").read_text())
    assert manifest["source"]["kind"] == "data-free" and manifest["source"]["config"]["steps"] == 40
    assert manifest["count"] == 20 and manifest["sha256"] == made.sha256
    with np.load(tmp_path / "synth.npz") as archive:
        assert archive["input"].shape == (20, 1, 8, 8)
