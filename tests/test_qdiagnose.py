"""Diagnosis ranks the layer that int8 breaks first, from ORT's QDQ debugging helpers."""

import math

import numpy as np

from edgecompress.quantize.diagnose import diagnose, plot_layers, samples_within_memory
from edgecompress.quantize.recipe import QuantRecipe
from tests.quant_models import digits_case  # noqa: F401  (fixture)

RECIPE = QuantRecipe(reduce_range=True)


def test_fragile_layer_ranks_first_with_its_input_producer(digits_case) -> None:
    int8 = digits_case.quantizer(digits_case.fragile)(RECIPE)
    worst = diagnose(digits_case.fragile, int8, digits_case.eval_set.inputs, max_samples=32).ranking()[0]
    assert worst.node == "/conv2/Conv"
    assert worst.lost_db > 20.0
    assert worst.exclusion_group == ("/conv2/Conv", "/conv1/Conv")


def test_clean_model_loses_little_anywhere(digits_case) -> None:
    int8 = digits_case.quantizer(digits_case.clean)(RECIPE)
    diagnosis = diagnose(digits_case.clean, int8, digits_case.eval_set.inputs, max_samples=32)
    conv2 = next(layer for layer in diagnosis.layers if layer.node == "/conv2/Conv")
    assert conv2.lost_db < 5.0 and conv2.output_cosine > 0.999


def test_every_quantized_weight_and_activation_is_scored(digits_case) -> None:
    int8 = digits_case.quantizer(digits_case.clean)(RECIPE)
    diagnosis = diagnose(digits_case.clean, int8, digits_case.eval_set.inputs, max_samples=16)
    weights = {t.tensor for t in diagnosis.tensors if t.kind == "weight"}
    assert {"conv1.weight", "conv2.weight", "head.weight"} <= weights
    assert all(math.isfinite(t.sqnr_db) and -1.0 <= t.cosine <= 1.0 + 1e-9 for t in diagnosis.tensors)
    assert diagnosis.samples == 16


def test_layer_plot_is_written(digits_case, tmp_path) -> None:
    int8 = digits_case.quantizer(digits_case.clean)(RECIPE)
    layers = diagnose(digits_case.clean, int8, digits_case.eval_set.inputs, max_samples=8).to_dict()["layers"]
    path = plot_layers(layers, tmp_path / "layers.png")
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_large_inputs_are_diagnosed_on_fewer_samples() -> None:
    digits = {"input": np.zeros((360, 1, 32, 32), np.float32)}
    imagenet = {"input": np.zeros((64, 3, 224, 224), np.float32)}
    assert samples_within_memory(digits, 64) == 64
    assert 1 <= samples_within_memory(imagenet, 64) <= 8
