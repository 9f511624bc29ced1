"""Bias correction (Nagel et al., 2019, "Data-Free Quantization", §4.2) of int8 weight error.

Rounding a layer's weights W to int8 gives W_q = W + ε. The error ε is not zero-mean per
output channel when a channel has few weights (a depthwise 3×3 kernel has nine), so the
int8 layer's outputs are shifted by E[ε * x] — a bias that the following layers and the
ReLUs turn into accuracy loss. Subtracting that shift from the layer's bias removes it:

    b' = b - E[conv(x, ε)]        (Conv; exact with padding and strides, by linearity)
    b' = b - alpha * E[x] @ ε'    (Gemm)

ε is read from a quantization of this very model by ONNX Runtime (the DequantizeLinear of
each weight, so it is exactly what the int8 kernels run) and E[x] from the fp32 model on
the calibration set. Only biases change, so the weight quantization — and ε — stay the same
when the corrected model is quantized again.

Measured results are in docs/concepts/ladder.md ("Bias correction") and benchmarks/bias_correction.py.
Like equalization this is a recipe option (`QuantRecipe.bias_correction`); quantize applies it
to its own prepared copy of the model, never to the user's file.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgecompress.export.graph import node_attribute

CORRECTED_OPS = ("Conv", "Gemm")


def dequantized_weights(qdq_model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Node name → its weight as the int8 kernels see it, for each quantized Conv/Gemm."""
    graph = qdq_model.graph
    initializers = {init.name: init for init in graph.initializer}
    dequantizers = {node.output[0]: node for node in graph.node if node.op_type == "DequantizeLinear"}
    weights = {}
    for node in graph.node:
        dq = dequantizers.get(node.input[1]) if node.op_type in CORRECTED_OPS and len(node.input) > 1 else None
        if dq is None or dq.input[0] not in initializers:
            continue
        weights[node.name] = dequantize(dq, initializers)
    return weights


def dequantize(dq: onnx.NodeProto, initializers: dict[str, onnx.TensorProto]) -> np.ndarray:
    """The float value a DequantizeLinear of an initializer produces (per-tensor or per-channel)."""
    quantized = numpy_helper.to_array(initializers[dq.input[0]]).astype(np.float32)
    scale = numpy_helper.to_array(initializers[dq.input[1]]).astype(np.float32)
    zero = numpy_helper.to_array(initializers[dq.input[2]]).astype(np.float32) if len(dq.input) > 2 and dq.input[2] else 0.0
    if np.ndim(scale) == 1:  # per-channel: broadcast along the DequantizeLinear axis
        shape = [1] * quantized.ndim
        shape[node_attribute(dq, "axis", 1)] = -1
        scale, zero = scale.reshape(shape), np.reshape(zero, shape) if np.ndim(zero) == 1 else zero
    return (quantized - zero) * scale


def input_means(fp32_model: onnx.ModelProto, batches, tensor_names: set[str]) -> dict[str, np.ndarray]:
    """Mean over the calibration samples of each named tensor (one fp32 pass, extra outputs on a copy)."""
    import onnxruntime as ort

    from edgecompress.core.runtime import session_options

    model = onnx.ModelProto()
    model.CopyFrom(fp32_model)
    graph_inputs = {value.name for value in model.graph.input}
    present = {value.name for value in model.graph.output}
    for name in sorted(tensor_names - graph_inputs - present):
        model.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), session_options(threads=0), providers=["CPUExecutionProvider"])
    wanted = sorted(tensor_names - graph_inputs)
    sums: dict[str, np.ndarray] = {}
    count = 0
    for feeds in batches:
        values = dict(zip(wanted, session.run(wanted, feeds))) | {k: v for k, v in feeds.items() if k in tensor_names}
        for name, value in values.items():
            total = value.astype(np.float64).sum(0)
            sums[name] = sums[name] + total if name in sums else total
        count += len(next(iter(feeds.values())))
    return {name: (total / max(count, 1)).astype(np.float32) for name, total in sums.items()}


def _explicit_pads(node: onnx.NodeProto, spatial: tuple[int, ...], kernel: tuple[int, ...]) -> list[int]:
    """ONNX `pads` (begins then ends), computing auto_pad SAME_* the way ONNX defines it."""
    rank = len(spatial)
    strides = node_attribute(node, "strides", [1] * rank)
    dilations = node_attribute(node, "dilations", [1] * rank)
    auto_pad = node_attribute(node, "auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        totals = [max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0) for size, s, k, d in zip(spatial, strides, kernel, dilations)]
        small = [t // 2 for t in totals]
        large = [t - t // 2 for t in totals]
        return small + large if auto_pad == "SAME_UPPER" else large + small
    if auto_pad == "VALID":
        return [0] * (2 * rank)
    return list(node_attribute(node, "pads", [0] * (2 * rank)))


def _conv_output_shift(node: onnx.NodeProto, error: np.ndarray, mean_input: np.ndarray) -> np.ndarray:
    """E[conv(x, ε)] per output channel = spatial mean of conv(E[x], ε): convolution is linear."""
    import torch
    import torch.nn.functional as F

    rank = error.ndim - 2
    pads = _explicit_pads(node, mean_input.shape[1:], error.shape[2:])
    torch_pads = [p for axis in reversed(range(rank)) for p in (pads[axis], pads[axis + rank])]  # last axis first
    x = F.pad(torch.from_numpy(mean_input[None].astype(np.float32)), torch_pads)
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[rank]
    out = conv(x, torch.from_numpy(error), stride=node_attribute(node, "strides", [1] * rank),
               dilation=node_attribute(node, "dilations", [1] * rank), groups=node_attribute(node, "group", 1))
    return out[0].reshape(out.shape[1], -1).mean(1).numpy()


def _gemm_output_shift(node: onnx.NodeProto, error: np.ndarray, mean_input: np.ndarray) -> np.ndarray:
    weight = error.T if node_attribute(node, "transB", 0) else error
    return node_attribute(node, "alpha", 1.0) * (mean_input @ weight)


def _bias_name(node: onnx.NodeProto) -> str:
    return node.input[2] if len(node.input) > 2 else ""


def _set_bias(model: onnx.ModelProto, initializers: dict[str, onnx.TensorProto], node: onnx.NodeProto, bias: np.ndarray) -> None:
    name = _bias_name(node)
    if name:
        initializers[name].CopyFrom(numpy_helper.from_array(bias.astype(np.float32), name))
        return
    name = f"{node.name or node.output[0]}_corrected_bias"
    model.graph.initializer.append(numpy_helper.from_array(bias.astype(np.float32), name))
    while len(node.input) < 3:
        node.input.append("")
    node.input[2] = name


def correctable_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Conv/Gemm with constant weights and a constant (or no) bias; Gemm without transA."""
    initializers = {init.name for init in model.graph.initializer}
    users: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            users[name] = users.get(name, 0) + 1
    nodes = []
    for node in model.graph.node:
        if node.op_type not in CORRECTED_OPS or len(node.input) < 2 or node.input[1] not in initializers:
            continue
        bias = _bias_name(node)
        if bias and (bias not in initializers or users.get(bias, 0) > 1):
            continue  # a computed or shared bias cannot be edited for this node alone
        if node.op_type == "Gemm" and node_attribute(node, "transA", 0):
            continue
        nodes.append(node)
    return nodes


def correct_biases(model: onnx.ModelProto, quantized_weights: dict[str, np.ndarray], means: dict[str, np.ndarray]) -> int:
    """Subtract each quantized layer's expected weight-error shift from its bias, in place."""
    initializers = {init.name: init for init in model.graph.initializer}
    count = 0
    for node in correctable_nodes(model):
        if node.name not in quantized_weights or node.input[0] not in means:
            continue
        weight = numpy_helper.to_array(initializers[node.input[1]]).astype(np.float32)
        error = quantized_weights[node.name] - weight
        bias_name = _bias_name(node)
        if node.op_type == "Conv":
            shift = _conv_output_shift(node, error, means[node.input[0]])
            scale = 1.0
        else:
            shift = _gemm_output_shift(node, error, means[node.input[0]])
            scale = node_attribute(node, "beta", 1.0) if bias_name else 1.0
            if scale == 0.0:
                continue
        bias = numpy_helper.to_array(initializers[bias_name]).astype(np.float32) if bias_name else np.zeros(shift.shape, np.float32)
        if bias.shape != shift.shape:
            continue  # a broadcast Gemm bias: not per output channel
        _set_bias(model, initializers, node, bias - shift / scale)
        count += 1
    return count
