"""Nodes the target recipe keeps in fp32 because of what the graph is, before any measurement.

- A YOLO-style detector's decode tail (edgecompress/quantize/detect_tail.py).
- Control flow (If, Loop, Scan) and recurrent cells (LSTM, GRU, RNN): ONNX Runtime's QDQ quantizer
  does not reach into subgraphs, and a recurrent cell's state feeds back through the same int8 scale
  at every step, so its error compounds over time. Both stay fp32; the rest of the graph is int8.

Each exclusion is written into the recipe's `reason`, so report.json says which nodes and why.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from edgecompress.quantize.detect_tail import detector_tail_nodes
from edgecompress.quantize.recipe import QuantRecipe

CONTROL_FLOW_OPS = ("If", "Loop", "Scan")
RECURRENT_OPS = ("LSTM", "GRU", "RNN")


def control_flow_and_recurrent_nodes(model: onnx.ModelProto) -> list[str]:
    return [node.name for node in model.graph.node if node.op_type in CONTROL_FLOW_OPS + RECURRENT_OPS and node.name]


def with_structural_exclusions(recipe: QuantRecipe, fp32_path: Path) -> QuantRecipe:
    """The recipe with the decode tail, control flow and recurrent cells of the model added to its fp32 nodes."""
    model = onnx.load(str(fp32_path), load_external_data=False)
    reasons, excluded = [], list(recipe.nodes_to_exclude)
    for nodes, why in (
        (detector_tail_nodes(model), "detector decode tail after the head's last Concat of conv outputs "
                                     "(one int8 scale cannot hold pixel coordinates and [0, 1] scores)"),
        (control_flow_and_recurrent_nodes(model), "control flow / recurrent cells (subgraphs are not quantized; "
                                                  "a recurrent state would compound int8 error at every step)"),
    ):
        new = [name for name in nodes if name not in excluded]
        if new:
            excluded += new
            reasons.append(f"kept in fp32: {len(new)} nodes, {why}: {', '.join(new)}")
    if not reasons:
        return recipe
    reason = "; ".join(([recipe.reason] if recipe.reason else []) + reasons)
    return recipe.with_options(nodes_to_exclude=tuple(excluded), reason=reason)
