"""ONNX graphs in and out of the export stage: read, inspect (inputs/outputs, opset, attributes), and prepare a
third-party ONNX file into one checked fp32 ONNX model.

The result is opset ≥ 17, has a dynamic batch axis (when the model allows it), is
shape-inferred, simplified with onnxslim and passes `onnx.checker`. Torch exports are
checked against PyTorch's own output on ONNX Runtime before anything else uses them.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from edgecompress.core.artifacts import atomic_path
from edgecompress.source.layout import BatchLayout
from edgecompress.source.specs import TensorSpec
from edgecompress.core.errors import InputShapeError, ModelLoadError

MIN_OPSET = 17
DEFAULT_OPSET = 18
BATCH_DIM = "batch"


@dataclass(frozen=True)
class OnnxModelInfo:
    """An fp32 ONNX file as the later steps need it: its inputs and outputs, and how far it is from PyTorch's."""

    path: Path
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    opset: int
    export_max_abs_diff: float | None = None  # ORT vs PyTorch, for torch exports
    layout: BatchLayout | None = None  # batch axis per input (source/layout.py); None: axis 0 everywhere


def _specs(values, initializer_names: set[str]) -> list[TensorSpec]:
    specs = []
    for value in values:
        if value.name in initializer_names:
            continue
        tensor_type = value.type.tensor_type
        dims = tuple(fixed_size(d) for d in tensor_type.shape.dim)
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)).name
        specs.append(TensorSpec(value.name, dims, dtype))
    return specs


def fixed_size(dim) -> int | None:
    """A dimension's size, or None when it is open: exporters write open dims as `dim_param`,
    as no value at all, or (PaddlePaddle) as `dim_value: -1`."""
    return dim.dim_value if dim.HasField("dim_value") and dim.dim_value > 0 else None


def node_attribute(node: onnx.NodeProto, name: str, default=None):
    """An ONNX node attribute's value (ints, floats, lists, bytes), or `default` when absent."""
    for attribute in node.attribute:
        if attribute.name == name:
            return onnx.helper.get_attribute_value(attribute)
    return default


def input_dims(model: onnx.ModelProto) -> dict[str, list[int | str | None]]:
    """Each real input's dims as written: a size, a dim_param name, or None (open, unnamed)."""
    initializers = {init.name for init in model.graph.initializer}
    return {
        value.name: [fixed_size(d) or (d.dim_param if d.HasField("dim_param") else None) for d in value.type.tensor_type.shape.dim]
        for value in model.graph.input
        if value.name not in initializers
    }


def model_io(model: onnx.ModelProto) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The real inputs (initializers excluded, as old exporters list them) and the outputs."""
    initializers = {init.name for init in model.graph.initializer}
    return _specs(model.graph.input, initializers), _specs(model.graph.output, set())


def read_onnx(path: Path) -> onnx.ModelProto:
    """Load and check an ONNX file, turning every way it can be broken into one clear error."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"ONNX file {path} does not exist", "check the path")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as exc:  # DecodeError, ValidationError, truncated external data...
        raise ModelLoadError(
            f"{path} is not a valid ONNX model ({exc.__class__.__name__}: {' '.join(str(exc).split())[:200]})",
            "the file may be truncated or corrupt: export or download it again",
        ) from exc
    return model


def opset_of(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def input_uses(model: onnx.ModelProto) -> Counter[str]:
    """How many node inputs read each tensor: a weight read once can be rewritten for its one consumer."""
    return Counter(name for node in model.graph.node for name in node.input)


def tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor the graph names (shape inference fills in the intermediates; where it fails,
    inputs, outputs and initializers are still typed)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except (onnx.shape_inference.InferenceError, ValueError):
        inferred = model
    graph = inferred.graph
    types = {t.name: t.data_type for t in graph.initializer}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        types.setdefault(value.name, value.type.tensor_type.elem_type)
    return types


def name_nodes(model: onnx.ModelProto) -> int:
    """Give each node without a name, or with a name an earlier node already has, one of its own
    (`<op_type>_<index>`), once, here: exclusions, diagnosis, bias correction and repair find nodes by name.
    Returns how many were named."""
    taken = {node.name for node in model.graph.node if node.name}
    seen: set[str] = set()
    renamed = 0
    for index, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            name, suffix = f"{node.op_type}_{index}", 1
            while name in taken:
                name, suffix = f"{node.op_type}_{index}_{suffix}", suffix + 1
            node.name = name
            taken.add(name)
            renamed += 1
        seen.add(node.name)
    return renamed


def finalize_model(model: onnx.ModelProto, out_path: Path) -> onnx.ModelProto:
    """Shape-infer, simplify, name every node, check and write atomically."""
    import onnxslim

    del model.graph.value_info[:]
    model = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    try:
        model = onnxslim.slim(model)
    except Exception as exc:  # simplification is an optimisation, never a reason to fail
        logging.getLogger(__name__).warning("onnxslim could not simplify the model: %s", exc)
    model = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    name_nodes(model)
    onnx.checker.check_model(model)
    with atomic_path(out_path) as tmp:
        onnx.save(model, str(tmp))
    return model


def model_info(model: onnx.ModelProto, path: Path, diff: float | None = None) -> OnnxModelInfo:
    inputs, outputs = model_io(model)
    return OnnxModelInfo(Path(path), inputs, outputs, opset_of(model), diff)


# --- third-party ONNX -----------------------------------------------------------------


def prepare_onnx(src: Path, out_path: Path, input_shapes: dict[str, tuple[int, ...]],
                 batch_axes: dict[str, int] | None = None) -> OnnxModelInfo:
    """Upgrade the opset, fix dynamic dims from `--input-shape`, then finalize."""
    model = read_onnx(src)
    if opset_of(model) < MIN_OPSET:
        try:
            model = onnx.version_converter.convert_version(model, MIN_OPSET)
        except Exception as exc:
            raise ModelLoadError(
                f"cannot upgrade {src} from opset {opset_of(model)} to {MIN_OPSET}: {exc}",
                f"re-export the model with opset >= {MIN_OPSET}",
            ) from exc
    _fix_input_dims(model, input_shapes, batch_axes or {})
    return model_info(finalize_model(model, out_path), out_path)


def _fix_input_dims(model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]], batch_axes: dict[str, int]) -> None:
    """Fill the open dims of each input from `--input-shape`; the batch axis (calib/layout.py) stays
    dynamic, named `batch` in every input so that later stages find the same layout.

    Dims the model fixes are read from it, so `--input-shape` is needed only for open dims past
    the batch, and every suggested fix is a complete shape that works when pasted.
    """
    from edgecompress.source.layout import batch_layout

    inputs, _ = model_io(model)
    graph_inputs = {value.name: value for value in model.graph.input}
    shapes = _named_input_shapes(inputs, input_shapes)
    layout = batch_layout(input_dims(model), batch_axes)
    for spec in inputs:
        tensor_type = graph_inputs[spec.name].type.tensor_type
        wanted = shapes.get(spec.name)
        if wanted is not None:
            _check_fits(spec, wanted)
        batch_axis = layout.axes[spec.name]
        open_axes = [axis for axis, size in enumerate(spec.shape) if size is None and axis != batch_axis]
        if open_axes and wanted is None:
            raise InputShapeError(
                f"input '{spec.name}' {_fmt(spec.shape)} has open dimensions on axis {', '.join(map(str, open_axes))} "
                "that the model does not fix",
                f"give them sizes, e.g. --input-shape {spec.name}:{_example_shape(spec.shape)}",
            )
        for axis, dim in enumerate(tensor_type.shape.dim):
            if axis == batch_axis and spec.shape[axis] is None:
                dim.dim_param = BATCH_DIM  # keep the batch dynamic for batch ranges
            elif spec.shape[axis] is None and wanted is not None:  # an open axis without a wanted size was refused above
                dim.dim_value = wanted[axis]


def _named_input_shapes(inputs: list[TensorSpec], input_shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """`--input-shape` by input name: an unnamed shape belongs to the single input."""
    names = [spec.name for spec in inputs]
    shapes = dict(input_shapes)
    if "" in shapes:
        if len(inputs) != 1:
            raise InputShapeError(
                f"the model has {len(inputs)} inputs, so --input-shape needs names",
                f"write NAME:dims for each of: {', '.join(names)}",
            )
        shapes[names[0]] = shapes.pop("")
    for name in shapes:
        if name not in names:
            raise InputShapeError(f"the model has no input named '{name}'", f"its inputs are: {', '.join(names)}")
    return shapes


def _check_fits(spec: TensorSpec, shape: tuple[int, ...]) -> None:
    if len(shape) != len(spec.shape):
        raise InputShapeError(
            f"input '{spec.name}' has rank {len(spec.shape)} {_fmt(spec.shape)}, but --input-shape gives {len(shape)} dims",
            f"give {len(spec.shape)} dims, e.g. --input-shape {spec.name}:{_example_shape(spec.shape)}",
        )
    for axis, (have, want) in enumerate(zip(spec.shape, shape)):
        if have is not None and have != want:
            raise InputShapeError(
                f"input '{spec.name}' has fixed size {have} on axis {axis}, but --input-shape asks for {want}",
                f"use --input-shape {spec.name}:{','.join(str(d or w) for d, w in zip(spec.shape, shape))}",
            )


EXAMPLE_OPEN_SIZE = 224  # a size to show in a suggested fix for an open non-batch dim


def _example_shape(shape: tuple[int | None, ...]) -> str:
    """A pasteable shape: the model's fixed sizes, batch 1, and an example size where a dim is open."""
    return ",".join(str(size or (1 if axis == 0 else EXAMPLE_OPEN_SIZE)) for axis, size in enumerate(shape))


def _fmt(shape: tuple[int | None, ...]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"
