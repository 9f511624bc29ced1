"""SmoothQuant-style outlier migration for the MatMuls of transformer encoders.

A few hidden channels of a transformer's activations (LayerNorm outputs above all) are tens of times larger than
the rest, and one int8 scale per tensor then leaves the other channels a handful of levels: the embedding of a
sentence encoder turned by int8 this way loses its nearest neighbours first. Weights have no such outliers. So
(Xiao et al., ICML 2023) each input channel j of a MatMul is divided by s_j = max|X_j|^α / max|W_j|^(1-α) and the
weight's row j multiplied by it: the product is unchanged in real arithmetic, and the difficulty moves from the
activations into the weights, which are quantized per output channel. Where the activation feeds several MatMuls
(query, key and value), one shared `Mul` divides it once and max|W_j| is taken over all of their weights.

The division is a `Mul` node in front of the MatMuls (a LayerNorm's output also feeds the residual path, so it
cannot be folded into the LayerNorm's scale without changing that path): a float elementwise op on one
activation per group, which the measured speed includes.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from edgecompress.core.runtime import session_with_outputs
from edgecompress.export.graph import input_uses

SCALE_LIMITS = (1e-4, 1e4)  # a channel that never fires (max 0) keeps s = 1; others are kept within these


def weighted_matmuls(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    """Activation tensor -> the MatMuls that multiply it by a constant 2-D weight [in, out] (their input 1)."""
    weights = {t.name: t for t in model.graph.initializer if len(t.dims) == 2}
    groups: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in model.graph.node:
        if node.op_type == "MatMul" and node.input[1] in weights and node.input[0] not in weights:
            groups[node.input[0]].append(node)
    return dict(groups)


def channel_absmax(model_path: Path, feeds: Iterable[dict[str, np.ndarray]], tensors: list[str]) -> dict[str, np.ndarray]:
    """max |x| per last-axis channel of each tensor in `tensors` over every calibration batch (ONNX Runtime)."""
    session = session_with_outputs(onnx.load(str(model_path)), tensors)
    found: dict[str, np.ndarray] = {}
    for feed in feeds:
        for name, value in zip(tensors, session.run(tensors, feed)):
            value = np.abs(np.nan_to_num(value.reshape(-1, value.shape[-1]), posinf=0.0, neginf=0.0)).max(axis=0)
            found[name] = value if name not in found else np.maximum(found[name], value)
    return found


def migration_scales(activation_max: np.ndarray, weights: list[np.ndarray], alpha: float) -> np.ndarray:
    """s_j = max|X_j|^α / max|W_j|^(1-α), with W_j the input channel's row over every weight of the group."""
    weight_max = np.max([np.abs(w).max(axis=1) for w in weights], axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        scales = activation_max.astype(np.float64) ** alpha / np.maximum(weight_max, 1e-12).astype(np.float64) ** (1 - alpha)
    scales = np.where((activation_max > 0) & np.isfinite(scales), scales, 1.0)
    return np.clip(scales, *SCALE_LIMITS).astype(np.float32)


def smooth_matmuls(model: onnx.ModelProto, activation_max: dict[str, np.ndarray], alpha: float) -> int:
    """Migrate each group's activation outliers into its weights, in place; returns how many groups were smoothed."""
    initializers = {t.name: t for t in model.graph.initializer}
    consumers = input_uses(model)
    smoothed = 0
    for activation, nodes in weighted_matmuls(model).items():
        if activation not in activation_max or any(consumers[n.input[1]] > 1 for n in nodes):
            continue  # a weight shared with another node cannot take this group's scales alone
        weights = [numpy_helper.to_array(initializers[n.input[1]]) for n in nodes]
        if activation_max[activation].shape != (weights[0].shape[0],):
            continue
        scales = migration_scales(activation_max[activation], weights, alpha)
        for node, weight in zip(nodes, weights):
            initializers[node.input[1]].CopyFrom(numpy_helper.from_array((weight * scales[:, None]).astype(weight.dtype),
                                                                         node.input[1]))
        divided, inverse = f"{activation}_smoothed", f"{activation}_smooth_inverse"
        model.graph.initializer.append(numpy_helper.from_array((1.0 / scales).astype(np.float32), inverse))
        mul = onnx.helper.make_node("Mul", [activation, inverse], [divided], name=f"{activation}_smooth")
        first = min(list(model.graph.node).index(n) for n in nodes)
        model.graph.node.insert(first, mul)
        for node in nodes:
            node.input[0] = divided
        smoothed += 1
    return smoothed
