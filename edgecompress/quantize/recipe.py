"""The quantization recipe: the one dataclass that decides how a model is quantized.

Targets pick a recipe from their instruction set (isa.py); diagnosis and repair change the recipe and
quantize again — nothing patches quantized graphs by hand.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal

CalibrationMethodName = Literal["minmax", "entropy", "percentile"]
QdqPlacement = Literal["onnxruntime", "tensorrt"]
ActivationRanges = Literal["static", "dynamic"]

# NVIDIA's Q/DQ placement for TensorRT (TensorRT developer guide, "Q/DQ Layer-Placement Recommendations";
# ModelOpt's default for CNNs): Q/DQ on the inputs of weighted layers and on both inputs of an elementwise
# Add (a residual Add with both inputs quantized fuses into the convolution before it); no Q/DQ on their
# outputs, so TensorRT fuses Conv + activation and places the next Q itself. Everything between stays float.
TENSORRT_QUANTIZED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Add")


@dataclass(frozen=True)
class QuantRecipe:
    """How to quantize: types, granularity, calibration and the nodes kept in fp32."""

    activation_type: Literal["uint8", "int8"] = "uint8"
    weight_type: Literal["int8", "uint8"] = "int8"
    per_channel: bool = True
    reduce_range: bool = False
    symmetric_activations: bool = False
    quantize_bias: bool = True  # int32 biases; TensorRT's parser takes float biases only
    calibration_method: CalibrationMethodName = "minmax"
    percentile: float = 99.999
    nodes_to_exclude: tuple[str, ...] = ()
    equalize: bool = False  # cross-layer equalization of Conv→ReLU(6)→Conv pairs first (edgecompress/quantize/equalize.py)
    bias_correction: bool = False  # remove the int8 weight error's mean from each bias (edgecompress/quantize/biascorrect.py)
    placement: QdqPlacement = "onnxruntime"  # where Q/DQ go: ORT's defaults, or TensorRT's rules (TENSORRT_QUANTIZED_OPS)
    # float ops restated in ops with int8 kernels before quantizing, so they run in int8 instead of as float islands
    # between Q/DQ pairs (edgecompress/quantize/islands.py: "div-by-constant", "hardsigmoid")
    int8_rewrites: tuple[str, ...] = ()
    # static: activation ranges calibrated once (QDQ); dynamic: computed per call by the runtime (ONNX Runtime's
    # DynamicQuantizeLinear + integer MatMul), the int8 that its CPU kernels run fastest for transformer encoders
    activations: ActivationRanges = "static"
    op_types: tuple[str, ...] = ()  # the op types quantized; empty: every op the quantizer knows (ORT's QDQ registry)
    # SmoothQuant migration strength before quantizing MatMuls (edgecompress/quantize/smoothquant.py); None: off
    smooth_alpha: float | None = None
    # op types left float whose weights are stored int8 behind a DequantizeLinear (size only: no int8 kernel pays for
    # them; edgecompress/quantize/weight_storage.py)
    int8_stored_weights: tuple[str, ...] = ()
    reason: str = ""  # why this recipe was chosen (recorded in report.json)

    @property
    def label(self) -> str:
        """Short human description, e.g. 'u8s8 per-channel reduce_range minmax'."""
        sign = {"int8": "s8", "uint8": "u8"}
        types = sign[self.activation_type] + sign[self.weight_type]
        ranges = self.calibration_method if self.activations == "static" else "dynamic activations"
        parts = [types, "per-channel" if self.per_channel else "per-tensor", ranges]
        if self.reduce_range:
            parts.insert(2, "reduce_range")
        if self.op_types:
            parts.append("/".join(self.op_types) + " only")
        if self.smooth_alpha is not None:
            parts.append(f"SmoothQuant α={self.smooth_alpha:g}")
        if self.int8_stored_weights:
            parts.append("/".join(self.int8_stored_weights) + " weights stored int8")
        if self.equalize:
            parts.append("CLE")
        if self.bias_correction:
            parts.append("bias-corrected")
        if self.placement == "tensorrt":
            parts.append("TensorRT Q/DQ placement")
        if self.nodes_to_exclude:
            parts.append(f"{len(self.nodes_to_exclude)} nodes fp32")
        return " ".join(parts)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["nodes_to_exclude"] = list(self.nodes_to_exclude)
        data["int8_rewrites"] = list(self.int8_rewrites)
        data["op_types"] = list(self.op_types)
        data["int8_stored_weights"] = list(self.int8_stored_weights)
        data["label"] = self.label
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "QuantRecipe":
        """The recipe `to_dict` wrote (its label is derived, not stored)."""
        names = {f.name for f in fields(cls)}
        values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in names}
        return cls(**values)

    def cache_key(self) -> dict:
        """Everything that changes the quantized bytes (the reason and label do not)."""
        data = self.to_dict()
        data.pop("reason")
        data.pop("label")
        return data

    def with_options(self, **changes) -> "QuantRecipe":
        return replace(self, **{k: v for k, v in changes.items() if v is not None})
