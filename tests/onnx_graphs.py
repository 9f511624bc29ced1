"""Tiny hand-made ONNX graphs that look the way real exporters write them.

Exporters differ in how they mark an open dimension: torch writes a `dim_param`, PaddlePaddle writes
`dim_value: -1`, others leave the dim empty. These builders write each form on
purpose, so tests can check that all of them read as "open".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def _dims_value_info(name: str, dims, elem_type: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    """`dims`: ints (a negative int is written as the dim_value itself), str (dim_param), None (empty dim)."""
    value = onnx.ValueInfoProto(name=name)
    value.type.tensor_type.elem_type = elem_type
    shape = value.type.tensor_type.shape
    shape.SetInParent()  # a rank-0 shape is still a shape
    for size in dims:
        dim = shape.dim.add()
        if isinstance(size, int):
            dim.dim_value = size
        elif isinstance(size, str):
            dim.dim_param = size
    return value


def conv_model(path: Path, input_dims, channels: int = 3, seed: int = 0) -> Path:
    """x → Conv(3×3, 4 filters, bias) → Relu → y, with `x` declared as `input_dims`."""
    rng = np.random.default_rng(seed)
    weight = numpy_helper.from_array(rng.normal(0, 0.3, (4, channels, 3, 3)).astype(np.float32), "w")
    bias = numpy_helper.from_array(rng.normal(0, 0.1, 4).astype(np.float32), "b")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w", "b"], ["conv_out"], name="conv", pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["conv_out"], ["y"], name="relu"),
        ],
        "conv",
        [_dims_value_info("x", input_dims)],
        [_dims_value_info("y", ["n", 4, "h", "w"])],
        [weight, bias],
    )
    return _save(graph, path)


def scalar_gain_model(path: Path, seed: int = 0) -> Path:
    """A model with a 0-d float input, a 0-d int64 input and scalar constants, like stateful audio models.

    y = Relu(Conv(x) * gain + Cast(step)) where `gain` is a float scalar and `step` an int64 scalar.
    """
    rng = np.random.default_rng(seed)
    weight = numpy_helper.from_array(rng.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32), "w")
    bias = numpy_helper.from_array(rng.normal(0, 0.1, 4).astype(np.float32), "b")
    half = numpy_helper.from_array(np.array(0.5, np.float32), "half")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w", "b"], ["conv_out"], name="conv", pads=[1, 1, 1, 1]),
            helper.make_node("Mul", ["conv_out", "gain"], ["scaled"], name="scale"),
            helper.make_node("Cast", ["step"], ["step_f"], name="cast_step", to=TensorProto.FLOAT),
            helper.make_node("Mul", ["step_f", "half"], ["offset"], name="half_step"),
            helper.make_node("Add", ["scaled", "offset"], ["shifted"], name="shift"),
            helper.make_node("Conv", ["shifted", "w2", "b2"], ["conv2_out"], name="conv2", pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["conv2_out"], ["y"], name="relu"),
        ],
        "scalar_gain",
        [
            _dims_value_info("x", ["batch", 3, 8, 8]),
            _dims_value_info("gain", []),
            _dims_value_info("step", [], TensorProto.INT64),
        ],
        [_dims_value_info("y", ["batch", 4, 8, 8])],
        [
            weight, bias, half,
            numpy_helper.from_array(rng.normal(0, 0.3, (4, 4, 3, 3)).astype(np.float32), "w2"),
            numpy_helper.from_array(rng.normal(0, 0.1, 4).astype(np.float32), "b2"),
        ],
    )
    return _save(graph, path)


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return Path(path)


def stateful_model(path: Path, batch: str | None = "batch", seed: int = 0) -> Path:
    """A recurrent step like Silero VAD's: x [batch, 16], state [2, batch, 8] (batch on axis 1), sr a 0-d int64.

    out = Relu(x·W + state[0]) [batch, 8]; new_state = tanh(state + out) · (sr / 16000). `batch=None`
    leaves the batch dims unnamed, as silero_vad.onnx does, so only --batch-axis can tell where it is.
    """
    rng = np.random.default_rng(seed)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["projected"], name="project"),
            helper.make_node("Gather", ["state", "zero"], ["first_layer"], name="first_layer", axis=0),
            helper.make_node("Add", ["projected", "first_layer"], ["summed"], name="add_state"),
            helper.make_node("Relu", ["summed"], ["out"], name="relu"),
            helper.make_node("Add", ["state", "out"], ["carried"], name="carry"),
            helper.make_node("Tanh", ["carried"], ["squashed"], name="squash"),
            helper.make_node("Cast", ["sr"], ["sr_f"], name="cast_rate", to=TensorProto.FLOAT),
            helper.make_node("Div", ["sr_f", "base_rate"], ["rate_gain"], name="rate_gain"),
            helper.make_node("Mul", ["squashed", "rate_gain"], ["new_state"], name="scale_state"),
        ],
        "stateful",
        [
            _dims_value_info("x", [batch, 16]),
            _dims_value_info("state", [2, batch, 8]),
            _dims_value_info("sr", [], TensorProto.INT64),
        ],
        [_dims_value_info("out", [batch, 8]), _dims_value_info("new_state", [2, batch, 8])],
        [
            numpy_helper.from_array(rng.normal(0, 0.4, (16, 8)).astype(np.float32), "w"),
            numpy_helper.from_array(np.array(0, np.int64), "zero"),
            numpy_helper.from_array(np.array(16000.0, np.float32), "base_rate"),
        ],
    )
    return _save(graph, path)
