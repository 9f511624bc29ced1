"""Bias correction removes the mean output shift that int8 weight rounding adds to each layer."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import nn

from edgecompress.quantize.biascorrect import correct_biases, dequantized_weights, input_means
from edgecompress.calib.load import CalibrationSet
from edgecompress.calib.manifest import arrays_sha256
from edgecompress.source.data import digits_splits
from edgecompress.quantize.static import quantize_model
from edgecompress.quantize.recipe import QuantRecipe
from tests.quant_models import export_onnx

# per-tensor 7-bit weights: large rounding errors, so the shifts are easy to see
COARSE = QuantRecipe(per_channel=False, reduce_range=True)


class PaddedDepthwiseNet(nn.Module):
    """Padding, stride, a depthwise conv, a conv without bias and a Gemm: every case the correction handles."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(1, 6, 3, padding=1, bias=False)
        self.depthwise = nn.Conv2d(6, 6, 3, stride=2, padding=1, groups=6)
        self.head = nn.Linear(6 * 16 * 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.depthwise(torch.relu(self.conv1(x))))
        return self.head(torch.flatten(x, 1))


@pytest.fixture(scope="module")
def padded_case(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("biascorrect")
    x = digits_splits().train.x[:96]
    model = PaddedDepthwiseNet().eval()
    path = export_onnx(model, workdir / "padded.onnx", x)
    calibration = CalibrationSet({"input": x}, arrays_sha256({"input": x}), "digits train")
    probe = quantize_model(path, calibration, COARSE, workdir / "probe.int8.onnx")
    return model, path, calibration, probe


def _torch_layers(model: PaddedDepthwiseNet, x: torch.Tensor) -> dict[str, tuple[nn.Module, torch.Tensor]]:
    """Each layer with its fp32 input, captured by hooks."""
    captured = {}

    def capture(name: str):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            captured[name] = (module, args[0])
        return hook

    hooks = [module.register_forward_hook(capture(name))
             for name, module in (("conv1", model.conv1), ("depthwise", model.depthwise), ("head", model.head))]
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    return captured


def test_dequantized_weights_are_the_int8_weights_ort_runs(padded_case) -> None:
    _, path, _, probe = padded_case
    weights = dequantized_weights(onnx.load(str(probe)))
    fp32 = {init.name: numpy_helper.to_array(init) for init in onnx.load(str(path)).graph.initializer}
    assert set(weights) == {node.name for node in onnx.load(str(path)).graph.node if node.op_type in ("Conv", "Gemm")}
    conv1 = next(v for k, v in weights.items() if "conv1" in k)
    error = conv1 - fp32["conv1.weight"]
    step = np.abs(fp32["conv1.weight"]).max() / 63  # symmetric 7-bit per-tensor
    assert 0 < np.abs(error).max() <= step / 2 + 1e-6
    assert len(np.unique(np.round(conv1 / step))) <= 127


def test_corrected_biases_cancel_each_layers_mean_weight_error(padded_case) -> None:
    model, path, calibration, probe = padded_case
    onnx_model = onnx.load(str(path))
    weights = dequantized_weights(onnx.load(str(probe)))
    inputs = {node.input[0] for node in onnx_model.graph.node if node.name in weights}
    means = input_means(onnx_model, calibration.batches(32), inputs)
    assert correct_biases(onnx_model, weights, means) == 3
    by_layer = {name: next(v for k, v in weights.items() if name in k) for name in ("conv1", "depthwise", "head")}
    biases = {node.name: node.input[2] for node in onnx_model.graph.node if len(node.input) > 2}
    initializers = {init.name: numpy_helper.to_array(init) for init in onnx_model.graph.initializer}
    corrected = {name: initializers[next(b for k, b in biases.items() if name in k)] for name in by_layer}

    for name, (module, x) in _torch_layers(model, torch.from_numpy(calibration.arrays["input"])).items():
        weight_q = torch.from_numpy(by_layer[name])
        original_bias = module.bias if module.bias is not None else torch.zeros(weight_q.shape[0])
        with torch.no_grad():
            if isinstance(module, nn.Linear):
                fp32, plain, fixed = (F.linear(x, w, b) for w, b in (
                    (module.weight, original_bias), (weight_q, original_bias), (weight_q, torch.from_numpy(corrected[name]))))
                dims = (0,)
            else:
                conv = lambda w, b: F.conv2d(x, w, b, module.stride, module.padding, groups=module.groups)  # noqa: E731, B023 - used in this iteration only
                fp32, plain, fixed = conv(module.weight, original_bias), conv(weight_q, original_bias), conv(weight_q, torch.from_numpy(corrected[name]))
                dims = (0, 2, 3)
        shift_before = (plain - fp32).mean(dims).abs().max().item()
        shift_after = (fixed - fp32).mean(dims).abs().max().item()
        assert shift_before > 1e-4, name
        assert shift_after < shift_before / 20 and shift_after < 1e-5, (name, shift_before, shift_after)


def test_bias_correction_changes_biases_only_and_skips_excluded_nodes(padded_case, tmp_path) -> None:
    _, path, calibration, probe = padded_case
    head = next(n.name for n in onnx.load(str(path)).graph.node if n.op_type == "Gemm")
    corrected = quantize_model(path, calibration, COARSE.with_options(bias_correction=True), tmp_path / "bc.onnx")
    plain_weights, corrected_weights = dequantized_weights(onnx.load(str(probe))), dequantized_weights(onnx.load(str(corrected)))
    for name, weight in plain_weights.items():
        np.testing.assert_array_equal(corrected_weights[name], weight)
    excluded = quantize_model(path, calibration, COARSE.with_options(bias_correction=True, nodes_to_exclude=(head,)), tmp_path / "ex.onnx")
    fp32_head_bias = next(numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer if i.name == "head.bias")
    kept_head_bias = next(numpy_helper.to_array(i) for i in onnx.load(str(excluded)).graph.initializer if i.name == "head.bias")
    np.testing.assert_array_equal(kept_head_bias, fp32_head_bias)  # an fp32 layer has no weight error to correct
    assert "bias-corrected" in COARSE.with_options(bias_correction=True).label
    assert COARSE.with_options(bias_correction=True).cache_key() != COARSE.cache_key()


def _bias_by_layer(qdq_path) -> dict[str, np.ndarray]:
    """Layer ('conv1', 'depthwise', 'head') -> the float bias its node reads (zeros where it has none)."""
    graph = onnx.load(str(qdq_path)).graph
    initializers = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    biases = {}
    for node in graph.node:
        if node.op_type in ("Conv", "Gemm"):
            layer = node.name.split("/")[1]
            biases[layer] = initializers[node.input[2]] if len(node.input) > 2 and node.input[2] else None
    return biases


def test_quantized_model_biases_move_by_each_layers_mean_weight_error(padded_case, tmp_path) -> None:
    """b_corrected - b = -E[layer(x, W_q) - layer(x, W)] over the calibration set, with x the layer's fp32 input."""
    model, path, calibration, probe = padded_case
    float_biases = COARSE.with_options(quantize_bias=False)  # biases stay float initializers in the QDQ graph
    plain = _bias_by_layer(quantize_model(path, calibration, float_biases, tmp_path / "plain.onnx"))
    corrected = _bias_by_layer(quantize_model(path, calibration, float_biases.with_options(bias_correction=True),
                                              tmp_path / "corrected.onnx"))
    assert plain["conv1"] is None and corrected["conv1"] is not None  # conv1 had no bias: correction adds one
    int8_weights = {name.split("/")[1]: torch.from_numpy(w) for name, w in dequantized_weights(onnx.load(str(probe))).items()}
    for name, (module, x) in _torch_layers(model, torch.from_numpy(calibration.arrays["input"])).items():
        with torch.no_grad():
            if isinstance(module, nn.Linear):
                mean_error = (F.linear(x, int8_weights[name]) - F.linear(x, module.weight)).mean(0)
            else:
                conv = lambda w: F.conv2d(x, w, None, module.stride, module.padding, groups=module.groups)  # noqa: E731, B023 - used in this iteration only
                mean_error = (conv(int8_weights[name]) - conv(module.weight)).mean((0, 2, 3))
        before = plain[name] if plain[name] is not None else np.zeros_like(corrected[name])
        np.testing.assert_allclose(corrected[name] - before, -mean_error.numpy(), rtol=1e-3, atol=1e-6, err_msg=name)
        assert np.abs(mean_error.numpy()).max() > 1e-4, name  # a real change, not float noise
