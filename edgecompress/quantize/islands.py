"""Float ops that ONNX Runtime cannot run in int8, restated with ops it can, before quantization.

ONNX Runtime's quantizer leaves an operator without an int8 kernel in float: a DequantizeLinear before it and a
QuantizeLinear after it (a *float island*, measure/op_profile.py). On a MobileNetV3-style model two operators
make most of them: the `Div` by 6 of every HardSwish (`x * clip(x + 3, 0, 6) / 6`, as Paddle and older PyTorch
exports write it) and the `HardSigmoid` of every squeeze-excite gate. Both are exact in ops that have int8 kernels
(QLinearMul, QLinearAdd, Clip folded into the quantization range):

- `Div(x, c)` with a constant `c` is `Mul(x, 1/c)`;
- `HardSigmoid(x)` is `Clip(Add(Mul(x, alpha), beta), 0, 1)`.

The rewrite is a recipe option (`QuantRecipe.int8_rewrites`), applied to the float graph that is then quantized
(and that quantization-aware training trains): the quantizer places the Q/DQ, nothing edits a quantized graph.
Whether it pays is measured (benchmarks/fast_int8.py), and the budget judges the result like any other recipe.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import onnx
from onnx import helper, numpy_helper

DIV_BY_CONSTANT = "div-by-constant"
HARD_SIGMOID = "hardsigmoid"
REWRITES = (DIV_BY_CONSTANT, HARD_SIGMOID)


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def _initializer(graph: onnx.GraphProto, name: str, value: np.ndarray) -> str:
    graph.initializer.append(numpy_helper.from_array(value, name))
    return name


def _unique(graph: onnx.GraphProto, base: str) -> str:
    taken = {t.name for t in graph.initializer} | {o for n in graph.node for o in n.output} | {n.name for n in graph.node}
    name, index = base, 0
    while name in taken:
        index += 1
        name = f"{base}_{index}"
    return name


def _div_as_mul(graph: onnx.GraphProto, node: onnx.NodeProto, constants: dict[str, np.ndarray]) -> list[onnx.NodeProto] | None:
    divisor = constants.get(node.input[1])
    if divisor is None or divisor.dtype.kind != "f" or not np.all(divisor != 0):
        return None
    reciprocal = _initializer(graph, _unique(graph, f"{node.name or node.output[0]}_reciprocal"),
                              (1.0 / divisor.astype(np.float64)).astype(divisor.dtype))
    return [helper.make_node("Mul", [node.input[0], reciprocal], list(node.output), name=node.name)]


def _hard_sigmoid_as_clip(graph: onnx.GraphProto, node: onnx.NodeProto) -> list[onnx.NodeProto]:
    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    alpha, beta = float(attributes.get("alpha", 0.2)), float(attributes.get("beta", 0.5))
    base = node.name or node.output[0]
    names = {key: _unique(graph, f"{base}_{key}") for key in ("alpha", "beta", "zero", "one", "scaled", "shifted")}
    for key, value in (("alpha", alpha), ("beta", beta), ("zero", 0.0), ("one", 1.0)):
        _initializer(graph, names[key], np.array(value, np.float32))
    return [
        helper.make_node("Mul", [node.input[0], names["alpha"]], [names["scaled"]], name=f"{base}_mul"),
        helper.make_node("Add", [names["scaled"], names["beta"]], [names["shifted"]], name=f"{base}_add"),
        helper.make_node("Clip", [names["shifted"], names["zero"], names["one"]], list(node.output), name=base),
    ]


def rewrite_for_int8(model: onnx.ModelProto, rewrites: Iterable[str]) -> dict[str, int]:
    """Restate the `rewrites` (names in REWRITES) in ops with int8 kernels, in place; how many nodes each changed.

    The rewritten node keeps its name (the Clip of a HardSigmoid, the Mul of a Div), so nodes_to_exclude and the
    per-layer diagnosis still find it."""
    wanted = set(rewrites)
    unknown = wanted - set(REWRITES)
    if unknown:
        raise ValueError(f"unknown int8 rewrites {sorted(unknown)}; known: {', '.join(REWRITES)}")
    graph = model.graph
    opset = next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), 0)
    if opset < 11:  # Clip takes its bounds as inputs from opset 11
        wanted.discard(HARD_SIGMOID)
    constants = _constants(graph)
    counts = dict.fromkeys(sorted(wanted), 0)
    new_nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        replacement = None
        if node.op_type == "Div" and DIV_BY_CONSTANT in wanted and node.domain in ("", "ai.onnx"):
            replacement = _div_as_mul(graph, node, constants)
            counts[DIV_BY_CONSTANT] += replacement is not None
        elif node.op_type == "HardSigmoid" and HARD_SIGMOID in wanted and node.domain in ("", "ai.onnx"):
            replacement = _hard_sigmoid_as_clip(graph, node)
            counts[HARD_SIGMOID] += 1
        new_nodes.extend(replacement or [node])
    del graph.node[:]
    graph.node.extend(new_nodes)
    return counts
