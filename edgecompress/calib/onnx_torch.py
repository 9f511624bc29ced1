"""Run an ONNX graph as a differentiable torch module, for data-free calibration and quantization-aware training.

Third-party ONNX files (Paddle, Keras, torch exports without folding) often keep their
BatchNormalization nodes, and with them the running statistics of the training data.
Interpreting the graph node by node in torch, with each BatchNormalization as a real
torch BatchNorm layer, gives data-free synthesis the gradients and the statistics it needs without
a converter dependency. Quantization-aware training (quantize/qat.py) runs the same graph with its
weights as trainable parameters and fake quantization hooked onto the tensors int8 will carry, so
what is trained is the graph the quantizer will quantize. The op set is what image classifiers,
detectors and text recognizers use (convolutions, activations, pools, elementwise arithmetic,
normalizations, reshapes, resizes, matrix products); anything else is named in the error.
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


def _conv_transpose(inputs, attrs):
    x, weight, bias = inputs[0], inputs[1], inputs[2] if len(inputs) > 2 else None
    pads = list(attrs.get("pads", [0] * 2 * (x.dim() - 2)))
    spatial = x.dim() - 2
    if any(pads[i] != pads[i + spatial] for i in range(spatial)):
        raise DataFreeError("ConvTranspose with asymmetric pads is not supported by the graph runner",
                            "re-export the model with symmetric pads")
    conv = F.conv_transpose2d if x.dim() == 4 else F.conv_transpose1d
    return conv(x, weight, bias, attrs.get("strides", 1), pads[:spatial], attrs.get("output_padding", 0),
                attrs.get("group", 1), attrs.get("dilations", 1))


def _reduce(fn):
    def run(inputs, attrs):
        axes = attrs.get("axes", inputs[1] if len(inputs) > 1 and inputs[1] is not None else None)
        keep = bool(attrs.get("keepdims", 1))
        if axes is None:
            return fn(inputs[0], dim=tuple(range(inputs[0].dim())), keepdim=keep)
        return fn(inputs[0], dim=tuple(int(a) for a in axes), keepdim=keep)

    return run


def _resize(inputs, attrs):
    x = inputs[0]
    scales = inputs[2] if len(inputs) > 2 and inputs[2] is not None and inputs[2].numel() else None
    sizes = inputs[3] if len(inputs) > 3 and inputs[3] is not None else None
    mode = attrs.get("mode", b"nearest")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    transform = attrs.get("coordinate_transformation_mode", b"half_pixel")
    transform = transform.decode() if isinstance(transform, bytes) else transform
    if sizes is None and scales is None:
        raise DataFreeError("Resize without scales or sizes is not supported by the graph runner", "re-export the model")
    size = [int(v) for v in sizes[2:]] if sizes is not None else None
    factor = None if sizes is not None or scales is None else [float(v) for v in scales[2:]]
    if mode == "nearest":
        return F.interpolate(x, size=size, scale_factor=factor, mode="nearest")
    if mode == "linear":
        return F.interpolate(x, size=size, scale_factor=factor, mode="bilinear" if x.dim() == 4 else "linear",
                             align_corners=transform == "align_corners")
    raise DataFreeError(f"Resize mode '{mode}' is not supported by the graph runner", "use nearest or linear resizing")


def _split(inputs, attrs):
    x, axis = inputs[0], attrs.get("axis", 0)
    sizes = attrs.get("split", inputs[1] if len(inputs) > 1 and inputs[1] is not None else None)
    if sizes is None:
        count = attrs["num_outputs"]
        return torch.chunk(x, count, dim=axis)
    return torch.split(x, [int(v) for v in sizes], dim=axis)


def _gather(inputs, attrs):
    x, index, axis = inputs[0], inputs[1], attrs.get("axis", 0)
    index = index.long()
    if index.dim() == 0:
        return x.select(axis, int(index) % x.shape[axis])
    return torch.index_select(x, axis, index.reshape(-1) % x.shape[axis]).reshape(
        *x.shape[:axis], *index.shape, *x.shape[axis + 1:])


def _layer_norm(inputs, attrs):
    x, scale = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    axis = attrs.get("axis", -1) % x.dim()
    return F.layer_norm(x, x.shape[axis:], scale, bias, attrs.get("epsilon", 1e-5))


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
    "ConvTranspose": _conv_transpose,
    "ReduceMean": _reduce(torch.mean),
    "ReduceSum": _reduce(torch.sum),
    "Pow": lambda i, a: torch.pow(i[0], i[1]),
    "Sqrt": lambda i, a: torch.sqrt(i[0]),
    "Exp": lambda i, a: torch.exp(i[0]),
    "Log": lambda i, a: torch.log(i[0]),
    "Neg": lambda i, a: -i[0],
    "Abs": lambda i, a: torch.abs(i[0]),
    "Erf": lambda i, a: torch.erf(i[0]),
    "Reciprocal": lambda i, a: torch.reciprocal(i[0]),
    "Max": lambda i, a: torch.stack(torch.broadcast_tensors(*i)).amax(0),
    "Min": lambda i, a: torch.stack(torch.broadcast_tensors(*i)).amin(0),
    "Resize": _resize,
    "Split": _split,
    "Gather": _gather,
    "LayerNormalization": _layer_norm,
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


# inputs that hold a layer's learned weights (by op: input positions); QAT trains these, nothing else
WEIGHT_INPUTS = {"Conv": (1, 2), "ConvTranspose": (1, 2), "Gemm": (1, 2), "MatMul": (1,)}

TensorHook = Callable[[torch.Tensor], torch.Tensor]


class OnnxGraphModule(nn.Module):
    """An ONNX graph run by torch ops; each BatchNormalization is a torch BatchNorm with its statistics.

    `trainable`: the initializers that hold Conv/ConvTranspose/Gemm/MatMul weights and biases become parameters
    (`weights`, by initializer name); everything else stays constant. `tensor_hooks` (by tensor name) rewrite a
    tensor where it is produced (a graph input too) and `weight_hooks` (by initializer name) a weight or constant
    where it is read: quantization-aware training hangs its fake quantization there.
    """

    def __init__(self, model: onnx.ModelProto, trainable: bool = False) -> None:
        super().__init__()
        graph = model.graph
        unsupported = sorted({n.op_type for n in graph.node if n.op_type not in OPS and n.op_type not in ("Constant", "BatchNormalization")})
        if unsupported:
            raise DataFreeError(
                f"the ONNX graph runner does not know the ONNX op(s) {', '.join(unsupported)}",
                "pass the PyTorch model (--model package.module:factory --weights FILE), or calibrate with real data (--from)",
            )
        initializer_names = {t.name for t in graph.initializer}
        self.input_names = [i.name for i in graph.input if i.name not in initializer_names]
        self.output_names = [o.name for o in graph.output]
        self.constants: dict[str, torch.Tensor] = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in graph.initializer}
        self.batchnorms = nn.ModuleDict()
        self.weights = nn.ParameterDict()
        self.weight_keys: dict[str, str] = {}  # initializer name -> key in `weights` (ParameterDict keys take no dots)
        self.tensor_hooks: dict[str, TensorHook] = {}
        self.weight_hooks: dict[str, TensorHook] = {}
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
        if trainable:
            self._make_weights_trainable(graph)

    def _make_weights_trainable(self, graph: onnx.GraphProto) -> None:
        for node, _ in self.steps:
            for position in WEIGHT_INPUTS.get(node.op_type, ()):
                name = node.input[position] if position < len(node.input) else ""
                if name in self.constants and name not in self.weight_keys and self.constants[name].is_floating_point():
                    key = f"w{len(self.weight_keys)}"
                    self.weight_keys[name] = key
                    self.weights[key] = nn.Parameter(self.constants.pop(name).float())

    def train(self, mode: bool = True) -> "OnnxGraphModule":
        """Train mode never reaches the BatchNorm layers: their statistics are the model's data (quantization-aware
        training must not re-estimate them from a few batches, the most reported QAT failure)."""
        super().train(mode)
        self.batchnorms.eval()
        return self

    def weight(self, name: str) -> torch.Tensor:
        """A trainable weight by its initializer name."""
        return self.weights[self.weight_keys[name]]

    def _batchnorm(self, node: onnx.NodeProto, attrs: dict) -> GraphBatchNorm:
        scale, bias, mean, var = (self.constants[name] for name in node.input[1:5])
        layer = GraphBatchNorm(len(scale), eps=attrs.get("epsilon", 1e-5))
        with torch.no_grad():
            layer.weight.copy_(scale), layer.bias.copy_(bias)
            layer.running_mean.copy_(mean), layer.running_var.copy_(var)
        return layer.eval()

    def _value(self, values: dict[str, torch.Tensor], name: str) -> torch.Tensor | None:
        if not name:
            return None
        value = self.weight(name) if name in self.weight_keys else values[name]
        hook = self.weight_hooks.get(name)
        return hook(value) if hook is not None else value

    def _store(self, values: dict[str, torch.Tensor], name: str, tensor: torch.Tensor) -> None:
        hook = self.tensor_hooks.get(name)
        values[name] = hook(tensor) if hook is not None else tensor

    def run(self, *inputs: torch.Tensor, outputs: list[str] | None = None) -> list[torch.Tensor]:
        """Every graph output in the graph's order, or the tensors named in `outputs`."""
        values: dict[str, torch.Tensor] = dict(self.constants)
        for name, tensor in zip(self.input_names, inputs):
            self._store(values, name, tensor)
        for node, attrs in self.steps:
            args = [self._value(values, name) for name in node.input]
            if node.op_type == "BatchNormalization":
                result = self.batchnorms[attrs["module"]](args[0])
            else:
                result = OPS[node.op_type](args, attrs)
            results = result if isinstance(result, (tuple, list)) else (result,)
            for name, tensor in zip(node.output, results):
                self._store(values, name, tensor)
        return [values[name] for name in outputs or self.output_names]

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        """The first output (a classifier's scores: what data-free synthesis steers)."""
        return self.run(*inputs)[0]


def onnx_graph_module(path: Path) -> OnnxGraphModule:
    """The ONNX file at `path` as a torch module (refused, naming the ops, when the graph is beyond the runner)."""
    from edgecompress.export.graph import read_onnx

    return OnnxGraphModule(read_onnx(path)).eval()
