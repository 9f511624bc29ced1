"""Quantize stage: fp32 ONNX + calibration set + recipe → static int8 QDQ ONNX.

The `QuantRecipe` is the only thing that decides how a model is quantized. Targets pick
a recipe from their instruction set; diagnosis and repair change the recipe and run this
stage again — nothing patches quantized graphs by hand.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import onnx

from edgecompress.core.artifacts import atomic_path
from edgecompress.calib.load import CalibrationSet
from edgecompress.core.errors import QuantizationError
from edgecompress.quantize.recipe import QuantRecipe
from edgecompress.core.logs import onnxruntime_logs

class ArrayCalibrationReader:
    """ONNX Runtime `CalibrationDataReader` over a calibration set, a few samples at a time."""

    def __init__(self, calibration: CalibrationSet, batch_size: int = 16) -> None:
        self._calibration = calibration
        self._batch_size = batch_size
        self._iterator = calibration.batches(batch_size)

    def get_next(self) -> dict | None:
        return next(self._iterator, None)

    def rewind(self) -> None:
        self._iterator = self._calibration.batches(self._batch_size)


def _calibration_method(recipe: QuantRecipe):
    from onnxruntime.quantization import CalibrationMethod

    return {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[recipe.calibration_method]


def _quant_type(name: str):
    from onnxruntime.quantization import QuantType

    return QuantType.QUInt8 if name == "uint8" else QuantType.QInt8


def check_exclusions(fp32_path: Path, nodes: tuple[str, ...]) -> None:
    """A node name that is not in the graph is a typo; say so instead of silently ignoring it."""
    if not nodes:
        return
    names = {node.name for node in onnx.load(str(fp32_path), load_external_data=False).graph.node}
    unknown = [name for name in nodes if name not in names]
    if unknown:
        sample = ", ".join(sorted(names)[:8])
        raise QuantizationError(
            f"nodes_to_exclude names nodes that are not in the model: {', '.join(unknown)}",
            f"use node names of the fp32 model (e.g. {sample}; `edgecompress inspect` lists them)",
        )


def _placement(recipe: QuantRecipe, extra_options: dict) -> tuple[list[str] | None, dict]:
    """The op types to quantize and the options that place Q/DQ as the recipe's target wants (recipe.py)."""
    if recipe.placement != "tensorrt":
        # ORT's defaults (every op of its QDQ registry, outputs included), or the recipe's op types
        return (list(recipe.op_types) or None), extra_options
    from edgecompress.quantize.recipe import TENSORRT_QUANTIZED_OPS

    ops = list(recipe.op_types or TENSORRT_QUANTIZED_OPS)
    return ops, {**extra_options, "OpTypesToExcludeOutputQuantization": ops}


def _quantize_static(prepared: Path, out: Path, reader, recipe: QuantRecipe, extra_options: dict) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static

    op_types, extra_options = _placement(recipe, extra_options)

    with contextlib.redirect_stdout(io.StringIO()):  # calibrators print progress
        try:
            quantize_static(
                str(prepared),
                str(out),
                reader,
                quant_format=QuantFormat.QDQ,
                activation_type=_quant_type(recipe.activation_type),
                weight_type=_quant_type(recipe.weight_type),
                per_channel=recipe.per_channel,
                reduce_range=recipe.reduce_range,
                # entropy ranges arrive as overrides for every tensor: a cheap minmax pass
                # stands in for ORT's slow (and overridden) KL search
                calibrate_method=CalibrationMethod.MinMax if "TensorQuantOverrides" in extra_options else _calibration_method(recipe),
                nodes_to_exclude=list(recipe.nodes_to_exclude),
                op_types_to_quantize=op_types,
                extra_options=extra_options,
            )
        except Exception as exc:
            raise QuantizationError(
                f"static quantization failed: {exc.__class__.__name__}: {' '.join(str(exc).split())[:300]}",
                "try another calibration_method, or exclude the failing node with nodes_to_exclude",
            ) from exc


@contextlib.contextmanager
def working_directory(folder: Path):
    previous = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(previous)


def _prepare(fp32_path: Path, prepared: Path, recipe: QuantRecipe, calibration: CalibrationSet, extra_options: dict) -> None:
    """Shape inference and ORT's pre-processing, then the recipe's fp32 rewrites (float islands restated in ops with
    int8 kernels, CLE, bias correction)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    source, prepared = Path(fp32_path).resolve(), Path(prepared).resolve()
    # when symbolic shape inference gives up, ORT dumps sym_shape_infer_temp.onnx and a <uuid>.data
    # into the working directory: run it inside our scratch folder, not the user's
    with contextlib.redirect_stdout(io.StringIO()), working_directory(prepared.parent):
        try:
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=False)
        except Exception:  # symbolic shape inference fails on some graphs; ONNX's own is enough
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
    if not (recipe.equalize or recipe.bias_correction or recipe.int8_rewrites or recipe.smooth_alpha is not None):
        return
    model = onnx.load(str(prepared))
    if recipe.smooth_alpha is not None:
        _smooth(model, prepared, recipe.smooth_alpha, calibration)
    if recipe.int8_rewrites:
        from edgecompress.quantize.islands import rewrite_for_int8

        rewrite_for_int8(model, recipe.int8_rewrites)
    if recipe.equalize:
        from edgecompress.quantize.equalize import equalize

        equalize(model)
    if recipe.bias_correction:
        _correct_biases(model, prepared, recipe, calibration, extra_options)
    onnx.save(model, str(prepared))


def _smooth(model: onnx.ModelProto, prepared: Path, alpha: float, calibration: CalibrationSet) -> None:
    """SmoothQuant migration of the MatMuls' activation outliers into their weights, measured on the calibration set."""
    from edgecompress.quantize.smoothquant import channel_absmax, smooth_matmuls, weighted_matmuls

    groups = list(weighted_matmuls(model))
    if groups:
        smooth_matmuls(model, channel_absmax(prepared, calibration.batches(16), groups), alpha)


def _correct_biases(model: onnx.ModelProto, prepared: Path, recipe: QuantRecipe, calibration: CalibrationSet,
                    extra_options: dict) -> None:
    """Quantize once to learn the exact int8 weights (they depend on the weights alone, so one
    sample calibrates), then move each weight error's mean out of the fp32 biases of `model`."""
    from edgecompress.quantize.biascorrect import correct_biases, correctable_nodes, dequantized_weights, input_means

    onnx.save(model, str(prepared))  # the probe quantizes the model as rewritten so far
    probe = prepared.with_name("weights-probe.onnx")
    one_sample = replace(calibration, arrays=calibration.batch_layout.take(calibration.arrays, 0, 1))
    options = {k: v for k, v in extra_options.items() if k != "TensorQuantOverrides"}
    _quantize_static(prepared, probe, ArrayCalibrationReader(one_sample), replace(recipe, calibration_method="minmax"), options)
    quantized_weights = dequantized_weights(onnx.load(str(probe)))
    inputs = {node.input[0] for node in correctable_nodes(model) if node.name in quantized_weights}
    correct_biases(model, quantized_weights, input_means(model, calibration.batches(16), inputs))


def _extra_options(recipe: QuantRecipe) -> dict[str, Any]:
    options: dict[str, Any] = {
        "ActivationSymmetric": recipe.symmetric_activations,
        "WeightSymmetric": True,
        "CalibMovingAverage": False,
        "QuantizeBias": recipe.quantize_bias,
    }
    if recipe.calibration_method == "percentile":
        options["CalibPercentile"] = recipe.percentile
    return options


def prepare_model(fp32_path: Path, calibration: CalibrationSet, recipe: QuantRecipe, out_path: Path) -> Path:
    """The float graph `quantize_model` quantizes (pre-processed: BatchNorm folded, shapes inferred; then the
    recipe's equalization and bias correction): what quantization-aware training trains."""
    with onnxruntime_logs(), tempfile.TemporaryDirectory(prefix="edgecompress-prep-") as workdir:
        prepared = Path(workdir) / "prepared.onnx"
        _prepare(fp32_path, prepared, recipe, calibration, _extra_options(recipe))
        with atomic_path(out_path) as tmp:
            onnx.save(onnx.load(str(prepared)), str(tmp))
    return Path(out_path)


def quantize_model(fp32_path: Path, calibration: CalibrationSet, recipe: QuantRecipe, out_path: Path,
                   activation_ranges: dict[str, list[dict]] | None = None) -> Path:
    """Static QDQ quantization with per-channel weights and the recipe's calibration method.

    `activation_ranges` (ORT `TensorQuantOverrides`: scale and zero point, or rmin/rmax, per tensor) fix those
    tensors' quantization instead of calibrating them: quantization-aware training hands over the ranges it
    trained with, so the engine computes what the fine-tuning saw.
    """
    check_exclusions(fp32_path, recipe.nodes_to_exclude)
    extra_options = _extra_options(recipe)
    with onnxruntime_logs(), tempfile.TemporaryDirectory(prefix="edgecompress-quant-") as workdir:
        prepared = Path(workdir) / "prepared.onnx"
        _prepare(fp32_path, prepared, recipe, calibration, extra_options)
        if recipe.activations == "dynamic":
            with atomic_path(out_path) as tmp:
                _quantize_dynamic(prepared, tmp, recipe)
            return Path(out_path)
        recipe = _without_unbounded_tensors(prepared, recipe, calibration)
        if activation_ranges:
            extra_options["TensorQuantOverrides"] = activation_ranges
        elif recipe.calibration_method == "entropy":
            from edgecompress.calib.ranges import entropy_overrides

            # one sample at a time: ORT's histogram collector stacks the batches, so unequal batch sizes fail there
            extra_options["TensorQuantOverrides"] = entropy_overrides(prepared, ArrayCalibrationReader(calibration, batch_size=1),
                                                                     Path(workdir))
        histogram = recipe.calibration_method == "percentile" and not activation_ranges
        reader = ArrayCalibrationReader(calibration, batch_size=equal_batch_size(len(calibration)) if histogram else 16)
        with atomic_path(out_path) as tmp:
            _quantize_static(prepared, tmp, reader, recipe, extra_options)
    return Path(out_path)


def _quantize_dynamic(prepared: Path, out: Path, recipe: QuantRecipe) -> None:
    """int8 weights, activations quantized per call by the runtime (DynamicQuantizeLinear + integer MatMul)."""
    from onnxruntime.quantization import quantize_dynamic

    with contextlib.redirect_stdout(io.StringIO()):
        try:
            quantize_dynamic(str(prepared), str(out), weight_type=_quant_type(recipe.weight_type), per_channel=recipe.per_channel,
                             reduce_range=recipe.reduce_range, op_types_to_quantize=list(recipe.op_types) or None,
                             nodes_to_exclude=list(recipe.nodes_to_exclude))
            if recipe.int8_stored_weights:
                from edgecompress.quantize.weight_storage import store_weights_int8

                model = onnx.load(str(out))
                if store_weights_int8(model, recipe.int8_stored_weights, recipe.nodes_to_exclude):
                    onnx.save(model, str(out))
        except Exception as exc:
            raise QuantizationError(
                f"dynamic quantization failed: {exc.__class__.__name__}: {' '.join(str(exc).split())[:300]}",
                "exclude the failing node with nodes_to_exclude, or build with --precision fp32",
            ) from exc


UNBOUNDED_MAGNITUDE = 1e30  # beyond any activation a network computes: a fill value (finfo.min in a mask), not data


def unbounded_tensors(prepared: Path, calibration: CalibrationSet, samples: int = 4) -> list[str]:
    """Float tensors that carry infinities, NaN or fill values like finfo(float32).min on calibration inputs (a BERT
    export adds (1 - mask) * finfo.min to its attention scores): no int8 range can hold them. The first `samples`
    inputs, one at a time (a sentence without padding shows no fill value, so one is not enough)."""
    import numpy as np

    from edgecompress.core.runtime import session_with_outputs

    model = onnx.shape_inference.infer_shapes(onnx.load(str(prepared)))  # the element types of the intermediate tensors
    floats = {v.name for v in model.graph.value_info if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    names = [o for node in model.graph.node for o in node.output if o in floats]
    session = session_with_outputs(model, names, level="disable")  # every tensor as the graph names it
    outputs = [o.name for o in session.get_outputs()]
    found: dict[str, None] = {}
    step = calibration.batch_layout.fixed_batch or 1  # a model exported at a fixed batch takes only that many
    for start in range(0, min(samples, len(calibration)), step):
        feed = calibration.batch_layout.take(calibration.arrays, start, start + step)
        with np.errstate(all="ignore"):
            found.update((name, None) for name, value in zip(outputs, session.run(outputs, feed))
                         if value.dtype.kind == "f" and value.size and not (np.abs(value) < UNBOUNDED_MAGNITUDE).all())
    return list(found)


def _without_unbounded_tensors(prepared: Path, recipe: QuantRecipe, calibration: CalibrationSet) -> QuantRecipe:
    """The recipe with every node that produces or consumes an unbounded tensor kept float (said once, by name)."""
    from edgecompress.core.progress import warn

    unbounded = set(unbounded_tensors(prepared, calibration))
    if not unbounded:
        return recipe
    model = onnx.load(str(prepared), load_external_data=False)
    touching = [node.name for node in model.graph.node if node.name and unbounded & {*node.input, *node.output}]
    new = [name for name in touching if name not in recipe.nodes_to_exclude]
    if new:
        shown = ", ".join(sorted(unbounded)[:4]) + (f" and {len(unbounded) - 4} more" if len(unbounded) > 4 else "")
        warn(f"quantize: {len(unbounded)} tensor(s) hold infinities or fill values beyond ±1e30 ({shown}): "
             f"{len(new)} node(s) around them stay float")
    return recipe.with_options(nodes_to_exclude=recipe.nodes_to_exclude + tuple(new))


def equal_batch_size(count: int, largest: int = 16) -> int:
    """The largest batch size up to `largest` that splits `count` samples into equal batches (153 samples: 17
    batches of 9): ORT's histogram collector (percentile) stacks the batches, and a shorter last batch fails there."""
    return next(size for size in range(min(largest, max(count, 1)), 0, -1) if count % size == 0)
