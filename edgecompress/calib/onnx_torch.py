"""Run an ONNX classifier graph as a differentiable torch module, so data-free calibration works on it.

Third-party ONNX files (Paddle, Keras, torch exports without folding) often keep their
BatchNormalization nodes, and with them the running statistics of the training data.
Interpreting the graph node by node in torch, with each BatchNormalization as a real
torch BatchNorm layer, gives data-free synthesis the gradients and the statistics it needs without
a converter dependency. The op set is what image classifiers use (convolutions, activations,
pools, elementwise arithmetic, reshapes, matrix products); anything else is named in the error.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn
from torch.nn import functional as F

from edgecompress.core.errors import DataFreeError

Op = Callable[[list, dict], object]


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _pads(attrs: dict, spatial: int) -> list[int]:
    """ONNX [x1_begin, x2_begin, x1_end, x2_end] as F.pad's [x2_begin, x2_end, x1_begin, x1_end]."""
    pads = list(attrs.get("pads", [0] * 2 * spatial))
    return [p for axis in reversed(range(spatial)) for p in (pads[axis], pads[axis + spatial])]


def _padded(x: torch.Tensor, attrs: dict, value: float = 0.0) -> torch.Tensor:
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
        raise DataFreeError("ONNX auto_pad SAME_* is not supported by the data-free graph runner",
                            "re-export the model with explicit pads, or calibrate with real data (--from)")
    pads = _pads(attrs, x.dim() - 2)
    return F.pad(x, pads, value=value) if any(pads) else x


def _conv(inputs, attrs):
    x, weight, bias = inputs[0], inputs[1], inputs[2] if len(inputs) > 2 else None
    conv = F.conv2d if x.dim() == 4 else F.conv1d
    return conv(_padded(x, attrs), weight, bias, attrs.get("strides", 1), 0, attrs.get("dilations", 1),
                attrs.get("group", 1))


def _pool(kind: str):
    def run(inputs, attrs):
        x = inputs[0]
        kernel, strides = attrs["kernel_shape"], attrs.get("strides", 1)
        ceil = bool(attrs.get("ceil_mode", 0))
        if kind == "max":
            return F.max_pool2d(_padded(x, attrs, float("-inf")), kernel, strides, ceil_mode=ceil)
        include_pad = bool(attrs.get("count_include_pad", 0))
        pads = _pads(attrs, 2)
        if any(pads) and not include_pad and pads[0] == pads[1] and pads[2] == pads[3]:
            return F.avg_pool2d(x, kernel, strides, (pads[2], pads[0]), ceil, count_include_pad=False)
        return F.avg_pool2d(_padded(x, attrs), kernel, strides, ceil_mode=ceil)

    return run


def _clip(inputs, attrs):
    low = inputs[1] if len(inputs) > 1 and inputs[1] is not None else attrs.get("min")
    high = inputs[2] if len(inputs) > 2 and inputs[2] is not None else attrs.get("max")
    return torch.clamp(inputs[0], None if low is None else float(low), None if high is None else float(high))


def _reshape(inputs, attrs):
    x, shape = inputs[0], [int(v) for v in inputs[1]]
    shape = [x.shape[i] if v == 0 else v for i, v in enumerate(shape)]
    return x.reshape(shape)


def _slice(inputs, attrs):
    x, starts, ends = inputs[0], inputs[1], inputs[2]
    axes = inputs[3] if len(inputs) > 3 and inputs[3] is not None else range(len(starts))
    steps = inputs[4] if len(inputs) > 4 and inputs[4] is not None else [1] * len(starts)
    index = [slice(None)] * x.dim()
    for start, end, axis, step in zip(starts, ends, axes, steps):
        size = x.shape[int(axis)]
        index[int(axis)] = slice(max(min(int(start), size), -size), max(min(int(end), size), -size - 1), int(step))
    return x[tuple(index)]


def _gemm(inputs, attrs):
    a, b = inputs[0], inputs[1]
    a = a.t() if attrs.get("transA", 0) else a
    b = b.t() if attrs.get("transB", 0) else b
    out = attrs.get("alpha", 1.0) * (a @ b)
    return out + attrs.get("beta", 1.0) * inputs[2] if len(inputs) > 2 else out


def _flatten(inputs, attrs):
    axis = attrs.get("axis", 1)
    return inputs[0].reshape(int(np.prod(inputs[0].shape[:axis])), -1)


def _squeeze(inputs, attrs):
    axes = attrs.get("axes", inputs[1] if len(inputs) > 1 else None)
    return inputs[0].squeeze(tuple(int(a) for a in axes)) if axes is not None else inputs[0].squeeze()


def _unsqueeze(inputs, attrs):
    x = inputs[0]
    for axis in sorted(int(a) for a in attrs.get("axes", inputs[1] if len(inputs) > 1 else [])):
        x = x.unsqueeze(axis)
    return x


def _shape(inputs, attrs):
    return torch.tensor(inputs[0].shape, dtype=torch.int64)


def _cast(inputs, attrs):
    dtype = onnx.helper.tensor_dtype_to_np_dtype(attrs["to"])
    return inputs[0].to(torch.from_numpy(np.zeros(0, dtype)).dtype)


OPS: dict[str, Op] = {
    "Conv": _conv,
    "Relu": lambda i, a: F.relu(i[0]),
    "LeakyRelu": lambda i, a: F.leaky_relu(i[0], a.get("alpha", 0.01)),
    "Clip": _clip,
    "Sigmoid": lambda i, a: torch.sigmoid(i[0]),
    "HardSigmoid": lambda i, a: torch.clamp(a.get("alpha", 0.2) * i[0] + a.get("beta", 0.5), 0, 1),
    "HardSwish": lambda i, a: F.hardswish(i[0]),
    "Tanh": lambda i, a: torch.tanh(i[0]),
    "Add": lambda i, a: i[0] + i[1],
    "Sub": lambda i, a: i[0] - i[1],
    "Mul": lambda i, a: i[0] * i[1],
    "Div": lambda i, a: i[0] / i[1],
    "MaxPool": _pool("max"),
    "AveragePool": _pool("avg"),
    "GlobalAveragePool": lambda i, a: i[0].mean(dim=tuple(range(2, i[0].dim())), keepdim=True),
    "GlobalMaxPool": lambda i, a: i[0].amax(dim=tuple(range(2, i[0].dim())), keepdim=True),
    "Reshape": _reshape,
    "Flatten": _flatten,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Transpose": lambda i, a: i[0].permute(*a["perm"]) if "perm" in a else i[0].permute(*reversed(range(i[0].dim()))),
    "Concat": lambda i, a: torch.cat([t.to(i[0].dtype) for t in i], dim=a["axis"]),
    "Shape": _shape,
    "Slice": _slice,
    "Cast": _cast,
    "Identity": lambda i, a: i[0],
    "Dropout": lambda i, a: i[0],
    "MatMul": lambda i, a: i[0] @ i[1],
    "Gemm": _gemm,
    "Softmax": lambda i, a: torch.softmax(i[0], dim=a.get("axis", -1)),
}


class GraphBatchNorm(nn.modules.batchnorm._BatchNorm):
    """ONNX BatchNormalization: per-channel on axis 1 for any rank, so the data-free hooks find it."""

    # always affine with running statistics (the defaults): ONNX's BatchNormalization carries all four
    weight: nn.Parameter
    bias: nn.Parameter
    running_mean: torch.Tensor
    running_var: torch.Tensor

    def _check_input_dim(self, input: torch.Tensor) -> None:
        pass


class OnnxGraphModule(nn.Module):
    """An ONNX graph run by torch ops; each BatchNormalization is a torch BatchNorm with its statistics."""

    def __init__(self, model: onnx.ModelProto) -> None:
        super().__init__()
        graph = model.graph
        unsupported = sorted({n.op_type for n in graph.node if n.op_type not in OPS and n.op_type not in ("Constant", "BatchNormalization")})
        if unsupported:
            raise DataFreeError(
                f"the data-free graph runner does not know the ONNX op(s) {', '.join(unsupported)}",
                "pass the PyTorch model (--model package.module:factory --weights FILE), or calibrate with real data (--from)",
            )
        initializer_names = {t.name for t in graph.initializer}
        self.input_names = [i.name for i in graph.input if i.name not in initializer_names]
        self.output_names = [o.name for o in graph.output]
        self.constants: dict[str, torch.Tensor] = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in graph.initializer}
        self.batchnorms = nn.ModuleDict()
        self.steps: list[tuple[onnx.NodeProto, dict]] = []
        for index, node in enumerate(graph.node):
            attrs = _attrs(node)
            if node.op_type == "Constant":
                self.constants[node.output[0]] = torch.from_numpy(numpy_helper.to_array(attrs["value"]).copy())
                continue
            if node.op_type == "BatchNormalization":
                self.batchnorms[str(index)] = self._batchnorm(node, attrs)
                attrs = {"module": str(index)}
            self.steps.append((node, attrs))
        for parameter in self.parameters():
            parameter.requires_grad_(False)

    def _batchnorm(self, node: onnx.NodeProto, attrs: dict) -> GraphBatchNorm:
        scale, bias, mean, var = (self.constants[name] for name in node.input[1:5])
        layer = GraphBatchNorm(len(scale), eps=attrs.get("epsilon", 1e-5))
        with torch.no_grad():
            layer.weight.copy_(scale), layer.bias.copy_(bias)
            layer.running_mean.copy_(mean), layer.running_var.copy_(var)
        return layer.eval()

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        values: dict[str, torch.Tensor] = dict(self.constants)
        values.update(zip(self.input_names, inputs))
        for node, attrs in self.steps:
            args = [values[name] if name else None for name in node.input]
            if node.op_type == "BatchNormalization":
                result = self.batchnorms[attrs["module"]](args[0])
            else:
                result = OPS[node.op_type](args, attrs)
            values[node.output[0]] = result
        return values[self.output_names[0]]


def onnx_graph_module(path: Path) -> OnnxGraphModule:
    """The ONNX file at `path` as a torch module (refused, naming the ops, when the graph is beyond the runner)."""
    from edgecompress.export.graph import read_onnx

    return OnnxGraphModule(read_onnx(path)).eval()
