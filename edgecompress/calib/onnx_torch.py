"""Run an ONNX graph as a differentiable torch module, for data-free calibration and quantization-aware training.

Third-party ONNX files (Paddle, Keras, torch exports without folding) often keep their
BatchNormalization nodes, and with them the running statistics of the training data.
Interpreting the graph node by node in torch, with each BatchNormalization as a real
torch BatchNorm layer, gives data-free synthesis the gradients and the statistics it needs without
a converter dependency. Quantization-aware training (quantize/qat.py) runs the same graph with its
weights as trainable parameters and fake quantization hooked onto the tensors int8 will carry, so
what is trained is the graph the quantizer will quantize. The op set is what image classifiers,
detectors, text recognizers and transformer encoders (BERT-family, ViT) use (convolutions, activations, pools,
elementwise arithmetic, normalizations, reshapes, resizes, matrix products, embeddings, attention masks), with the
int64 shape arithmetic exporters write around them kept int64; anything else is named in the error.
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


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _ints(values) -> list[int]:
    """An int64 shape/axes tensor (or an attribute's list) as Python ints."""
    return [int(v) for v in (values.reshape(-1).tolist() if isinstance(values, torch.Tensor) else values)]


def _input(inputs: list, position: int):
    """An optional input: None where the node leaves it out or names it ''."""
    return inputs[position] if len(inputs) > position else None


def _axes(inputs: list, attrs: dict) -> list[int] | None:
    """`axes` as an attribute (before opset 13/18) or as the second input (after)."""
    if "axes" in attrs:
        return _ints(attrs["axes"])
    axes = _input(inputs, 1)
    return None if axes is None else _ints(axes)


def _constant(attrs: dict) -> torch.Tensor:
    """A Constant node's value, whichever attribute holds it (exporters write value_int(s)/value_float(s) too)."""
    if "value" in attrs:
        return torch.from_numpy(numpy_helper.to_array(attrs["value"]).copy())
    for name, dtype in (("value_float", torch.float32), ("value_floats", torch.float32),
                        ("value_int", torch.int64), ("value_ints", torch.int64)):
        if name in attrs:
            return torch.tensor(attrs[name], dtype=dtype)
    raise DataFreeError(f"a Constant node holding {', '.join(attrs)} is not supported by the graph runner",
                        "re-export the model with dense numeric constants, or calibrate with real data (--from)")


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
    number = float if inputs[0].is_floating_point() else int  # an int64 shape clamped stays int64
    return torch.clamp(inputs[0], None if low is None else number(low), None if high is None else number(high))


def _reshape(inputs, attrs):
    x, shape = inputs[0], _ints(inputs[1])
    if not attrs.get("allowzero", 0):  # 0 copies the input's dim unless allowzero says it means 0
        shape = [x.shape[i] if v == 0 else v for i, v in enumerate(shape)]
    return x.reshape(shape)


def _slice(inputs, attrs):
    """ONNX clamps starts and ends to the axis, counts negative axes and indices from the end, and steps backwards
    on a negative step (which torch indexing lacks: that axis is read flipped)."""
    x, starts, ends = inputs[0], _ints(inputs[1]), _ints(inputs[2])
    axes = _ints(inputs[3]) if _input(inputs, 3) is not None else list(range(len(starts)))
    steps = _ints(inputs[4]) if _input(inputs, 4) is not None else [1] * len(starts)
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis %= x.dim()
        size = x.shape[axis]
        start, end = start + size if start < 0 else start, end + size if end < 0 else end
        leading = (slice(None),) * axis
        if step > 0:
            x = x[leading + (slice(min(max(start, 0), size), min(max(end, 0), size), step),)]
        else:  # from start (at most size - 1) down to just above end (at least -1)
            start, end = min(max(start, 0), size - 1), min(max(end, -1), size - 1)
            x = x.flip(axis)[leading + (slice(size - 1 - start, size - 1 - end, -step),)]
    return x


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
    axes = _axes(inputs, attrs)
    return inputs[0].squeeze(tuple(axes)) if axes is not None else inputs[0].squeeze()


def _unsqueeze(inputs, attrs):
    x, axes = inputs[0], _axes(inputs, attrs) or []
    rank = x.dim() + len(axes)  # negative axes count from the end of the output
    for axis in sorted(a % rank for a in axes):
        x = x.unsqueeze(axis)
    return x


def _shape(inputs, attrs):
    dims = list(inputs[0].shape)  # start/end (opset 15) clamp as Python slicing does
    return torch.tensor(dims[attrs.get("start", 0):attrs.get("end", len(dims))], dtype=torch.int64)


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


def _reduce(fn: Callable[[torch.Tensor, tuple[int, ...], bool], torch.Tensor]):
    def run(inputs, attrs):
        x, axes = inputs[0], _axes(inputs, attrs)
        if not axes:  # no axes, or an empty axes input: every axis, or none at all with noop_with_empty_axes
            if attrs.get("noop_with_empty_axes", 0):
                return x
            axes = list(range(x.dim()))
        out = fn(x, tuple(axes), bool(attrs.get("keepdims", 1)))
        return out if out.dtype == x.dtype else out.to(x.dtype)  # torch sums int32 into int64; ONNX keeps the type

    return run


def _reduce_prod(x: torch.Tensor, dims: tuple[int, ...], keep: bool) -> torch.Tensor:
    for dim in sorted((d % x.dim() for d in dims), reverse=True):  # torch.prod takes one dim at a time
        x = torch.prod(x, dim, keep)
    return x


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
    sizes = attrs.get("split", _input(inputs, 1))
    if sizes is None:  # equal parts: num_outputs (opset 18), else one per output (set by OnnxGraphModule)
        return torch.chunk(x, attrs["num_outputs"], dim=axis)
    return torch.split(x, _ints(sizes), dim=axis)


def _gather(inputs, attrs):
    x, index = inputs[0], inputs[1].long()
    axis = attrs.get("axis", 0) % x.dim()
    index = index % x.shape[axis]  # negative indices count from the end
    if index.dim() == 0:
        return x.select(axis, int(index))
    return torch.index_select(x, axis, index.reshape(-1)).reshape(*x.shape[:axis], *index.shape, *x.shape[axis + 1:])


def _gather_elements(inputs, attrs):
    x, axis = inputs[0], attrs.get("axis", 0)
    return torch.gather(x, axis, inputs[1].long() % x.shape[axis])


def _index_tuple(data: torch.Tensor, index: torch.Tensor, batch_dims: int = 0) -> tuple[torch.Tensor, ...]:
    """GatherND/ScatterND indices (last axis: coordinates into `data` after its batch dims) as torch advanced indexing."""
    index = index.long()
    depth = index.shape[-1]
    index = index % torch.tensor(data.shape[batch_dims:batch_dims + depth])
    batch = [torch.arange(size).reshape(-1, *[1] * (index.dim() - 2 - axis)).expand(index.shape[:-1])
             for axis, size in enumerate(data.shape[:batch_dims])]
    return (*batch, *index.unbind(-1))


def _gather_nd(inputs, attrs):
    return inputs[0][_index_tuple(inputs[0], inputs[1], attrs.get("batch_dims", 0))]


def _scatter_nd(inputs, attrs):
    data, index, updates = inputs
    reduction = _text(attrs.get("reduction", "none"))
    if reduction not in ("none", "add"):
        raise DataFreeError(f"ScatterND with reduction '{reduction}' is not supported by the graph runner",
                            "calibrate with real data (--from)")
    return data.index_put(_index_tuple(data, index), updates, accumulate=reduction == "add")


def _layer_norm(inputs, attrs):
    x, scale, bias = inputs[0], inputs[1], _input(inputs, 2)
    normalized = x.shape[attrs.get("axis", -1) % x.dim():]
    scale = scale if scale.shape == normalized else scale.expand(normalized)  # Scale and B broadcast
    bias = bias if bias is None or bias.shape == normalized else bias.expand(normalized)
    return F.layer_norm(x, normalized, scale, bias, attrs.get("epsilon", 1e-5))


def _div(inputs, attrs):
    a, b = inputs
    if a.is_floating_point() or b.is_floating_point():
        return a / b
    return torch.div(a, b, rounding_mode="trunc")  # integer Div truncates (torch's / would give floats)


def _pow(inputs, attrs):
    out = torch.pow(inputs[0], inputs[1])
    return out if out.dtype == inputs[0].dtype else out.to(inputs[0].dtype)  # ONNX: the base's type


def _expand(inputs, attrs):
    x = inputs[0]  # ONNX broadcasts both ways: a 1 in `shape` keeps the input's dim
    return x.expand(torch.broadcast_shapes(x.shape, tuple(_ints(inputs[1]))))


def _range(inputs, attrs):
    start, limit, delta = (value.item() for value in inputs)
    return torch.arange(start, limit, delta, dtype=inputs[0].dtype)


def _constant_of_shape(inputs, attrs):
    fill = _constant(attrs) if "value" in attrs else torch.zeros((), dtype=torch.float32)
    return torch.full(_ints(inputs[0]), fill.item(), dtype=fill.dtype)


def _cumsum(inputs, attrs):
    x, axis = inputs[0], int(inputs[1])
    reverse = bool(attrs.get("reverse", 0))
    out = torch.cumsum(x.flip(axis) if reverse else x, axis, dtype=x.dtype)
    if attrs.get("exclusive", 0):  # each position leaves itself out: shift by one, starting from 0
        out = torch.cat([torch.zeros_like(out.narrow(axis, 0, 1)), out.narrow(axis, 0, out.shape[axis] - 1)], axis)
    return out.flip(axis) if reverse else out


def _trilu(inputs, attrs):
    k = _input(inputs, 1)
    return (torch.triu if attrs.get("upper", 1) else torch.tril)(inputs[0], 0 if k is None else int(k))


def _is_inf(inputs, attrs):
    x = inputs[0]
    infinite = torch.isinf(x)
    if not attrs.get("detect_positive", 1):
        infinite &= x < 0
    if not attrs.get("detect_negative", 1):
        infinite &= x > 0
    return infinite


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
    "Div": _div,
    "Mod": lambda i, a: torch.fmod(i[0], i[1]) if a.get("fmod", 0) else torch.remainder(i[0], i[1]),
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
    "LogSoftmax": lambda i, a: torch.log_softmax(i[0], dim=a.get("axis", -1)),
    "Einsum": lambda i, a: torch.einsum(_text(a["equation"]), *i),
    "ConvTranspose": _conv_transpose,
    "ReduceMean": _reduce(torch.mean),
    "ReduceSum": _reduce(torch.sum),
    "ReduceMax": _reduce(torch.amax),
    "ReduceMin": _reduce(torch.amin),
    "ReduceProd": _reduce(_reduce_prod),
    "ReduceL1": _reduce(lambda x, dims, keep: torch.linalg.vector_norm(x, 1, dims, keep)),
    "ReduceL2": _reduce(lambda x, dims, keep: torch.linalg.vector_norm(x, 2, dims, keep)),
    "ReduceSumSquare": _reduce(lambda x, dims, keep: torch.sum(x * x, dims, keep)),
    "ReduceLogSumExp": _reduce(torch.logsumexp),
    "Pow": _pow,
    "Sqrt": lambda i, a: torch.sqrt(i[0]),
    "Exp": lambda i, a: torch.exp(i[0]),
    "Log": lambda i, a: torch.log(i[0]),
    "Neg": lambda i, a: -i[0],
    "Abs": lambda i, a: torch.abs(i[0]),
    "Erf": lambda i, a: torch.erf(i[0]),
    "Gelu": lambda i, a: F.gelu(i[0], approximate=_text(a.get("approximate", "none"))),
    "Floor": lambda i, a: torch.floor(i[0]),
    "Ceil": lambda i, a: torch.ceil(i[0]),
    "Round": lambda i, a: torch.round(i[0]),  # half to even, as ONNX
    "Sign": lambda i, a: torch.sign(i[0]),
    "Sin": lambda i, a: torch.sin(i[0]),
    "Cos": lambda i, a: torch.cos(i[0]),
    "Reciprocal": lambda i, a: torch.reciprocal(i[0]),
    "Max": lambda i, a: torch.stack(torch.broadcast_tensors(*i)).amax(0),
    "Min": lambda i, a: torch.stack(torch.broadcast_tensors(*i)).amin(0),
    "Resize": _resize,
    "Split": _split,
    "Gather": _gather,
    "GatherElements": _gather_elements,
    "GatherND": _gather_nd,
    "ScatterND": _scatter_nd,
    "LayerNormalization": _layer_norm,
    "CumSum": _cumsum,
    "Trilu": _trilu,
    # masks and the int64 shape arithmetic exporters write around attention; none of it carries a gradient
    "Equal": lambda i, a: torch.eq(i[0], i[1]),
    "Less": lambda i, a: torch.lt(i[0], i[1]),
    "LessOrEqual": lambda i, a: torch.le(i[0], i[1]),
    "Greater": lambda i, a: torch.gt(i[0], i[1]),
    "GreaterOrEqual": lambda i, a: torch.ge(i[0], i[1]),
    "Not": lambda i, a: torch.logical_not(i[0]),
    "And": lambda i, a: torch.logical_and(i[0], i[1]),
    "Or": lambda i, a: torch.logical_or(i[0], i[1]),
    "Xor": lambda i, a: torch.logical_xor(i[0], i[1]),
    "IsNaN": lambda i, a: torch.isnan(i[0]),
    "IsInf": _is_inf,
    "Where": lambda i, a: torch.where(i[0], i[1], i[2]),
    "Expand": _expand,
    "Tile": lambda i, a: i[0].repeat(_ints(i[1])),
    "Range": _range,
    "ConstantOfShape": _constant_of_shape,
    "Size": lambda i, a: torch.tensor(i[0].numel(), dtype=torch.int64),
    "CastLike": lambda i, a: i[0].to(i[1].dtype),
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
                self.constants[node.output[0]] = _constant(attrs)
                continue
            if node.op_type == "Split":
                attrs.setdefault("num_outputs", len(node.output))
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
