"""Float Conv/ConvTranspose weights stored int8 behind DequantizeLinear: smaller file, the same outputs within the
per-channel int8 rounding, every other weight untouched."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from edgecompress.quantize.weight_storage import MIN_WEIGHTS, store_weights_int8


def _decoder(shared: bool = False) -> onnx.ModelProto:
    """x [1, 64, 8, 8] -> Conv 64->64 3x3 -> ConvTranspose 64->32 4x4 stride 2 -> MatMul with a [16, 16] weight."""
    rng = np.random.default_rng(0)
    conv = rng.normal(size=(64, 64, 3, 3)).astype(np.float32) * 0.05
    conv[5] *= 40  # one loud output channel: per-channel scales keep the quiet ones precise
    up = rng.normal(size=(64, 32, 4, 4)).astype(np.float32) * 0.05
    matmul = rng.normal(size=(16, 16)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "conv_w"], ["a"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("ConvTranspose", ["a", "up_w"], ["b"], name="up", strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("MatMul", ["b", "mm_w"], ["y"], name="mm")]
    if shared:  # the Conv weight read by a second node too: left as it is
        nodes.append(helper.make_node("Identity", ["conv_w"], ["w_copy"], name="copy"))
    graph = helper.make_graph(
        nodes, "decoder", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32, 16, 16])]
        + ([helper.make_tensor_value_info("w_copy", TensorProto.FLOAT, [64, 64, 3, 3])] if shared else []),
        [numpy_helper.from_array(conv, "conv_w"), numpy_helper.from_array(up, "up_w"), numpy_helper.from_array(matmul, "mm_w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(["y"], {"x": x})[0]


def test_conv_and_conv_transpose_weights_are_stored_int8_per_output_channel_and_compute_the_same():
    model = _decoder()
    x = np.random.default_rng(1).normal(size=(1, 64, 8, 8)).astype(np.float32)
    reference = _run(model, x)
    assert model.graph.initializer[0].ByteSize() > MIN_WEIGHTS
    stored = store_weights_int8(model, ("Conv", "ConvTranspose"))
    onnx.checker.check_model(model)
    assert stored == ["conv_w", "up_w"]
    types = {t.name: t.data_type for t in model.graph.initializer}
    assert types["conv_w_int8"] == types["up_w_int8"] == TensorProto.INT8 and types["mm_w"] == TensorProto.FLOAT
    axes = {n.output[0]: n.attribute[0].i for n in model.graph.node if n.op_type == "DequantizeLinear"}
    assert axes == {"conv_w": 0, "up_w": 1}  # output channels: Conv [Cout, Cin, k, k], ConvTranspose [Cin, Cout, k, k]
    assert len(numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "up_w_int8_scale"))) == 32
    engine = _run(model, x)
    error = engine - reference
    sqnr = 10 * np.log10(np.sum(reference ** 2) / np.sum(error ** 2))
    assert sqnr > 30, sqnr  # per-channel int8 weights: the loud channel does not flatten the others


def test_a_shared_or_excluded_weight_stays_float():
    model = _decoder(shared=True)
    assert store_weights_int8(model, ("Conv", "ConvTranspose"), exclude=("up",)) == []
    assert all(t.data_type == TensorProto.FLOAT for t in model.graph.initializer)


def test_the_dynamic_transformer_recipe_stores_conv_weights_int8_and_says_so():
    from edgecompress.quantize.recipe import QuantRecipe
    from edgecompress.quantize.transformer import transformer_recipe

    recipe = transformer_recipe(QuantRecipe(reduce_range=True), "ort-cpu")
    assert recipe.activations == "dynamic" and recipe.int8_stored_weights == ("Conv", "ConvTranspose")
    assert "Conv/ConvTranspose weights stored int8" in recipe.label
    assert transformer_recipe(QuantRecipe(), "tensorrt").int8_stored_weights == ()  # static Q/DQ there: not this
    assert QuantRecipe.from_dict(recipe.to_dict()) == recipe
