"""The engine-builder seam.

Every engine kind (ONNX Runtime CPU, ARM/ORT format, TensorRT, ExecuTorch) implements the small
`EngineBuilder` interface. Evaluation, benchmarking and the report only ever talk to
a `Runner`, so they never branch on engine kind (Polygraphy's runner idea).

What a builder is built FROM is part of the seam: `takes = "onnx"` (the default) builds from the
fp32/int8 ONNX file the pipeline quantized; `takes = "torch"` builds from the torch module itself
(ExecuTorch: torch.export -> PT2E -> .pte) and quantizes on its own, from a `TorchModel`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Literal, Protocol, TypeVar, runtime_checkable

import numpy as np

from edgecompress.core.targets import TargetProfile
from edgecompress.source.specs import TensorSpec

if TYPE_CHECKING:
    import onnx

    from edgecompress.quantize.diagnose import Diagnosis


@dataclass
class EngineArtifact:
    """What a builder produced for one target.

    `path` is the engine file, or None when the engine must be built on the device
    (then `files` holds the on-device build kit and `note` says how to build it).
    `metadata` carries the facts that decide whether the engine travels (runtime
    versions, GPU name, required operators, providers...).
    """

    target: str
    kind: str
    precision: str  # int8 | mixed | fp16 | fp32, from the graph (PrecisionLabel)
    path: Path | None
    files: list[Path] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    note: str | None = None
    precision_layers: dict[str, int] = field(default_factory=dict)  # compute layers per precision

    @property
    def runnable_here(self) -> bool:
        return self.path is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "kind": self.kind,
            "precision": self.precision,
            "precision_layers": self.precision_layers,
            "path": str(self.path) if self.path else None,
            "files": [str(p) for p in self.files],
            "metadata": self.metadata,
            "note": self.note,
        }


@runtime_checkable
class Runner(Protocol):
    """Runs an engine: a dict of input arrays in, the list of output arrays out."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]: ...


class EngineBuilder(Protocol):
    """One engine kind built from an ONNX file. `available()` returns None when it can build here, else the reason."""

    kind: str

    def available(self) -> str | None: ...

    def build(self, onnx_path: Path, profile: TargetProfile, out_dir: Path) -> EngineArtifact: ...

    def load(self, artifact: EngineArtifact, profile: TargetProfile) -> Runner: ...


EngineInput = Literal["onnx", "torch"]


def engine_input(builder: object) -> EngineInput:
    """What `builder` is built from: its `takes` attribute, "onnx" for builders that do not say."""
    return "torch" if getattr(builder, "takes", "onnx") == "torch" else "onnx"


@dataclass(frozen=True)
class TorchModel:
    """What a torch-built engine takes: the module (after compression), its inputs in `forward`'s order with one
    example each (the engine's fixed shapes, batch included), and the calibration set as feeds of that shape."""

    module: Any  # torch.nn.Module, in eval mode
    example_inputs: dict[str, np.ndarray]
    output_names: tuple[str, ...]
    calibration: Callable[[], Iterator[dict[str, np.ndarray]]]


@dataclass(frozen=True)
class TorchEngineRequest:
    """One engine of a torch-built kind: `precision` int8, fp16 (float16 weights and arithmetic, float32 at the
    inputs and outputs) or fp32; `keep_float` names modules left out of int8 (repair keeps modules out of the
    quantizer, as the ONNX route keeps nodes out of Q/DQ); `activations` static (calibrated ranges) or dynamic
    (ranges per call on the Linear layers only: the recipe for transformer encoders, as on the ONNX route)."""

    precision: Literal["int8", "fp16", "fp32"] = "int8"
    keep_float: tuple[str, ...] = ()
    activations: Literal["static", "dynamic"] = "static"


class TorchEngineBuilder(Protocol):
    """One engine kind built from the torch model (`takes = "torch"`), not from the ONNX file."""

    kind: str
    takes: Literal["torch"]

    def available(self) -> str | None: ...

    def build(self, model: TorchModel, request: TorchEngineRequest, profile: TargetProfile, out_dir: Path) -> EngineArtifact: ...

    def load(self, artifact: EngineArtifact, profile: TargetProfile) -> Runner: ...

    def diagnose(self, model: TorchModel, profile: TargetProfile, feeds: list[dict[str, np.ndarray]],
                 request: TorchEngineRequest = TorchEngineRequest()) -> Diagnosis:
        """Per compute module, the int8 engine's error against the fp32 module (repair ranks modules by it)."""
        ...


@dataclass(frozen=True)
class BuildPlace:
    """Where a target's engine is built: here (then measured here) or on the device (a kit); `reason` says why not here."""

    here: bool
    reason: str = ""


def decide_build_place(unavailable: str | None, needs_device_arch: bool, profile_arch: str, host_arch: str) -> BuildPlace:
    """One rule for every engine kind: build here when the runtime is here and, for engines tied to the machine that
    builds them (TensorRT plans), this host is the device's architecture; else hand over a device kit."""
    if needs_device_arch and profile_arch != host_arch:  # first: even with the runtime installed, not here
        return BuildPlace(False, f"a {profile_arch} device's engine cannot be built on this {host_arch} host")
    if unavailable is not None:
        return BuildPlace(False, unavailable)
    return BuildPlace(True)


# Layers whose arithmetic the precision label is about; everything else is cheap glue.
COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
INT8_COMPUTE_OPS = ("QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger")


@dataclass(frozen=True)
class PrecisionLabel:
    """What a graph computes in, counted over its compute layers (Conv, Gemm, MatMul).

    One QuantizeLinear does not make a model int8: a repaired model may keep many layers
    in float, and an fp16 model keeps fp32 inputs and outputs. So each compute layer is
    classed by where its data comes from: both operands dequantized = int8, else by the
    float type it reads. `name` is the one class present, or "mixed".
    """

    name: str  # int8 | mixed | fp16 | fp32
    layers: dict[str, int] = field(default_factory=dict)  # {"int8": n, "fp16": n, "fp32": n}, zeros left out

    def __str__(self) -> str:
        if self.name != "mixed":
            return self.name
        total = sum(self.layers.values())
        floats = ", ".join(f"{count} {kind}" for kind, count in self.layers.items() if kind != "int8")
        # int8 with its other layers in fp16 is what a TensorRT engine built with --int8 --fp16 runs
        kind = "int8+fp16" if set(self.layers) == {"int8", "fp16"} else "mixed"
        return f"{kind} ({floats} of {total} compute layers)"

    @property
    def short(self) -> str:
        """The precisions present, for a narrow column: 'int8', 'int8+fp16', 'int8+fp32'."""
        if self.name != "mixed" or not self.layers:
            return self.name
        return "+".join(kind for kind in ("int8", "fp16", "fp32") if self.layers.get(kind))

    @property
    def builder_flags(self) -> tuple[str, ...]:
        """The reduced precisions a builder (TensorRT) may use for exactly this label: none for fp32."""
        return tuple(kind for kind in ("int8", "fp16") if self.layers.get(kind))


def compute_layer_precisions(model: onnx.ModelProto) -> dict[str, str]:
    """Each compute layer's name (or op type) and what it computes in: int8 (both operands dequantized), fp16, fp32."""
    import onnx

    from edgecompress.export.graph import tensor_types
    from edgecompress.quantize.float16 import float_layers_precision

    dequantized = {out for node in model.graph.node if node.op_type == "DequantizeLinear" for out in node.output}
    types = tensor_types(model)
    float_kind = float_layers_precision(model)  # fp16 where the engine is told to run float layers in fp16
    kinds = {}
    for index, node in enumerate(model.graph.node):
        name = node.name or f"{node.op_type}_{index}"
        if node.op_type in INT8_COMPUTE_OPS:
            kinds[name] = "int8"
        elif node.op_type in COMPUTE_OPS:
            operands = [name for name in node.input[:2] if name]
            if operands and all(operand in dequantized for operand in operands):
                kinds[name] = "int8"
            else:
                fp16 = any(types.get(operand) == onnx.TensorProto.FLOAT16 for operand in operands)
                kinds[name] = "fp16" if fp16 else float_kind
    return kinds


def graph_precision(model: onnx.ModelProto) -> PrecisionLabel:
    """The precision label of an ONNX graph, from its compute layers (see PrecisionLabel)."""
    import onnx

    kinds = list(compute_layer_precisions(model).values())
    present = {kind: kinds.count(kind) for kind in ("int8", "fp16", "fp32") if kinds.count(kind)}
    if not present:  # no compute layers: name the graph by its quantization nodes and weights
        quantized = any(node.op_type == "QuantizeLinear" for node in model.graph.node)
        fp16 = any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
        return PrecisionLabel("int8" if quantized else "fp16" if fp16 else "fp32")
    return PrecisionLabel(next(iter(present)) if len(present) == 1 else "mixed", present)


def onnx_precision(onnx_path: Path) -> PrecisionLabel:
    """The precision label of an ONNX file (see PrecisionLabel)."""
    import onnx

    return graph_precision(onnx.load(str(onnx_path), load_external_data=False))


OptionsModel = TypeVar("OptionsModel")


def profile_options(model: type[OptionsModel], profile: TargetProfile, which: str) -> OptionsModel:
    """A profile's engine options validated by the engine's pydantic model: a misspelt key or a bad value is named,
    with where to read about `which` options, not ignored."""
    from pydantic import ValidationError

    from edgecompress.core.errors import TargetError

    try:
        return model.model_validate(profile.options)  # type: ignore[attr-defined]
    except ValidationError as exc:
        problems = "; ".join(f"options.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise TargetError(f"target profile {profile.source or profile.name} is invalid: {problems}",
                          f"see targets/README.md for the {which} options") from exc
