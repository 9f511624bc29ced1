"""fp16 for the layers int8 leaves out, and the host's simulation of fp16 arithmetic.

TensorRT built with `--int8 --fp16` runs every layer outside the Q/DQ pairs in fp16 (when faster);
with `--int8` alone they run in fp32, and fp32 islands on a Jetson's GPU cost much of int8's gain.
Which one a kit gets is a fact of the model file: `mark_float_layers` writes it into the graph's
metadata (FLOAT_LAYERS_KEY), the precision label reads it back (int8+fp16) and the builder flags follow
the label, here and in the kit's trtexec line and build_engine.py.

`fp16_rounded` is how this host judges that choice: every float tensor a layer writes outside the
Q/DQ pairs, and every float weight, is rounded to fp16 (Cast to fp16 and back), with the arithmetic
in fp32 between. TensorRT's fp16 convolutions accumulate in fp32 too, so this is its storage error;
what it does not model is TensorRT's fusions (a fused Conv+SiLU never writes its fp16 intermediate)
and its kernel choice (a layer may stay fp32 where that is faster), so it errs on the pessimistic side.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgecompress.core.artifacts import atomic_path
from edgecompress.export.graph import tensor_types

FLOAT_LAYERS_KEY = "edgecompress.float_layers"
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def float_layers_precision(model: onnx.ModelProto) -> str:
    """"fp16" when the graph is marked to run its float layers in fp16 (FLOAT_LAYERS_KEY), else "fp32"."""
    marked = {prop.key: prop.value for prop in model.metadata_props}.get(FLOAT_LAYERS_KEY)
    return "fp16" if marked == "fp16" else "fp32"


def mark_float_layers(int8_path: Path, out_path: Path, precision: str = "fp16") -> Path:
    """A copy of the int8 QDQ model whose layers outside Q/DQ are to run in `precision` on the device."""
    model = onnx.load(str(int8_path))
    kept = [prop for prop in model.metadata_props if prop.key != FLOAT_LAYERS_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.add(key=FLOAT_LAYERS_KEY, value=precision)
    with atomic_path(out_path) as tmp:
        onnx.save(model, str(tmp))
    return Path(out_path)


def fp16_rounded(model: onnx.ModelProto) -> onnx.ModelProto:
    """The graph with every float output of a non-Q/DQ node, and every float weight they read, rounded to fp16.

    Q/DQ nodes keep their exact int8 grid (scales stay fp32, as TensorRT's do); graph inputs stay fp32.
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    types = tensor_types(model)
    qdq_inputs = {name for node in graph.node if node.op_type in QDQ_OPS for name in node.input}
    for index, tensor in enumerate(graph.initializer):
        if tensor.data_type == TensorProto.FLOAT and tensor.name not in qdq_inputs:
            rounded = numpy_helper.to_array(tensor).astype(np.float16).astype(np.float32)
            graph.initializer[index].CopyFrom(numpy_helper.from_array(rounded, tensor.name))
    nodes = []
    for node in graph.node:
        nodes.append(node)
        if node.op_type in QDQ_OPS:
            continue
        for position, name in enumerate(node.output):
            if not name or types.get(name) != TensorProto.FLOAT:
                continue
            written = f"{name}__fp32"
            node.output[position] = written
            nodes.append(helper.make_node("Cast", [written], [f"{name}__fp16"], to=TensorProto.FLOAT16,
                                          name=f"{name}__to_fp16"))
            nodes.append(helper.make_node("Cast", [f"{name}__fp16"], [name], to=TensorProto.FLOAT, name=f"{name}__from_fp16"))
    del graph.node[:]
    graph.node.extend(nodes)
    return model


def write_fp16_rounded(model_path: Path, out_path: Path) -> Path:
    with atomic_path(out_path) as tmp:
        onnx.save(fp16_rounded(onnx.load(str(model_path))), str(tmp))
    return Path(out_path)
