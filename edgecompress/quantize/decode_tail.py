"""Which nodes of a detector are its decode tail, the part that int8 damages most.

A YOLO-style head concatenates convolution outputs of very different ranges — box
regressions that become pixel coordinates, class logits that become scores in [0, 1] —
and then decodes them (split, DFL softmax, anchor arithmetic, sigmoid). One int8 scale
for the concatenated tensor rounds either the scores or the boxes away, so repair's first
try for a detector keeps that tail in fp32. This finder is deliberately simple: the
last Concat fed directly by Conv outputs, and every node after it.
"""

from __future__ import annotations

from pathlib import Path

import onnx


def detector_tail_nodes(model: onnx.ModelProto | Path | str) -> list[str]:
    """Names of the last Concat whose inputs are Conv outputs and of every node downstream of it, in graph order."""
    graph = (model if isinstance(model, onnx.ModelProto) else onnx.load(str(model), load_external_data=False)).graph
    produced_by = {output: node for node in graph.node for output in node.output}
    heads = [
        index for index, node in enumerate(graph.node)
        if node.op_type == "Concat" and node.input and all(
            name in produced_by and produced_by[name].op_type == "Conv" for name in node.input
        )
    ]
    if not heads:
        return []
    head = graph.node[heads[-1]]
    downstream, tail = set(head.output), [head.name]
    for node in graph.node[heads[-1] + 1 :]:  # ONNX graphs are topologically sorted
        if any(name in downstream for name in node.input):
            downstream.update(node.output)
            tail.append(node.name)
    return [name for name in tail if name]
