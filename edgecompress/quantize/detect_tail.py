"""A YOLO-style detector's decode tail, which int8 cannot take safely.

YOLOv8-family heads end in raw convolutions whose outputs are concatenated, and then decode them
inside the graph: the DFL softmax, box arithmetic in pixels, and a Concat of pixel coordinates
(hundreds) with class scores in [0, 1]. One int8 scale for that last Concat leaves the scores a
handful of levels, and detections after NMS drift (F1 0.42 vs fp32 in the issue's measurement;
with the tail in fp32, 0.90-0.94 at 1.3-1.4x ORT fp32 speed). The target recipe keeps it in fp32.
"""

from __future__ import annotations

from pathlib import Path

import onnx

# ops that move or regroup conv outputs without computing on them
REGROUPING_OPS = ("Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Concat")


def is_detection_head_shape(shape: tuple[int | None, ...]) -> bool:
    """[N, 4+C, anchors] or [N, anchors, 4+C]: boxes and class scores for many more anchors than channels."""
    if len(shape) != 3 or shape[1] is None or shape[2] is None:
        return False
    channels, anchors = sorted((shape[1], shape[2]))
    return channels >= 5 and anchors >= 8 * channels


def _regrouped_conv_outputs(tensor: str, producers: dict[str, onnx.NodeProto], depth: int = 0) -> bool:
    """Whether `tensor` is conv outputs, possibly reshaped, transposed or concatenated."""
    node = producers.get(tensor)
    if node is None or depth > 8:
        return False
    if node.op_type == "Conv":
        return True
    if node.op_type not in REGROUPING_OPS:
        return False
    sources = node.input if node.op_type == "Concat" else node.input[:1]
    return all(_regrouped_conv_outputs(source, producers, depth + 1) for source in sources)


def _descendants(start: onnx.NodeProto, graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """Nodes fed, directly or not, by `start`'s outputs, in graph order (nodes are topologically sorted)."""
    reached, tail = set(start.output), []
    for node in graph.node:
        if any(name in reached for name in node.input):
            tail.append(node)
            reached.update(node.output)
    return tail


def detector_tail_nodes(model: onnx.ModelProto | Path | str) -> list[str]:
    """Names of the nodes after the head's last Concat of conv outputs, when an output is detection-shaped.

    Empty for anything that is not a YOLO-style detector (classifiers, dense maps, sequences).
    """
    from edgecompress.export.graph import model_io

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)

    _, outputs = model_io(model)
    if any(None in spec.shape[1:] for spec in outputs):  # an exporter's raw graph: infer the output shapes first
        _, outputs = model_io(onnx.shape_inference.infer_shapes(model))
    detection_outputs = {spec.name for spec in outputs if is_detection_head_shape(spec.shape)}
    if not detection_outputs:
        return []
    graph = model.graph
    producers = {output: node for node in graph.node for output in node.output}
    head_concats = [node for node in graph.node if node.op_type == "Concat" and _regrouped_conv_outputs(node.output[0], producers)]
    for concat in reversed(head_concats):
        tail = _descendants(concat, graph)
        if tail and any(output in detection_outputs for node in tail for output in node.output):
            return [node.name for node in tail if node.name]
    return []

