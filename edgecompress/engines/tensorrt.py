"""TensorRT engines for desktop NVIDIA GPUs and Jetsons.

A TensorRT plan is tied to the GPU model and the TensorRT version that built it, so it
is usually built on the device itself. On a host with a GPU and TensorRT the builder
makes `engine.plan` here; anywhere else (the usual laptop-builds-for-Jetson case) it
writes an on-device build kit: the int8 ONNX, the resolved profile, the exact `trtexec`
command and a `build_engine.py` that uses the same TensorRT API code as this module.
TensorRT itself is imported lazily, only when a plan is built or run.
"""

from __future__ import annotations

import importlib.util
import shlex
import shutil
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
from pydantic import BaseModel, ConfigDict, Field

from edgecompress.core.artifacts import atomic_dir, write_json_atomic
from edgecompress.device import trt_device
from edgecompress.device.trt_device import trtexec_command
from edgecompress.engines.base import EngineArtifact, PrecisionLabel, graph_precision, profile_options
from edgecompress.source.specs import TensorSpec
from edgecompress.engines.trt_preflight import PreflightReport, preflight
from edgecompress.core.errors import EngineBuildError, TargetError
from edgecompress.core.targets import TargetProfile

KIT_DIR = "device-build-kit"
PLAN_NAME = "engine.plan"
NOT_PORTABLE = (
    "a TensorRT plan runs only on the GPU model and TensorRT version that built it; "
    "rebuild it on each device type and after every JetPack/TensorRT upgrade"
)


class TensorRTOptions(BaseModel):
    """The `[options]` table of a `engine = "tensorrt"` profile (see targets/README.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    tensorrt_major: Literal[8, 10] = Field(10, description="TensorRT major on the device (JetPack 6.0: 8, 6.1+: 10)")
    workspace_mib: int = Field(1024, ge=16, description="builder workspace memory limit")
    dla_core: int | None = Field(None, ge=0, description="DLA core to build for; None = GPU only")
    gpu_fallback: bool = Field(True, description="let layers DLA cannot run fall back to the GPU")
    timing_cache: bool = Field(True, description="save and reuse the builder's timing cache")
    jetpack: str | None = Field(None, description="JetPack release the device must run (bundle requirement)")


def trt_options(profile: TargetProfile) -> TensorRTOptions:
    """Validate the profile's engine options; a misspelt key is named, not ignored."""
    options = profile_options(TensorRTOptions, profile, "TensorRT")
    _check_precisions(profile, options)
    return options


def _check_precisions(profile: TargetProfile, options: TensorRTOptions) -> None:
    """DLA runs only fp16 and int8 and needs a fixed batch; catch that before any build."""
    if options.dla_core is None:
        return
    if "fp32" in profile.precisions:
        raise TargetError(f"target '{profile.name}' asks for fp32 on DLA core {options.dla_core}, which DLA "
                          "cannot run", "use precisions = [\"int8\", \"fp16\"] or remove dla_core")
    if not profile.batch.min == profile.batch.opt == profile.batch.max:
        raise TargetError(f"target '{profile.name}' uses DLA with a dynamic batch "
                          f"{profile.batch.min}..{profile.batch.max}; DLA needs static shapes",
                          "set batch min = opt = max in the profile")


def _has_qdq(model: onnx.ModelProto) -> bool:
    return any(node.op_type in ("QuantizeLinear", "DequantizeLinear") for node in model.graph.node)


def _check_int8_scales(model: onnx.ModelProto, profile: TargetProfile, options: TensorRTOptions) -> None:
    """int8 needs scales: edgecompress gives them as Q/DQ nodes (explicit quantization).

    An fp16 graph is not an int8 model without scales: it is the fp16 kit the ladder ships when int8 misses the budget."""
    if graph_precision(model).name == "fp16":
        return
    if "int8" in profile.precisions and options.dla_core is not None and not _has_qdq(model):
        raise EngineBuildError(
            f"target '{profile.name}' asks for int8 on DLA, but the model has no QuantizeLinear/DequantizeLinear "
            "nodes, so DLA has no int8 scales (no calibration)",
            "build from the int8 QDQ model that `edgecompress build` quantizes, or use precisions = [\"fp16\"]",
        )


def input_shapes(model: onnx.ModelProto, profile: TargetProfile) -> dict[str, list[list[int]]]:
    """min/opt/max shapes per input: the profile's batch range on axis 0, the model's own dims elsewhere."""
    initializers = {tensor.name for tensor in model.graph.initializer}
    shapes: dict[str, list[list[int]]] = {}
    for graph_input in model.graph.input:
        if graph_input.name in initializers:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in graph_input.type.tensor_type.shape.dim]
        if any(d is None for d in dims[1:]):
            raise EngineBuildError(
                f"input '{graph_input.name}' has dynamic non-batch dimensions {dims}",
                "export the model with fixed input sizes (only the batch axis may be dynamic)",
            )
        batch = profile.batch
        sizes = (batch.min, batch.opt, batch.max) if not dims or dims[0] is None else (dims[0],) * 3
        fixed_dims = [d for d in dims[1:] if d is not None]  # all of them: dynamic ones were refused above
        shapes[graph_input.name] = [[size, *fixed_dims] for size in sizes]
    return shapes


def builder_precisions(label: PrecisionLabel, options: TensorRTOptions) -> list[str]:
    """The builder flags of exactly the model's label: an fp32 candidate gets no INT8/FP16 flag (and no TF32).

    DLA has no fp32 units, so there the layers the label keeps in fp32 run in fp16.
    """
    flags = list(label.builder_flags)
    if options.dla_core is not None and "fp16" not in flags:
        flags.append("fp16")
    return flags


def build_settings(model: onnx.ModelProto, profile: TargetProfile, timing_cache: str | None) -> dict[str, Any]:
    """Everything `trt_device.build_plan` and `trtexec` need, as one JSON-able dict."""
    options = trt_options(profile)
    label = graph_precision(model)
    return {
        "label": label.name,
        "precision_layers": label.layers,
        "precisions": builder_precisions(label, options),
        "workspace_mib": options.workspace_mib,
        "dla_core": options.dla_core,
        "gpu_fallback": options.gpu_fallback,
        "shapes": input_shapes(model, profile),
        "timing_cache": timing_cache if options.timing_cache else None,
    }


def _check_model(onnx_path: Path, profile: TargetProfile) -> tuple[onnx.ModelProto, PreflightReport]:
    model = onnx.load(str(onnx_path))
    options = trt_options(profile)
    report = preflight(model, options.tensorrt_major, dla=options.dla_core is not None,
                       gpu_fallback=options.gpu_fallback)
    report.raise_for_errors(onnx_path)
    _check_int8_scales(model, profile, options)
    return model, report


def _kit_script(command: list[str]) -> str:
    return (
        "#!/bin/sh\n# Build the TensorRT engine on the device (trtexec ships with JetPack in /usr/src/tensorrt/bin).\n"
        "# Alternative without trtexec: python3 build_engine.py\nset -e\ncd \"$(dirname \"$0\")\"\n"
        'PATH="$PATH:/usr/src/tensorrt/bin"\n' + shlex.join(command) + "\n"
    )


def write_build_kit(onnx_path: Path, profile: TargetProfile, out_dir: Path) -> EngineArtifact:
    """The on-device build kit: nothing here pretends to be an engine."""
    model, report = _check_model(onnx_path, profile)
    settings = build_settings(model, profile, "timing.cache")
    command = trtexec_command("model.int8.onnx", PLAN_NAME, settings)
    kit = Path(out_dir) / KIT_DIR
    with atomic_dir(kit) as tmp:
        shutil.copyfile(onnx_path, tmp / "model.int8.onnx")
        write_json_atomic(tmp / "profile.json", profile.summary())
        write_json_atomic(tmp / "build_settings.json", settings)
        write_json_atomic(tmp / "preflight.json", report.to_dict())
        (tmp / "build_engine.sh").write_text(_kit_script(command))
        (tmp / "build_engine.sh").chmod(0o755)
        shutil.copyfile(trt_device.__file__, tmp / "build_engine.py")
    note = (f"the TensorRT engine must be built on the device: copy {kit} to the {profile.name} and run "
            f"`sh build_engine.sh` there, i.e. `{shlex.join(command)}` (or `python3 build_engine.py`)")
    return EngineArtifact(
        target=profile.name, kind="tensorrt", precision=settings["label"],
        precision_layers=settings["precision_layers"], path=None,
        files=sorted(kit.iterdir()), note=note,
        metadata={"trtexec": shlex.join(command), "build_settings": settings, "preflight": report.to_dict(),
                  "portability": NOT_PORTABLE, "built_on_device": True,
                  "summary": [f"build on the device: `sh {KIT_DIR}/build_engine.sh` runs `{shlex.join(command)}`",
                              f"kit: {', '.join(p.name for p in sorted(kit.iterdir()))}",
                              *_summary(report, settings)]},
    )


def _summary(report: PreflightReport, settings: dict[str, Any], facts: dict[str, Any] | None = None) -> list[str]:
    """Report lines shared by a plan built here and a kit built on the device."""
    where = f"DLA core {settings['dla_core']}" + (" with GPU fallback" if settings["gpu_fallback"] else "") \
        if settings["dla_core"] is not None else "GPU"
    lines = [f"TensorRT {report.trt_major}.x preflight: {report.nodes_checked} nodes checked, "
             f"{len(report.errors)} errors, {len(report.warnings)} warnings; runs on {where}",
             *[f"preflight warning: {line}" for line in report.to_dict()["warnings"][:10]],
             f"portability: {NOT_PORTABLE}"]
    if facts:
        lines.insert(0, f"built with TensorRT {facts['tensorrt_version']} on {facts['gpu']} "
                        f"(compute capability {facts['compute_capability']})")
    return lines


class TensorRTBuilder:
    """Builds `engine.plan` where TensorRT and a CUDA GPU exist, else the on-device kit."""

    kind = "tensorrt"
    needs_device_arch = True  # a plan runs only on the GPU and TensorRT that built it: an x86 GPU cannot build a Jetson's
    runs_float_layers_in_fp16 = True  # --int8 --fp16: layers outside Q/DQ in fp16 (quantize/float16.py marks the model)

    def available(self) -> str | None:
        if importlib.util.find_spec("tensorrt") is None:
            return "TensorRT is not installed (pip install -e .[tensorrt], or JetPack on a Jetson)"
        if trt_device.gpu_info()["gpu"] == "unknown":
            return "no CUDA GPU is visible (TensorRT builds need the GPU the engine will run on)"
        return None

    def check(self, profile: TargetProfile) -> None:
        trt_options(profile)

    def describe(self, profile: TargetProfile) -> str:
        """One line for `edgecompress targets`: device options and what a build here produces."""
        options = trt_options(profile)
        where = f"DLA{options.dla_core}" + ("+GPU" if options.gpu_fallback else "") \
            if options.dla_core is not None else "GPU"
        from edgecompress.engines import build_place

        here = "plan" if build_place(self, profile).here else "device kit"
        return f"TRT {options.tensorrt_major} {where}; here: {here}"

    def build(self, onnx_path: Path, profile: TargetProfile, out_dir: Path) -> EngineArtifact:
        from edgecompress.engines import build_place

        if not build_place(self, profile).here:  # no TensorRT/GPU here, or an x86 GPU asked for a Jetson's plan
            return write_build_kit(onnx_path, profile, out_dir)
        return self._build_here(Path(onnx_path), profile, Path(out_dir))

    def _build_here(self, onnx_path: Path, profile: TargetProfile, out_dir: Path) -> EngineArtifact:
        import tensorrt as trt

        from edgecompress.core.cache import cache_dir

        model, report = _check_model(onnx_path, profile)
        facts = trt_device.gpu_info()  # timings are only valid for one GPU model and TensorRT version
        cache = cache_dir() / "tensorrt" / f"{facts['gpu'].replace(' ', '_')}-trt{trt.__version__}.timing.cache"
        cache.parent.mkdir(parents=True, exist_ok=True)
        settings = build_settings(model, profile, str(cache))
        out_dir.mkdir(parents=True, exist_ok=True)
        plan = out_dir / PLAN_NAME
        try:
            facts = trt_device.build_plan(onnx_path, plan, settings)
        except RuntimeError as exc:
            raise EngineBuildError(str(exc), "check the preflight warnings and the TensorRT log") from exc
        return EngineArtifact(
            target=profile.name, kind="tensorrt", precision=settings["label"],
            precision_layers=settings["precision_layers"], path=plan, files=[plan],
            metadata={**facts, "build_settings": settings, "preflight": report.to_dict(),
                      "trtexec": shlex.join(trtexec_command(onnx_path.name, PLAN_NAME, settings)),
                      "portability": NOT_PORTABLE, "built_on_device": False,
                      "summary": _summary(report, settings, facts)},
            note=NOT_PORTABLE,
        )

    def load(self, artifact: EngineArtifact, profile: TargetProfile) -> "TensorRTRunner":
        if artifact.path is None:
            raise EngineBuildError(f"no TensorRT engine was built for '{profile.name}' on this host",
                                   artifact.note or "build the engine on the device")
        return TensorRTRunner(artifact.path)


class TensorRTRunner:
    """A plan behind the `Runner` interface: `trt_device.PlanRunner` (cuda-python buffers, no torch)."""

    def __init__(self, plan_path: Path) -> None:
        try:
            self._plan = trt_device.PlanRunner(Path(plan_path))
        except RuntimeError as exc:
            raise EngineBuildError(str(exc), "pip install -e .[tensorrt] (TensorRT and cuda-python)") from None
        self.inputs = [self._spec(n) for n in self._plan.input_names]
        self.outputs = [self._spec(n) for n in self._plan.output_names]

    def _spec(self, name: str) -> TensorSpec:
        dims = tuple(d if d >= 0 else None for d in self._plan.shapes[name])
        return TensorSpec(name, dims, self._plan.dtypes[name].name)

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        try:
            return self._plan.run(feeds)
        except RuntimeError as exc:
            raise EngineBuildError(str(exc), "see the TensorRT log") from None
