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
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgecompress.artifacts import atomic_dir, write_json_atomic
from edgecompress.engines import _trt_build
from edgecompress.engines.base import (
    EngineArtifact,
    PrecisionLabel,
    TensorSpec,
    graph_precision,
)
from edgecompress.engines.trt_preflight import PreflightReport, preflight
from edgecompress.errors import EngineBuildError, TargetError
from edgecompress.targets import TargetProfile

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
    try:
        options = TensorRTOptions.model_validate(profile.options)
    except ValidationError as exc:
        problems = "; ".join(f"options.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise TargetError(f"target profile {profile.source or profile.name} is invalid: {problems}",
                          "see targets/README.md for the TensorRT options") from exc
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
    """int8 needs scales: edgecompress gives them as Q/DQ nodes (explicit quantization)."""
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
        shapes[graph_input.name] = [[size, *dims[1:]] for size in sizes]
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
    """Everything `_trt_build.build_plan` and `trtexec` need, as one JSON-able dict."""
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


def _shape_arg(shapes: dict[str, list[list[int]]], which: int) -> str:
    return ",".join(f"{name}:{'x'.join(str(d) for d in dims[which])}" for name, dims in shapes.items())


def trtexec_command(onnx_name: str, plan_name: str, settings: dict[str, Any]) -> list[str]:
    """The `trtexec` line that builds the same plan as `build_plan` with `settings`."""
    command = ["trtexec", f"--onnx={onnx_name}", f"--saveEngine={plan_name}"]
    command += [f"--{p}" for p in ("int8", "fp16") if p in settings["precisions"]]
    command.append("--noTF32")  # fp32 layers in fp32: TensorRT would otherwise round them to TF32 on Ampere+
    if settings["shapes"]:
        command += [f"--{kind}Shapes={_shape_arg(settings['shapes'], i)}" for i, kind in enumerate(("min", "opt", "max"))]
    command.append(f"--memPoolSize=workspace:{settings['workspace_mib']}")  # MiB in TensorRT 8.6 and 10
    if settings["timing_cache"]:
        command.append(f"--timingCacheFile={settings['timing_cache']}")
    if settings["dla_core"] is not None:
        command.append(f"--useDLACore={settings['dla_core']}")
        if settings["gpu_fallback"]:
            command.append("--allowGPUFallback")
    return command


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
        shutil.copyfile(_trt_build.__file__, tmp / "build_engine.py")
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

    def available(self) -> str | None:
        if importlib.util.find_spec("tensorrt") is None:
            return "TensorRT is not installed (pip install -e .[tensorrt], or JetPack on a Jetson)"
        if _trt_build.gpu_info()["gpu"] == "unknown":
            return "no CUDA GPU is visible (TensorRT builds need the GPU the engine will run on)"
        return None

    def check(self, profile: TargetProfile) -> None:
        trt_options(profile)

    def describe(self, profile: TargetProfile) -> str:
        """One line for `edgecompress targets`: device options and what a build here produces."""
        options = trt_options(profile)
        where = f"DLA{options.dla_core}" + ("+GPU" if options.gpu_fallback else "") \
            if options.dla_core is not None else "GPU"
        here = "plan" if self.available() is None and _host_is(profile.arch) else "device kit"
        return f"TRT {options.tensorrt_major} {where}; here: {here}"

    def build(self, onnx_path: Path, profile: TargetProfile, out_dir: Path) -> EngineArtifact:
        reason = self.available()
        if reason is not None or not _host_is(profile.arch):  # an x86 GPU cannot build a Jetson's plan
            return write_build_kit(onnx_path, profile, out_dir)
        return self._build_here(Path(onnx_path), profile, Path(out_dir))

    def _build_here(self, onnx_path: Path, profile: TargetProfile, out_dir: Path) -> EngineArtifact:
        import tensorrt as trt

        from edgecompress.example import cache_dir

        model, report = _check_model(onnx_path, profile)
        facts = _trt_build.gpu_info()  # timings are only valid for one GPU model and TensorRT version
        cache = cache_dir() / "tensorrt" / f"{facts['gpu'].replace(' ', '_')}-trt{trt.__version__}.timing.cache"
        cache.parent.mkdir(parents=True, exist_ok=True)
        settings = build_settings(model, profile, str(cache))
        out_dir.mkdir(parents=True, exist_ok=True)
        plan = out_dir / PLAN_NAME
        try:
            facts = _trt_build.build_plan(onnx_path, plan, settings)
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


def _host_is(arch: str) -> bool:
    import platform

    return platform.machine() in ({"aarch64", "arm64"} if arch == "aarch64" else {"x86_64", "AMD64"})


class TensorRTRunner:
    """Runs a plan with torch CUDA tensors as device buffers (TensorRT 8.6+ tensor API)."""

    def __init__(self, plan_path: Path) -> None:
        import tensorrt as trt
        import torch

        self._torch = torch
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._engine = trt.Runtime(self._logger).deserialize_cuda_engine(Path(plan_path).read_bytes())
        if self._engine is None:
            raise EngineBuildError(f"{plan_path} does not load with TensorRT {trt.__version__}", NOT_PORTABLE)
        self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        is_input = {n: self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self._dtypes = {n: np.dtype(trt.nptype(self._engine.get_tensor_dtype(n))) for n in names}
        self.inputs = [self._spec(n) for n in names if is_input[n]]
        self.outputs = [self._spec(n) for n in names if not is_input[n]]

    def _spec(self, name: str) -> TensorSpec:
        dims = tuple(d if d >= 0 else None for d in self._engine.get_tensor_shape(name))
        return TensorSpec(name, dims, self._dtypes[name].name)

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        torch = self._torch
        keep = []
        for tensor in self.inputs:
            array = np.ascontiguousarray(feeds[tensor.name], dtype=self._dtypes[tensor.name])
            device = torch.from_numpy(array).cuda()
            self._context.set_input_shape(tensor.name, tuple(device.shape))
            self._context.set_tensor_address(tensor.name, device.data_ptr())
            keep.append(device)
        results = []
        for tensor in self.outputs:
            shape = tuple(self._context.get_tensor_shape(tensor.name))
            torch_dtype = torch.from_numpy(np.empty(0, self._dtypes[tensor.name])).dtype
            out = torch.empty(shape, dtype=torch_dtype, device="cuda")
            self._context.set_tensor_address(tensor.name, out.data_ptr())
            results.append(out)
        stream = torch.cuda.current_stream()
        if not self._context.execute_async_v3(stream.cuda_stream):
            raise EngineBuildError("TensorRT execution failed", "see the TensorRT log")
        stream.synchronize()
        return [out.cpu().numpy() for out in results]
