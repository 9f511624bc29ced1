"""Quantize + ORT CPU engine: real int8 QDQ models that agree with fp32 on real digits."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import numpy_helper

from edgecompress.engines import get_builder
from edgecompress.engines.base import onnx_precision
from edgecompress.engines.ort_cpu import OrtRunner
from edgecompress.core.errors import QuantizationError, TargetError
from edgecompress.measure.evaluate import evaluate
from edgecompress.quantize.isa import recipe_for_target
from edgecompress.quantize.static import quantize_model
from edgecompress.quantize.recipe import QuantRecipe
from edgecompress.core.targets import load_profile
from tests.quant_models import digits_case  # noqa: F401  (fixture)


# The cpu target's recipe on this host (reduce_range without VNNI: plain u8s8 saturates on AVX2
# and drops this model's top-1 from 95% to 83%), so the bounds below hold on any x86 machine.
HOST_RECIPE = recipe_for_target(load_profile("cpu"))


def initializers(path) -> dict[str, np.ndarray]:
    return {init.name: numpy_helper.to_array(init) for init in onnx.load(str(path)).graph.initializer}


def weight_dequantizers(path) -> dict[str, onnx.NodeProto]:
    """Conv/Gemm name -> the DequantizeLinear that feeds its weight (absent when the weight is float)."""
    graph = onnx.load(str(path)).graph
    dequantizers = {node.output[0]: node for node in graph.node if node.op_type == "DequantizeLinear"}
    return {node.name: dequantizers[node.input[1]] for node in graph.node
            if node.op_type in ("Conv", "Gemm") and node.input[1] in dequantizers}


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
def test_each_calibration_method_keeps_fp32_top1_on_held_out_digits(digits_case, method):
    int8 = digits_case.quantizer(digits_case.clean)(HOST_RECIPE.with_options(calibration_method=method))
    assert {"QuantizeLinear", "DequantizeLinear"} <= {node.op_type for node in onnx.load(str(int8)).graph.node}
    assert onnx_precision(int8).name == "int8"
    result = evaluate(OrtRunner(int8), OrtRunner(digits_case.clean), digits_case.eval_set)
    # measured on the 360 test digits: agreement 99.2-99.4%, accuracy 95.3% fp32 -> 95.8% int8
    assert result.agreement.top1 >= 0.98
    assert result.accuracy_reference - result.accuracy_engine <= 1.0
    assert result.agreement.cosine > 0.99


@pytest.mark.parametrize("per_channel", [True, False], ids=["per-channel", "per-tensor"])
def test_weights_are_int8_initializers_with_one_scale_per_output_channel_or_one_in_all(digits_case, per_channel):
    int8 = digits_case.quantizer(digits_case.clean)(HOST_RECIPE.with_options(per_channel=per_channel))
    quantized, fp32 = initializers(int8), initializers(digits_case.clean)
    dequantizers = weight_dequantizers(int8)
    assert set(dequantizers) == {"/conv1/Conv", "/conv2/Conv", "/head/Gemm"}
    for node, weight_name in (("/conv1/Conv", "conv1.weight"), ("/conv2/Conv", "conv2.weight"), ("/head/Gemm", "head.weight")):
        values, scale = (quantized[name] for name in dequantizers[node].input[:2])
        weight = fp32[weight_name]
        assert values.dtype == np.int8 and values.shape == weight.shape, node
        if per_channel:
            axis = next((a.i for a in dequantizers[node].attribute if a.name == "axis"), 1)
            assert scale.shape == (weight.shape[axis],), node
            scale = np.expand_dims(scale, tuple(d for d in range(weight.ndim) if d != axis))
        else:
            assert scale.shape == (), node
        assert np.abs(values * scale - weight).max() <= scale.max() / 2 * 1.0001, node  # round to nearest step


def test_excluded_node_stays_fp32_and_the_others_stay_int8(digits_case):
    int8 = digits_case.quantizer(digits_case.clean)(HOST_RECIPE.with_options(nodes_to_exclude=("/conv2/Conv",)))
    conv2 = next(node for node in onnx.load(str(int8)).graph.node if node.name == "/conv2/Conv")
    quantized, fp32 = initializers(int8), initializers(digits_case.clean)
    # its weight and bias are the fp32 initializers themselves (its input may still pass a Q/DQ pair:
    # ORT quantizes a tensor when its producer, conv1, is quantized)
    for name, fp32_name in zip(conv2.input[1:], ("conv2.weight", "conv2.bias")):
        assert quantized[name].dtype == np.float32
        np.testing.assert_array_equal(quantized[name], fp32[fp32_name])
    assert set(weight_dequantizers(int8)) == {"/conv1/Conv", "/head/Gemm"}


def test_unknown_excluded_node_is_refused(digits_case, tmp_path):
    with pytest.raises(QuantizationError, match="not in the model: no_such_node"):
        quantize_model(digits_case.clean, digits_case.calibration, QuantRecipe(nodes_to_exclude=("no_such_node",)), tmp_path / "q.onnx")
    assert not (tmp_path / "q.onnx").exists()


def test_cpu_recipe_follows_the_instruction_set():
    profile = load_profile("cpu")
    no_vnni = recipe_for_target(profile.model_copy(update={"isa": ("avx2",)}))
    vnni = recipe_for_target(profile.model_copy(update={"isa": ("avx2", "avx512_vnni")}))
    assert no_vnni.reduce_range and not vnni.reduce_range
    assert "VNNI" in no_vnni.reason


def test_cpu_engine_computes_what_its_int8_model_computes(digits_case, tmp_path):
    int8 = digits_case.quantizer(digits_case.clean)(HOST_RECIPE)
    profile = load_profile("cpu")
    builder = get_builder(profile.engine)
    assert builder.available() is None
    artifact = builder.build(int8, profile, tmp_path / "cpu")
    assert artifact.path.is_file() and artifact.precision == "int8"
    assert artifact.metadata["onnxruntime"] == onnxruntime.__version__
    digits = digits_case.eval_set.inputs["input"][:64]
    engine_logits = builder.load(artifact, profile).run({"input": digits})[0]
    model_logits = onnxruntime.InferenceSession(str(int8), providers=["CPUExecutionProvider"]).run(None, {"input": digits})[0]
    np.testing.assert_allclose(engine_logits, model_logits, atol=1e-5)
    assert (engine_logits.argmax(1) == digits_case.eval_set.labels[:64]).mean() >= 0.9


def test_unknown_engine_kind_is_refused():
    with pytest.raises(TargetError, match="no engine builder"):
        get_builder("fpga")
