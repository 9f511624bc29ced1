"""Diagnosis ranks the layer that int8 breaks first, from ORT's QDQ debugging helpers."""

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgecompress.quantize.diagnose import diagnose, layer_label, plot_layers, samples_within_memory
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


RED, BLUE = (214, 39, 40), (31, 119, 180)  # matplotlib's tab:red and tab:blue


def bars(png: Path) -> list[tuple[str, int, int]]:
    """(colour, centre column, height in pixels) of each solid red or blue bar, left to right."""
    pixels = np.asarray(Image.open(png).convert("RGB")).astype(int)
    found, previous = [], None
    for column in range(pixels.shape[1]):
        heights = {name: int((np.abs(pixels[:, column] - rgb).sum(1) < 30).sum()) for name, rgb in (("red", RED), ("blue", BLUE))}
        colour = max(heights, key=heights.get) if max(heights.values()) > 0 else None
        if colour is not None and colour != previous:
            found.append([colour, [column], []])
        if colour is not None:
            found[-1][1].append(column)
            found[-1][2].append(heights[colour])
        previous = colour
    return [(colour, columns[len(columns) // 2], max(heights)) for colour, columns, heights in found]


def test_layer_plot_draws_one_bar_per_layer_red_where_it_lost_over_10_db(digits_case, tmp_path) -> None:
    int8 = digits_case.quantizer(digits_case.fragile)(RECIPE)
    layers = diagnose(digits_case.fragile, int8, digits_case.eval_set.inputs, max_samples=8).to_dict()["layers"]
    assert [layer["node"] for layer in layers] == ["/conv1/Conv", "/conv2/Conv", "/Flatten", "/head/Gemm"]
    path = plot_layers(layers, tmp_path / "layers.png")
    assert Image.open(path).size == (660, 385)  # 6 x 3.5 inches at 110 dpi
    drawn = bars(path)
    assert [colour for colour, _, _ in drawn] == ["red" if layer["lost_db"] > 10 else "blue" for layer in layers]
    assert [colour for colour, _, _ in drawn] == ["blue", "red", "blue", "blue"]  # conv2 is the fragile layer
    assert [column for _, column, _ in drawn] == sorted(column for _, column, _ in drawn)
    # bar heights follow |SQNR| on one scale (within 2 pixels of rounding)
    pixels_per_db = drawn[0][2] / abs(layers[0]["output_sqnr_db"])
    for (_, _, height), layer in zip(drawn, layers):
        assert abs(height - pixels_per_db * abs(layer["output_sqnr_db"])) <= 2, layer["node"]


@pytest.mark.parametrize("node, label", [("/conv1/Conv", "conv1"), ("/layer1/0/conv2/Conv", "conv2"),
                                         ("/Flatten", "Flatten"), ("head", "head")])
def test_layer_plot_labels_each_bar_with_its_layer_name(node, label) -> None:
    assert layer_label(node) == label


def test_large_inputs_are_diagnosed_on_fewer_samples() -> None:
    digits = {"input": np.zeros((360, 1, 32, 32), np.float32)}
    imagenet = {"input": np.zeros((64, 3, 224, 224), np.float32)}
    assert samples_within_memory(digits, 64) == 64
    assert 1 <= samples_within_memory(imagenet, 64) <= 8
