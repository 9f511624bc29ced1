"""Export stage: a torch module or a third-party ONNX file → one checked fp32 ONNX model.

The result is opset ≥ 17, has a dynamic batch axis (when the model allows it), is
shape-inferred, simplified with onnxslim and passes `onnx.checker`. Torch exports are
checked against PyTorch's own output on ONNX Runtime before anything else uses them.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from edgecompress.artifacts import atomic_path
from edgecompress.engines.base import TensorSpec
from edgecompress.errors import ExportError, InputShapeError, ModelLoadError

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
    layout: "BatchLayout | None" = None  # batch axis per input (calib/layout.py); None: axis 0 everywhere  # noqa: F821


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


def _finalize(model: onnx.ModelProto, out_path: Path) -> onnx.ModelProto:
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


def _info(model: onnx.ModelProto, path: Path, diff: float | None = None) -> OnnxModelInfo:
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
    return _info(_finalize(model, out_path), out_path)


def _fix_input_dims(model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]], batch_axes: dict[str, int]) -> None:
    """Fill the open dims of each input from `--input-shape`; the batch axis (calib/layout.py) stays
    dynamic, named `batch` in every input so that later stages find the same layout.

    Dims the model fixes are read from it, so `--input-shape` is needed only for open dims past
    the batch, and every suggested fix is a complete shape that works when pasted.
    """
    from edgecompress.calib.layout import batch_layout

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
            elif spec.shape[axis] is None:
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


# --- torch export --------------------------------------------------------------------


def export_torch(
    module,
    input_shapes: dict[str, tuple[int, ...]],
    out_path: Path,
    opset: int = DEFAULT_OPSET,
    exporter: str = "dynamo",
    tolerance: float = 1e-3,
) -> OnnxModelInfo:
    """`torch.onnx.export` with a dynamic batch, then finalize and compare with PyTorch."""
    import torch

    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset} is too old", f"use opset >= {MIN_OPSET}")
    names = list(input_shapes)
    # batch 2, not 1: torch.export specializes size-1 dimensions to constants
    examples = tuple(torch.randn((2, *shape[1:]), generator=torch.Generator().manual_seed(0)) for shape in input_shapes.values())
    module = module.eval()
    # the dynamo exporter may write external data beside its output: keep it in a scratch dir
    with tempfile.TemporaryDirectory(prefix="edgecompress-export-") as scratch:
        raw_path = Path(scratch) / "exported.onnx"
        _run_exporter(module, examples, names, raw_path, opset, exporter)
        model = onnx.load(str(raw_path))
    model = _finalize(model, out_path)
    diff = check_against_torch(module, out_path, examples, names, tolerance)
    return _info(model, out_path, diff)


def _run_exporter(module, examples, names: list[str], path: Path, opset: int, exporter: str) -> None:
    import torch

    dynamic_axes = {name: {0: BATCH_DIM} for name in names} | {"output": {0: BATCH_DIM}}
    common = dict(input_names=names, output_names=["output"], opset_version=opset, dynamic_axes=dynamic_axes)
    use_dynamo = exporter == "dynamo" and not isinstance(module, torch.jit.ScriptModule)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(module, examples, str(path), dynamo=use_dynamo, verbose=False, **common)
            return
        except Exception as exc:
            if not use_dynamo:
                raise ExportError(f"torch.onnx.export failed: {exc}", "check the model runs on the given input shape") from exc
            first_error = exc
        try:  # the dynamo exporter rejects some dynamic Python; the TorchScript exporter may cope
            torch.onnx.export(module, examples, str(path), dynamo=False, **common)
        except Exception as exc:
            raise ExportError(
                f"torch.onnx.export failed with both exporters: {first_error} / {exc}",
                "check the model runs on the given --input-shape",
            ) from exc


def check_against_torch(module, onnx_path: Path, examples, names: list[str], tolerance: float) -> float:
    """Max |ORT − PyTorch| over the outputs; raise when it exceeds `tolerance` × output scale."""
    import onnxruntime as ort
    import torch

    with torch.no_grad():
        expected = module(*examples)
    expected_list = [expected] if isinstance(expected, torch.Tensor) else list(expected)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = session.run(None, {name: example.numpy() for name, example in zip(names, examples)})
    worst = 0.0
    for reference, actual in zip(expected_list, got):
        reference = reference.numpy()
        diff = float(np.max(np.abs(reference - actual))) if reference.size else 0.0
        worst = max(worst, diff)
        if diff > tolerance * max(1.0, float(np.max(np.abs(reference)))):
            raise ExportError(
                f"ONNX Runtime's output differs from PyTorch's by {diff:.3g} (tolerance {tolerance:g} × output scale)",
                "the exporter mis-translated an op: try exporter = 'torchscript' in the config, or raise export_tolerance",
            )
    return worst
