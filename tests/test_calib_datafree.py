"""Data-free calibration: inputs synthesized so BatchNorm layers see their stored statistics."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from edgecompress.calib.datafree import DataFreeConfig, make_data_free_set, synthesize

from edgecompress.calib.bn_stats import batchnorm_loss, record_batchnorm_inputs
from edgecompress.core.errors import DataFreeError, InputShapeError
from edgecompress.device.preprocess import PreprocessSpec
from tests.calib_fixtures import tiny_bn_model

FAST = DataFreeConfig(steps=20, warmup_steps=20, batch_size=16)


def bn_loss(model: nn.Module, inputs: np.ndarray) -> float:
    with torch.no_grad(), record_batchnorm_inputs(model) as records:
        model(torch.from_numpy(inputs))
    return float(batchnorm_loss(records))


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


def test_model_without_batchnorm_gets_smooth_range_only_inputs_and_is_told_so():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 30 * 30, 2))
    spec = PreprocessSpec(color="grayscale", mean=(0.5,), std=(0.5,))
    inputs, summary = synthesize(model, (1, 1, 32, 32), 8, FAST, spec)
    assert summary["method"] == "range-only" and "no BatchNorm statistics" in summary["note"]
    assert inputs.shape == (8, 1, 32, 32) and inputs.min() >= -1.0 and inputs.max() <= 1.0
    neighbour_step = np.abs(np.diff(inputs, axis=3)).mean()
    assert neighbour_step < 0.2 * np.abs(inputs - inputs.mean()).mean()  # smooth, not white noise


def test_synthesis_matches_every_batchnorm_layer_better_than_noise():
    """Not just the first layer: each BN layer of a deeper model sees statistics closer to training
    than Gaussian noise gives it."""
    torch.manual_seed(0)
    layers = []
    for width_in, width_out, stride in ((1, 8, 1), (8, 16, 2), (16, 16, 1), (16, 32, 2)):
        layers += [nn.Conv2d(width_in, width_out, 3, stride, 1, bias=False), nn.BatchNorm2d(width_out, momentum=None), nn.ReLU()]
    model = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 3)).train()
    with torch.no_grad():  # 'training data': smooth random images in [-1, 1]
        for seed in range(4):
            coarse = torch.rand((16, 1, 4, 4), generator=torch.Generator().manual_seed(seed)) * 2 - 1
            model(nn.functional.interpolate(coarse, size=(16, 16), mode="bilinear"))
    model.eval()
    spec = PreprocessSpec(color="grayscale", mean=(0.5,), std=(0.5,))
    synthetic, _ = synthesize(model, (1, 1, 16, 16), 16, FAST, spec)
    noise = np.random.default_rng(0).standard_normal((16, 1, 16, 16)).astype(np.float32)
    with torch.no_grad(), record_batchnorm_inputs(model) as fitted:
        model(torch.from_numpy(synthetic))
    with torch.no_grad(), record_batchnorm_inputs(model) as noisy:
        model(torch.from_numpy(noise))
    assert [float(f.loss()) < float(n.loss()) for f, n in zip(fitted, noisy)] == [True] * 4


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
    assert manifest["source"]["kind"] == "data-free" and manifest["source"]["config"]["steps"] == 20
    assert manifest["source"]["method"] == "batchnorm-statistics"
    assert manifest["count"] == 20 and manifest["sha256"] == made.sha256
    with np.load(tmp_path / "synth.npz") as archive:
        assert archive["input"].shape == (20, 1, 8, 8)


def test_model_that_cannot_run_at_half_resolution_skips_the_warm_up():
    """A text-line classifier pools its full height away; at half height it cannot run at all."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d((16, 1)),
                          nn.Flatten(), nn.Linear(4 * 16, 2)).eval()
    synthetic, summary = synthesize(model, (1, 1, 16, 16), 4, FAST)
    assert synthetic.shape == (4, 1, 16, 16) and summary["method"] == "batchnorm-statistics"
