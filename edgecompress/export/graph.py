"""ONNX graphs in and out of the export stage: read, inspect (inputs/outputs, opset, attributes), and prepare a
third-party ONNX file into one checked fp32 ONNX model.

The result is opset ≥ 17, has a dynamic batch axis (when the model allows it), is
shape-inferred, simplified with onnxslim and passes `onnx.checker`. Torch exports are
checked against PyTorch's own output on ONNX Runtime before anything else uses them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from edgecompress.core.artifacts import atomic_path
from edgecompress.source.specs import TensorSpec
from edgecompress.core.errors import InputShapeError, ModelLoadError

MIN_OPSET = 17
DEFAULT_OPSET = 18
BATCH_DIM = "batch"


@dataclass(frozen=True)
class OnnxModelInfo:
    path: Path
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    opset: int
    export_max_abs_diff: float | None = None  # ORT vs PyTorch, for torch exports


def _specs(values, initializer_names: set[str]) -> list[TensorSpec]:
    specs = []
    for value in values:
        if value.name in initializer_names:
            continue
        tensor_type = value.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim)
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)).name
        specs.append(TensorSpec(value.name, dims, dtype))
    return specs


def node_attribute(node: onnx.NodeProto, name: str, default=None):
    """An ONNX node attribute's value (ints, floats, lists, bytes), or `default` when absent."""
    for attribute in node.attribute:
        if attribute.name == name:
            return onnx.helper.get_attribute_value(attribute)
    return default


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


def finalize_model(model: onnx.ModelProto, out_path: Path) -> onnx.ModelProto:
    """Shape-infer, simplify, check and write atomically."""
    import onnxslim

    del model.graph.value_info[:]
    model = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    try:
        model = onnxslim.slim(model)
    except Exception as exc:  # simplification is an optimisation, never a reason to fail
        logging.getLogger(__name__).warning("onnxslim could not simplify the model: %s", exc)
    model = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    onnx.checker.check_model(model)
    with atomic_path(out_path) as tmp:
        onnx.save(model, str(tmp))
    return model


def model_info(model: onnx.ModelProto, path: Path, diff: float | None = None) -> OnnxModelInfo:
    inputs, outputs = model_io(model)
    return OnnxModelInfo(Path(path), inputs, outputs, opset_of(model), diff)


# --- third-party ONNX -----------------------------------------------------------------


def prepare_onnx(src: Path, out_path: Path, input_shapes: dict[str, tuple[int, ...]]) -> OnnxModelInfo:
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
    _fix_input_dims(model, input_shapes)
    return model_info(finalize_model(model, out_path), out_path)


def _fix_input_dims(model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]]) -> None:
    inputs, _ = model_io(model)
    by_name = {spec.name: spec for spec in inputs}
    shapes = dict(input_shapes)
    if "" in shapes:
        if len(inputs) != 1:
            raise InputShapeError(
                f"the model has {len(inputs)} inputs, so --input-shape needs names",
                f"write NAME:dims for each of: {', '.join(by_name)}",
            )
        shapes[inputs[0].name] = shapes.pop("")
    for name, shape in shapes.items():
        spec = by_name.get(name)
        if spec is None:
            raise InputShapeError(f"the model has no input named '{name}'", f"its inputs are: {', '.join(by_name)}")
        if len(shape) != len(spec.shape):
            raise InputShapeError(
                f"input '{name}' has rank {len(spec.shape)} {_fmt(spec.shape)}, but --input-shape gives {len(shape)} dims",
                f"give {len(spec.shape)} dims, e.g. {name}:{','.join(str(d or 1) for d in spec.shape)}",
            )
        for axis, (have, want) in enumerate(zip(spec.shape, shape)):
            if have is not None and have != want:
                raise InputShapeError(
                    f"input '{name}' has fixed size {have} on axis {axis}, but --input-shape asks for {want}",
                    f"use {name}:{','.join(str(d or w) for d, w in zip(spec.shape, shape))}",
                )
    graph_inputs = {value.name: value for value in model.graph.input}
    for spec in inputs:
        dims = graph_inputs[spec.name].type.tensor_type.shape.dim
        wanted = shapes.get(spec.name)
        for axis, dim in enumerate(dims):
            if dim.HasField("dim_value"):
                continue
            if axis == 0:
                dim.dim_param = BATCH_DIM  # keep the batch dynamic for batch ranges
            elif wanted is not None:
                dim.dim_value = wanted[axis]
            else:
                raise InputShapeError(
                    f"input '{spec.name}' has dynamic dimensions {_fmt(spec.shape)}",
                    f"fix them with --input-shape {spec.name}:1,{','.join(str(d or 'N') for d in spec.shape[1:])}",
                )


def _fmt(shape: tuple[int | None, ...]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"
