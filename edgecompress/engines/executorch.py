"""ExecuTorch engines (`.pte`) for Android and iOS phones, XNNPACK backend.

ExecuTorch is PyTorch's on-device runtime, so this engine is built from the torch module, not from the
ONNX file (`takes = "torch"`): torch.export -> PT2E with ExecuTorch's XNNPACKQuantizer (per-channel
symmetric int8 weights, int8 activations) calibrated on the build's own calibration set ->
`to_edge_transform_and_lower` with the XnnpackPartitioner -> `.pte`. The PyPI wheel's `executorch.runtime`
runs the same `.pte` with the XNNPACK kernels on x86-64, so fidelity and latency are measured here through
`Runner` like every engine, and labelled as this host's figures, never a phone's.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edgecompress.core.artifacts import atomic_path, sha256_file
from edgecompress.core.errors import EngineBuildError
from edgecompress.quantize.diagnose import Diagnosis
from edgecompress.core.logs import third_party_output
from edgecompress.core.targets import TargetProfile
from edgecompress.engines.base import EngineArtifact, TorchEngineRequest, TorchModel, profile_options
from edgecompress.source.specs import TensorSpec

ENGINE_NAME = "engine.pte"
INSTALL_FIX = 'install the mobile extra: pip install -e ".[mobile]" (executorch, pinned with the project\'s torch)'
ORT_PHONE_TARGETS = "android-arm64 (ONNX Runtime Mobile, .ort)"
# what executorch.runtime's MethodMeta reports as dtype (c10::ScalarType) -> numpy
_SCALAR_TYPES = {0: "uint8", 1: "int8", 3: "int32", 4: "int64", 5: "float16", 6: "float32", 11: "bool"}
COMPUTE_MODULES = ("Conv1d", "Conv2d", "Conv3d", "ConvTranspose2d", "Linear")


class ExecuTorchOptions(BaseModel):
    """The `[options]` table of an `engine = "executorch"` profile (see targets/README.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    backend: Literal["xnnpack"] = Field("xnnpack", description="the delegate the .pte is lowered to")
    per_channel: bool = Field(True, description="per-channel symmetric int8 weights (else per-tensor)")
    executorch_min: str | None = Field(None, description="oldest ExecuTorch runtime the app may run (default: the "
                                                         "builder's major.minor; a .pte is guaranteed on it and the next minor)")
    app_runtime: str = Field("", description="the runtime package the app links, e.g. org.pytorch:executorch-android")


def executorch_options(profile: TargetProfile) -> ExecuTorchOptions:
    return profile_options(ExecuTorchOptions, profile, "executorch")


def executorch_version() -> str | None:
    try:
        return importlib.metadata.version("executorch")
    except importlib.metadata.PackageNotFoundError:
        return None


def compatible_runtimes(built_with: str, minimum: str | None = None) -> dict[str, str]:
    """The runtime range a .pte is guaranteed on: its own minor and the next (ExecuTorch runtime/COMPATIBILITY.md)."""
    major, minor = (int(part) for part in built_with.split(".")[:2])
    return {"name": "executorch", "built_with": built_with, "min_version": minimum or f"{major}.{minor}",
            "max_version": f"{major}.{minor + 1}"}


def compute_layers(module: Any, keep_float: tuple[str, ...]) -> dict[str, int]:
    """Conv/Linear modules per precision: those under a kept-float module name are fp32, the others int8."""
    kept = 0
    total = 0
    for name, child in module.named_modules():
        if type(child).__name__ in COMPUTE_MODULES:
            total += 1
            kept += any(name == k or name.startswith(k + ".") for k in keep_float)
    return {kind: count for kind, count in (("int8", total - kept), ("fp32", kept)) if count}


def _torch_inputs(feeds: dict[str, np.ndarray], names: list[str]) -> tuple:
    import torch

    return tuple(torch.from_numpy(np.ascontiguousarray(feeds[name])) for name in names)


def half_precision(module: Any) -> Any:
    """A float16 copy of `module` between casts: the app feeds and reads float32 as from the fp32 and int8 engines,
    XNNPACK computes in fp16 (the casts run outside the delegate, on ExecuTorch's portable kernels)."""
    import copy

    import torch

    class HalfPrecision(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = copy.deepcopy(inner).half()

        def forward(self, *inputs: torch.Tensor) -> Any:
            outputs = self.inner(*(x.half() if x.is_floating_point() else x for x in inputs))
            if isinstance(outputs, torch.Tensor):
                return outputs.float()
            return type(outputs)(o.float() if o.is_floating_point() else o for o in outputs)

    return HalfPrecision(module).eval()


def _export(module: Any, example: tuple, what: str):
    import torch

    try:
        return torch.export.export(module, example)
    except Exception as exc:  # torch.export raises many kinds for untraceable code
        raise EngineBuildError(
            f"torch.export cannot trace the model for ExecuTorch ({what}): {' '.join(str(exc).split())[:300]}",
            "make forward() traceable by torch.export (no data-dependent Python control flow), or build the "
            f"ONNX route for phones instead: --target {ORT_PHONE_TARGETS.split()[0]}",
        ) from exc


def _inside(node: Any, modules: tuple[str, ...]) -> bool:
    """Whether an exported graph node comes from one of `modules` (or a child of one), by its nn_module_stack."""
    paths = [str(entry[0]) for entry in node.meta.get("nn_module_stack", {}).values()]
    return any(path == name or path.startswith(name + ".") for path in paths for name in modules)


def quantize_pt2e(model: TorchModel, options: ExecuTorchOptions, request: TorchEngineRequest):
    """PT2E with ExecuTorch's XNNPACK quantizer, calibrated on the build's calibration feeds; modules named in
    `request.keep_float` get no quantization config (they stay fp32 and run as float XNNPACK ops)."""
    example = _torch_inputs(model.example_inputs, list(model.example_inputs))
    return _export(converted_pt2e(model, options, request), example, "after quantization")


def converted_pt2e(model: TorchModel, options: ExecuTorchOptions, request: TorchEngineRequest):
    """The calibrated, converted PT2E graph module: quantize/dequantize around float ops, what the .pte computes in
    int8, runnable in torch (the diagnosis runs it beside the fp32 module). Dynamic activations (XNNPACK's
    dynamically quantized fully-connected kernels, Linear layers only) need no calibration: one example sets them up."""
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer, get_symmetric_quantization_config
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    names = list(model.example_inputs)
    example = _torch_inputs(model.example_inputs, names)
    dynamic = request.activations == "dynamic"
    quantizer = XNNPACKQuantizer()
    quantizer.set_global(get_symmetric_quantization_config(is_per_channel=options.per_channel, is_dynamic=dynamic))
    keep_float = request.keep_float
    if keep_float:  # set_module_name(name, None) is not supported yet: a filter on each node's module path instead
        quantizer.set_filter_function(lambda node: not _inside(node, keep_float))
    prepared = prepare_pt2e(_export(model.module, example, "before quantization").module(), quantizer)
    seen = 0
    with torch.no_grad():
        for feeds in [model.example_inputs] if dynamic else model.calibration():
            try:
                prepared(*_torch_inputs(feeds, names))
            except Exception as exc:  # the prepared graph is torchao's rewrite of the export: any op may fail in it
                raise EngineBuildError(
                    f"ExecuTorch's int8 quantizer (PT2E) could not run the model on the calibration set: "
                    f"{exc.__class__.__name__}: {' '.join(str(exc).split())[:200]}",
                    f"build this model for phones through the ONNX route (--target {ORT_PHONE_TARGETS.split()[0]}: ONNX "
                    "Runtime Mobile), which quantizes the exported ONNX graph instead",
                ) from exc
            seen += 1
    if not seen:
        raise EngineBuildError("the calibration set gave no samples for ExecuTorch's quantizer", "pass --calib with samples")
    return convert_pt2e(prepared)


COMPUTE_OPS = ("conv1d", "conv2d", "conv3d", "linear")  # aten ops of the modules repair can keep out of the quantizer


def pt2e_diagnosis(model: TorchModel, options: ExecuTorchOptions, feeds: list[dict[str, np.ndarray]],
                   request: TorchEngineRequest = TorchEngineRequest()) -> Diagnosis:
    """Per Conv/Linear module, the int8 program's error against the fp32 module at the module's input and output
    (SQNR, the noise it adds): the ONNX route's sensitivity table for a .pte, and repair's ranking."""
    import torch
    from torch.fx import Interpreter

    from edgecompress.quantize.diagnose import PairStatistics, input_output_error

    converted = converted_pt2e(model, options, request)
    wanted = {name: type(child).__name__ for name, child in model.module.named_modules() if type(child).__name__ in COMPUTE_MODULES}
    nodes = {}  # the converted graph's compute op of each module (its last one, where a module calls several)
    for node in converted.graph.nodes:
        stack = [str(entry[0]) for entry in node.meta.get("nn_module_stack", {}).values()]
        if node.op == "call_function" and stack and stack[-1] in wanted and any(op in str(node.target) for op in COMPUTE_OPS):
            nodes[stack[-1]] = node
    captured: dict[str, dict[str, torch.Tensor]] = {"fp32": {}, "int8": {}}

    def hook(name: str):
        def record(_module, args, output) -> None:
            captured["fp32"][f"{name}:in"], captured["fp32"][f"{name}:out"] = args[0].detach(), output.detach()
        return record

    module_of = {node: name for name, node in nodes.items()}

    class Recording(Interpreter):
        def run_node(self, node):
            value = super().run_node(node)
            if node in module_of:
                name = module_of[node]
                captured["int8"][f"{name}:in"], captured["int8"][f"{name}:out"] = self.env[node.args[0]], value
            return value

    modules = dict(model.module.named_modules())
    handles = [modules[name].register_forward_hook(hook(name)) for name in nodes]
    statistics = {f"{name}:{side}": PairStatistics() for name in nodes for side in ("in", "out")}
    names = list(model.example_inputs)
    try:
        with torch.no_grad():
            for feed in feeds:
                inputs = _torch_inputs(feed, names)
                model.module(*inputs)
                Recording(converted, garbage_collect_values=False).run(*inputs)
                for key, stats in statistics.items():
                    stats.add(captured["fp32"][key].numpy(), captured["int8"][key].numpy())
    finally:
        for handle in handles:
            handle.remove()
    errors = {key: stats.error(key) for key, stats in statistics.items()}
    layers = [input_output_error(name, wanted[name], errors[f"{name}:in"], errors[f"{name}:out"]) for name in nodes]
    return Diagnosis(layers, list(errors.values()), len(feeds))


def _op_name(target: Any) -> str:
    """'mean.dim' for an edge op overload (aten.mean.dim), the function's name otherwise."""
    name = getattr(target, "__name__", None) or str(target)
    return name.removeprefix("aten.")


def lower_to_pte(exported, out: Path) -> list[str]:
    """XNNPACK-partition and serialise; returns the ops left outside the delegate (portable kernels on the phone)."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    try:
        edge = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()])
        outside = sorted({_op_name(node.target) for node in edge.exported_program().graph.nodes
                          if node.op == "call_function" and _op_name(node.target) not in ("executorch_call_delegate", "getitem")})
        program = edge.to_executorch()
    except Exception as exc:
        raise EngineBuildError(f"ExecuTorch could not lower the model to XNNPACK: {' '.join(str(exc).split())[:300]}",
                               "report the op named above; ops XNNPACK lacks must be replaced in the model") from exc
    with atomic_path(out) as tmp:
        tmp.write_bytes(program.buffer)
    return outside


class ExecuTorchBuilder:
    """`engine.pte` from the torch module; runs here through executorch.runtime (XNNPACK on x86-64)."""

    kind = "executorch"
    takes: Literal["torch"] = "torch"

    def available(self) -> str | None:
        try:
            with third_party_output("executorch"):  # torchao's import logs missing CUDA kernels, torch warns
                import executorch.exir  # noqa: F401
                import executorch.runtime  # noqa: F401
        except ImportError:
            return f"executorch is not installed ({INSTALL_FIX})"
        return None

    def check(self, profile: TargetProfile) -> None:
        executorch_options(profile)

    def describe(self, profile: TargetProfile) -> str:
        options = executorch_options(profile)
        here = "runs here (x86 XNNPACK)" if self.available() is None else 'needs pip install -e ".[mobile]"'
        return f".pte {options.backend.upper()}, built from the torch model; {here}"

    def build(self, model: TorchModel, request: TorchEngineRequest, profile: TargetProfile, out_dir: Path) -> EngineArtifact:
        unavailable = self.available()
        if unavailable is not None:
            raise EngineBuildError(f"target '{profile.name}' needs ExecuTorch: {unavailable}", INSTALL_FIX)
        options = executorch_options(profile)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        engine = out_dir / ENGINE_NAME
        with third_party_output("executorch"):  # torch's pytree FutureWarnings on every export, and more
            example = _torch_inputs(model.example_inputs, list(model.example_inputs))
            if request.precision == "int8":
                exported = quantize_pt2e(model, options, request)
            elif request.precision == "fp16":
                exported = _export(half_precision(model.module), example, "fp16")
            else:
                exported = _export(model.module, example, "fp32")
            outside = lower_to_pte(exported, engine)
        layers = compute_layers(model.module, request.keep_float) if request.precision == "int8" else {}
        label = request.precision if not layers else next(iter(layers)) if len(layers) == 1 else "mixed"
        version = executorch_version() or "unknown"
        runtime = compatible_runtimes(version, options.executorch_min)
        where = "x86 XNNPACK on this host"
        return EngineArtifact(
            target=profile.name, kind=self.kind, precision=label, precision_layers=layers, path=engine, files=[engine],
            metadata={
                "format": "pte", "backend": options.backend, "executorch": version, "runtime": runtime,
                "runtime_requirement": f"ExecuTorch runtime {runtime['min_version']} to {runtime['max_version']} "
                                       f"with the XNNPACK backend{f' ({options.app_runtime})' if options.app_runtime else ''}",
                "input_names": list(model.example_inputs), "output_names": list(model.output_names),
                "input_shapes": {name: list(a.shape) for name, a in model.example_inputs.items()},
                "quantizer": None if request.precision != "int8" else {
                    "name": "XNNPACKQuantizer (PT2E)", "weights": "int8 symmetric " + ("per-channel" if options.per_channel else "per-tensor"),
                    "activations": ("int8 per call (dynamic), Linear layers only" if request.activations == "dynamic"
                                    else "int8 affine per-tensor"), "modules_kept_float": list(request.keep_float)},
                "ops_outside_delegate": outside, "threads": profile.threads, "sha256": sha256_file(engine),
                "measured_where": where,
                "summary": [
                    f"ExecuTorch .pte ({options.backend.upper()} delegate), built with executorch {version}; the app needs "
                    f"the ExecuTorch runtime {runtime['min_version']}-{runtime['max_version']}",
                    f"figures in this report come from running the .pte here ({where}), not from a phone",
                    *([f"ops outside the XNNPACK delegate (portable kernels on the phone): {', '.join(outside)}"] if outside else []),
                ],
            },
        )

    def diagnose(self, model: TorchModel, profile: TargetProfile, feeds: list[dict[str, np.ndarray]],
                 request: TorchEngineRequest = TorchEngineRequest()) -> Diagnosis:
        with third_party_output("executorch"):
            return pt2e_diagnosis(model, executorch_options(profile), feeds, request)

    def load(self, artifact: EngineArtifact, profile: TargetProfile) -> ExecuTorchRunner:
        if artifact.path is None or not Path(artifact.path).is_file():
            raise EngineBuildError(f"no ExecuTorch engine at {artifact.path}", "build the target first")
        unavailable = self.available()
        if unavailable is not None:
            raise EngineBuildError(f"cannot run {artifact.path}: {unavailable}", INSTALL_FIX)
        meta = artifact.metadata
        return ExecuTorchRunner(Path(artifact.path), meta["input_names"], meta["output_names"], profile.threads)


def set_threads(threads: int) -> int:
    """XNNPACK's thread pool is process-wide: size it as ONNX Runtime's sessions are (the profile's, capped at the cores)."""
    import os

    from executorch.extension.pybindings import portable_lib

    wanted = min(threads, os.cpu_count() or 1) if threads else (os.cpu_count() or 1)
    if portable_lib._threadpool_get_thread_count() != wanted:
        portable_lib._unsafe_reset_threadpool(wanted)
    return wanted


class ExecuTorchRunner:
    """A `.pte` in executorch.runtime behind `Runner`: the program has fixed shapes, so a batch of N runs as
    N / (the program's batch) calls, the outputs concatenated."""

    def __init__(self, engine: Path, input_names: list[str], output_names: list[str], threads: int = 0) -> None:
        with third_party_output("executorch"):  # the thread pool's cpuinfo probe writes to fd 2 ("Failed to open midr file")
            from executorch.runtime import Runtime, Verification

            set_threads(threads)
            program = Runtime.get().load_program(Path(engine), verification=Verification.InternalConsistency)
            self._method = program.load_method("forward")
        meta = self._method.metadata
        self._input_shapes = [tuple(meta.input_tensor_meta(i).sizes()) for i in range(meta.num_inputs())]
        self._batch = self._input_shapes[0][0] if self._input_shapes and self._input_shapes[0] else 1
        self.inputs = [TensorSpec(name, (None, *shape[1:]), _SCALAR_TYPES.get(int(meta.input_tensor_meta(i).dtype()), "float32"))
                       for i, (name, shape) in enumerate(zip(input_names, self._input_shapes))]
        self.outputs = [TensorSpec(name, (None, *meta.output_tensor_meta(i).sizes()[1:]),
                                   _SCALAR_TYPES.get(int(meta.output_tensor_meta(i).dtype()), "float32"))
                        for i, name in enumerate(output_names)]
        self._names = [spec.name for spec in self.inputs]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        import torch

        count = len(feeds[self._names[0]])
        step = self._batch
        chunks: list[list[np.ndarray]] = []
        for start in range(0, count, step):
            part = {name: feeds[name][start:start + step] for name in self._names}
            short = step - len(part[self._names[0]])
            if short:  # the last, partial batch: pad with its last row, drop the padding's outputs
                part = {name: np.concatenate([a, np.repeat(a[-1:], short, axis=0)]) for name, a in part.items()}
            outputs = self._method.execute([torch.from_numpy(np.ascontiguousarray(part[n])) for n in self._names])
            chunks.append([np.asarray(o.detach().numpy() if hasattr(o, "detach") else o)[:step - short] for o in outputs])
        return [np.concatenate([chunk[i] for chunk in chunks]) for i in range(len(chunks[0]))]
