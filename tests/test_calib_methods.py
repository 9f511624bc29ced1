"""The calibration method chosen in the config is the one the quantizer uses."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgecompress.calib.load import calibration_set_from_arrays
from edgecompress.core.config import make_config
from edgecompress.source.specs import TensorSpec
from edgecompress.pipeline.pipeline import target_recipe
from edgecompress.quantize.static import quantize_model
from edgecompress.quantize.recipe import QuantRecipe
from edgecompress.core.targets import TargetProfile, load_profiles
from tests.calib_fixtures import export_tiny_onnx


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    return export_tiny_onnx(tmp_path_factory.mktemp("model") / "tiny.onnx")


@pytest.fixture(scope="module")
def heavy_tailed_set():
    """Mostly ordinary values with rare large outliers: where the methods disagree most."""
    x = np.random.default_rng(0).standard_t(df=2, size=(64, 1, 8, 8)).astype(np.float32)
    return calibration_set_from_arrays({"input": x}, [TensorSpec("input", (None, 1, 8, 8))], "t-distributed")


def input_scale(int8_path) -> float:
    """Scale of the QuantizeLinear that quantizes the model input."""
    model = onnx.load(str(int8_path))
    initializers = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    (node,) = [n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "input"]
    return float(initializers[node.input[1]])


def test_config_method_and_percentile_reach_the_target_recipe():
    config = make_config({}, {"calibration_method": "percentile", "percentile": 99.0})
    recipe = target_recipe(load_profiles(["cpu"])[0], config)
    assert (recipe.calibration_method, recipe.percentile) == ("percentile", 99.0)


@pytest.mark.parametrize("device, setting, corrected", [
    ({"arch": "x86_64", "isa": ["avx2"]}, "auto", True),  # reduce_range: 7-bit weights
    ({"arch": "aarch64", "isa": ["neon", "dotprod"]}, "auto", False),  # full-range per-channel
    ({"arch": "aarch64", "isa": ["neon", "dotprod"]}, "on", True),
    ({"arch": "x86_64", "isa": ["avx2"]}, "off", False),
])
def test_bias_correction_auto_is_on_for_coarse_weights_only(device, setting, corrected):
    profile = TargetProfile(name="device", engine="ort-cpu", **device)
    assert target_recipe(profile, make_config({}, {"bias_correction": setting})).bias_correction is corrected


def test_percentile_and_entropy_clip_outliers_that_minmax_keeps(tiny_onnx, heavy_tailed_set, tmp_path):
    scales = {}
    for label, recipe in {
        "minmax": QuantRecipe(calibration_method="minmax"),
        "p99.99": QuantRecipe(calibration_method="percentile", percentile=99.99),
        "p90": QuantRecipe(calibration_method="percentile", percentile=90.0),
        "entropy": QuantRecipe(calibration_method="entropy"),
    }.items():
        scales[label] = input_scale(quantize_model(tiny_onnx, heavy_tailed_set, recipe, tmp_path / f"{label}.onnx"))
    assert scales["p90"] < scales["p99.99"] < scales["minmax"]
    assert scales["entropy"] < 0.5 * scales["minmax"]  # onnxruntime alone gives entropy == minmax here


def test_our_kl_search_picks_onnxruntimes_entropy_thresholds_exactly():
    """kl_threshold is onnxruntime's get_entropy_threshold vectorised: same [low, high] on real activations."""
    from onnxruntime.quantization.calibrate import HistogramCollector
    from sklearn.datasets import load_digits

    from edgecompress.calib.ranges import ENTROPY_BINS, ENTROPY_QUANTIZED_BINS, kl_threshold

    pixels = load_digits().data.astype(np.float32)
    filters = np.random.default_rng(0).normal(size=(64, 16)).astype(np.float32)
    features = pixels @ filters  # a dense layer's pre-activations: signed, heavy on one side
    activations = {"pixels": pixels, "pre-activation": features, "relu": np.maximum(features, 0), "outlier": np.r_[features[:50].ravel(), 900.0]}
    collector = HistogramCollector("entropy", symmetric=False, num_bins=ENTROPY_BINS,
                                   num_quantized_bins=ENTROPY_QUANTIZED_BINS, percentile=99.99, scenario="same")
    collector.collect({name: [values] for name, values in activations.items()})
    for name, histogram in collector.histogram_dict.items():
        expected = collector.get_entropy_threshold(histogram, ENTROPY_QUANTIZED_BINS)
        assert kl_threshold(histogram) == expected, name
    low, high = kl_threshold(collector.histogram_dict["outlier"])
    assert high < 900.0 / 2  # the lone outlier is clipped, which is what entropy calibration is for


@pytest.mark.parametrize("method", ["percentile", "entropy", "minmax"])
def test_every_method_calibrates_a_set_that_batches_do_not_divide(tiny_onnx, heavy_tailed_set, tmp_path, method):
    """153 samples (a --data train split): ORT's histogram collector stacks equal batches only."""
    from edgecompress.quantize.static import equal_batch_size

    x = np.resize(heavy_tailed_set.arrays["input"], (153, 1, 8, 8))
    ragged = calibration_set_from_arrays({"input": x}, [TensorSpec("input", (None, 1, 8, 8))], "153 samples")
    assert len(ragged) == 153 and equal_batch_size(153) == 9 and equal_batch_size(7) == 7 and equal_batch_size(17) == 1
    path = quantize_model(tiny_onnx, ragged, QuantRecipe(calibration_method=method), tmp_path / f"{method}.onnx")
    assert input_scale(path) > 0
