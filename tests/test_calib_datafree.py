"""Data-free calibration: inputs synthesized so BatchNorm layers see their stored statistics."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from edgecompress.calib.datafree import DataFreeConfig, _class_loss, class_targets, make_data_free_set, synthesize

from edgecompress.calib.bn_stats import batchnorm_loss, record_batchnorm_inputs
from edgecompress.core.errors import DataFreeError, InputShapeError
from edgecompress.device.preprocess import PreprocessSpec
from tests.calib_fixtures import tiny_bn_model

FAST = DataFreeConfig(steps=30, full_steps=10, batch_size=16)


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


def deeper_bn_model() -> nn.Module:
    """Four conv-BN-ReLU layers and a 3-class head, BN statistics gathered on smooth random images in [-1, 1]."""
    torch.manual_seed(0)
    layers = []
    for width_in, width_out, stride in ((1, 8, 1), (8, 16, 2), (16, 16, 1), (16, 32, 2)):
        layers += [nn.Conv2d(width_in, width_out, 3, stride, 1, bias=False), nn.BatchNorm2d(width_out, momentum=None), nn.ReLU()]
    model = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 3)).train()
    with torch.no_grad():  # 'training data': smooth random images in [-1, 1]
        for seed in range(4):
            coarse = torch.rand((16, 1, 4, 4), generator=torch.Generator().manual_seed(seed)) * 2 - 1
            model(nn.functional.interpolate(coarse, size=(16, 16), mode="bilinear"))
    return model.eval()


def test_synthesis_matches_every_batchnorm_layer_better_than_noise():
    """Not just the first layer: each BN layer of a deeper model sees statistics closer to training
    than Gaussian noise gives it."""
    model = deeper_bn_model()
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
    assert manifest["source"]["kind"] == "data-free" and manifest["source"]["config"]["steps"] == FAST.steps
    assert manifest["source"]["method"] == "batchnorm-statistics"
    assert manifest["count"] == 20 and manifest["sha256"] == made.sha256
    with np.load(tmp_path / "synth.npz") as archive:
        assert archive["input"].shape == (20, 1, 8, 8)


def test_model_that_cannot_run_at_half_resolution_skips_the_warm_up():
    """A text-line classifier pools its full height away; at half height it cannot run at all (scale 0.5)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d((16, 1)),
                          nn.Flatten(), nn.Linear(4 * 16, 2)).eval()
    synthetic, summary = synthesize(model, (1, 1, 16, 16), 4, replace(FAST, scale=0.5, min_reduced_side=8))
    assert synthetic.shape == (4, 1, 16, 16) and summary["method"] == "batchnorm-statistics"


def test_cli_defaults_are_the_configs():
    """The CLI spells the default out (importing torch for it would slow every command); it must not drift."""
    from edgecompress.cli.calib import calib

    import inspect

    parameters = inspect.signature(calib).parameters
    assert parameters["steps"].default.default == DataFreeConfig().steps
    assert parameters["class_loss"].default.default == DataFreeConfig().class_loss_weight


def test_batchnorm_records_hold_the_exact_batch_moments():
    """Batch statistics come from two plain means (cheaper than var_mean): they must equal var_mean's."""
    model = tiny_bn_model()
    bn = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)][0]
    x = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    seen = {}
    bn.register_forward_hook(lambda m, inputs, out: seen.update(x=inputs[0]))
    with torch.no_grad(), record_batchnorm_inputs(model) as records:
        model(x)
    layer_input, record = seen["x"], records[0]
    var, mean = torch.var_mean(layer_input, dim=(0, 2, 3), unbiased=False)
    assert torch.allclose(record.batch_mean, mean, atol=1e-5) and torch.allclose(record.batch_var, var, rtol=1e-4, atol=1e-5)


def test_class_targets_cover_every_class_before_repeating_one():
    targets = class_targets(10, 4, torch.Generator().manual_seed(0)).tolist()
    assert sorted(targets[:4]) == [0, 1, 2, 3] and sorted(targets[4:8]) == [0, 1, 2, 3] and len(targets) == 10
    assert len(set(class_targets(32, 1000, torch.Generator().manual_seed(0)).tolist())) == 32
    assert class_targets(32, 1000, torch.Generator().manual_seed(0)).max() > 31  # not the first 32 classes in turn


def test_class_loss_reads_a_softmax_output_as_probabilities():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]])
    targets = torch.tensor([0, 1])
    expected = nn.functional.cross_entropy(logits, targets)
    assert torch.allclose(_class_loss(logits, targets), expected)
    assert torch.allclose(_class_loss(logits.softmax(dim=1), targets), expected, atol=1e-5)


def test_class_loss_spreads_confident_samples_over_every_class():
    """DeepInversion's term on a trained digit classifier: every class equally often, each sample confident."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy((digits.images / 8.0 - 1).astype(np.float32))[:, None]
    y = torch.from_numpy(digits.target)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    optimizer = torch.optim.Adam(model.parameters(), 0.02)
    for _ in range(60):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    model.eval()
    assert float((model(x).argmax(dim=1) == y).float().mean()) > 0.85

    def predictions(weight: float) -> torch.Tensor:
        synthetic, _ = synthesize(model, (1, 1, 8, 8), 20, DataFreeConfig(steps=40, batch_size=20, class_loss_weight=weight))
        with torch.no_grad():
            return model(torch.from_numpy(synthetic)).softmax(dim=1)

    with_loss, without = predictions(1.0), predictions(0.0)
    assert torch.bincount(with_loss.argmax(dim=1), minlength=10).tolist() == [2] * 10
    assert float(with_loss.max(dim=1).values.mean()) > 0.9 > float(without.max(dim=1).values.mean())


def test_inputs_are_optimized_at_full_size_by_default():
    """Issue #25: the model's own resolution, where its first layer's statistics are what int8 sees."""
    model = tiny_bn_model()
    sizes: list[tuple[int, ...]] = []
    model.register_forward_pre_hook(lambda module, inputs: sizes.append(tuple(inputs[0].shape[2:])))
    synthesize(model, (1, 1, 160, 128), 4, DataFreeConfig(steps=3, batch_size=4))
    assert set(sizes) == {(160, 128)}


def test_with_scale_below_one_small_inputs_stay_full_size_and_large_ones_start_smaller():
    """Half resolution saves time on large inputs; a 32×32 input at 16×16 loses what deep layers see."""
    model = tiny_bn_model()
    sizes: list[tuple[int, ...]] = []
    model.register_forward_pre_hook(lambda module, inputs: sizes.append(tuple(inputs[0].shape[2:])))
    config = DataFreeConfig(steps=3, scale=0.5, full_steps=1, batch_size=4)
    synthesize(model, (1, 1, 32, 32), 4, config)
    assert set(sizes) == {(32, 32)}
    sizes.clear()
    synthetic, _ = synthesize(model, (1, 1, 160, 128), 4, config)
    assert sizes[1:4] == [(80, 64)] * 3 and set(sizes[4:]) == {(160, 128)}  # sizes[0]: can the model run at 80×64?
    assert synthetic.shape == (4, 1, 160, 128)


FIRST_LAYER_MEAN_TOLERANCE = 0.05  # |batch mean − running mean|, in running std, every channel
FIRST_LAYER_STD_TOLERANCE = 0.2  # |batch std / running std − 1|, every channel (the generator before issue #25: 0.32)


@pytest.fixture(scope="module")
def deeper_model_and_synthetic_set() -> tuple[nn.Module, np.ndarray]:
    """The default generator (but 60 steps, as for a 224×224 model's budget order) on the 4-BN model."""
    model = deeper_bn_model()
    spec = PreprocessSpec(color="grayscale", mean=(0.5,), std=(0.5,))
    synthetic, _ = synthesize(model, (1, 1, 16, 16), 32, DataFreeConfig(steps=60), spec)
    return model, synthetic


def test_first_batchnorm_sees_its_running_statistics_on_the_synthetic_set(deeper_model_and_synthetic_set):
    """The first layer is where the set's pixels meet the model: its BN must see the statistics it stored
    (issue #25: the half-resolution generator left the first BN's variance off by 4.3×)."""
    model, synthetic = deeper_model_and_synthetic_set
    with torch.no_grad(), record_batchnorm_inputs(model) as records:
        model(torch.from_numpy(synthetic))
    first = records[0]
    running_std = first.running_var.sqrt()
    mean_gap = (first.batch_mean - first.running_mean).abs() / running_std
    std_gap = (first.batch_var.sqrt() / running_std - 1).abs()
    assert float(mean_gap.max()) <= FIRST_LAYER_MEAN_TOLERANCE, mean_gap
    assert float(std_gap.max()) <= FIRST_LAYER_STD_TOLERANCE, std_gap


def test_batchnorm_diagnostic_is_silent_on_the_synthetic_set(deeper_model_and_synthetic_set):
    """The tool must not warn that its own synthetic set looks unlike training data."""
    from edgecompress.calib.diagnostics import batchnorm_mismatch

    model, synthetic = deeper_model_and_synthetic_set
    noise = np.random.default_rng(0).standard_normal((32, 1, 16, 16)).astype(np.float32) * 4
    assert batchnorm_mismatch(model, {"x": synthetic}) == []
    assert batchnorm_mismatch(model, {"x": noise})  # the check itself still fires on a set unlike training
