#!/usr/bin/env python3
"""TensorRT on the machine that runs the plan: find the GPU, build a plan, run a plan (8.6 and 10.x).

This file is self-contained on purpose (standard library; `tensorrt`, `cuda-python` and numpy
imported only where needed): edgecompress uses it in-process on a GPU host, copies it
verbatim into the on-device build kit as `build_engine.py` and into every TensorRT bundle as
`trt_device.py`, so the plan a Jetson builds and runs comes from exactly the same code.

    python3 build_engine.py --onnx model.int8.onnx --settings build_settings.json --plan engine.plan

`build_settings.json` holds: precisions (list of "int8"/"fp16"/"fp32"), workspace_mib,
dla_core (null = GPU only), gpu_fallback, shapes ({input: [min, opt, max] shapes}),
timing_cache (file path or null).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

# where JetPack installs trtexec when it is not on PATH
TRTEXEC_PLACES = ("/usr/src/tensorrt/bin/trtexec",)
# device nodes of an NVIDIA GPU: desktop driver, Jetson integrated GPU (L4T)
GPU_DEVICE_NODES = ("/dev/nvidiactl", "/dev/nvhost-ctrl-gpu", "/dev/nvgpu/igpu0/ctrl")
UNKNOWN_GPU = {"gpu": "unknown", "compute_capability": "unknown"}


def trt_major(trt: Any) -> int:
    return int(trt.__version__.split(".")[0])


def cuda_runtime() -> Any | None:
    """cuda-python's runtime module: `cuda.bindings.runtime` (12.6+ and 13), `cuda.cudart` (older 12.x)."""
    try:
        from cuda.bindings import runtime

        return runtime
    except ImportError:
        pass
    try:
        from cuda import cudart  # removed in cuda-python 13

        return cudart
    except ImportError:
        return None


def _check(result: Any) -> Any:
    """cuda-python returns (error, value...) tuples; raise on an error, return the value(s)."""
    error, *values = result if isinstance(result, tuple) else (result,)
    if int(error) != 0:
        raise RuntimeError(f"CUDA call failed: {error}")
    return values[0] if len(values) == 1 else (tuple(values) or None)


def gpu_info() -> dict[str, Any]:
    """GPU name and compute capability: plans only run on the GPU model they were built for.

    cuda-python first (no torch needed), then CUDA torch where one is installed, then the
    device nodes a driver creates (a Jetson without cuda-python: name from the device tree).
    """
    cudart = cuda_runtime()
    if cudart is not None:
        try:
            if _check(cudart.cudaGetDeviceCount()) > 0:
                props = _check(cudart.cudaGetDeviceProperties(0))
                name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
                return {"gpu": name.strip("\x00 "), "compute_capability": f"{props.major}.{props.minor}"}
        except RuntimeError:  # no driver or no device: fall through to the other probes
            pass
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            return {"gpu": torch.cuda.get_device_name(0), "compute_capability": f"{major}.{minor}"}
    except ImportError:
        pass
    node = next((path for path in GPU_DEVICE_NODES if os.path.exists(path)), None)
    if node is not None:
        model = Path("/proc/device-tree/model")
        name = model.read_text(errors="replace").strip("\x00\n ") if model.is_file() else f"NVIDIA GPU ({node})"
        return {"gpu": name, "compute_capability": "unknown"}
    return dict(UNKNOWN_GPU)


def find_trtexec() -> str | None:
    return shutil.which("trtexec") or next((p for p in TRTEXEC_PLACES if os.access(p, os.X_OK)), None)


def _shape_arg(shapes: dict[str, list[list[int]]], which: int) -> str:
    return ",".join(f"{name}:{'x'.join(str(d) for d in dims[which])}" for name, dims in shapes.items())


def trtexec_command(onnx_name: str, plan_name: str, settings: dict[str, Any], trtexec: str = "trtexec") -> list[str]:
    """The `trtexec` line that builds the same plan as `build_plan` with `settings`."""
    command = [trtexec, f"--onnx={onnx_name}", f"--saveEngine={plan_name}"]
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


def _parse(trt: Any, builder: Any, logger: Any, onnx_path: Path) -> Any:
    # TensorRT 10 networks are always explicit-batch; 8.6 needs the flag
    flags = 0 if trt_major(trt) >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: " + " | ".join(errors))
    return network


def _configure(trt: Any, builder: Any, settings: dict[str, Any]) -> Any:
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(settings["workspace_mib"]) << 20)
    precisions = set(settings["precisions"])
    if hasattr(trt.BuilderFlag, "TF32"):  # on by default on Ampere+; the label's fp32 layers stay fp32
        config.clear_flag(trt.BuilderFlag.TF32)
    if "fp16" in precisions:
        config.set_flag(trt.BuilderFlag.FP16)
    if "int8" in precisions:
        config.set_flag(trt.BuilderFlag.INT8)  # scales come from the model's Q/DQ nodes
    if settings.get("dla_core") is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = int(settings["dla_core"])
        if settings.get("gpu_fallback", True):
            config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    profile = builder.create_optimization_profile()
    for name, (min_shape, opt_shape, max_shape) in settings["shapes"].items():
        profile.set_shape(name, tuple(min_shape), tuple(opt_shape), tuple(max_shape))
    config.add_optimization_profile(profile)
    return config


def _load_timing_cache(config: Any, path: str | None) -> Any:
    blob = Path(path).read_bytes() if path and os.path.isfile(path) else b""
    cache = config.create_timing_cache(blob)
    config.set_timing_cache(cache, ignore_mismatch=False)
    return cache


def build_plan(onnx_path: Path, plan_path: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """Parse, configure, build, serialize; returns what makes the plan non-portable."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = _parse(trt, builder, logger, Path(onnx_path))
    config = _configure(trt, builder, settings)
    cache_path = settings.get("timing_cache")
    _load_timing_cache(config, cache_path)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT failed to build the engine (see the TensorRT log above)")
    tmp = Path(f"{plan_path}.tmp")
    tmp.write_bytes(bytes(serialized))
    os.replace(tmp, plan_path)
    if cache_path:
        Path(cache_path).parent.mkdir(parents=True, exist_ok=True)
        Path(cache_path).write_bytes(bytes(config.get_timing_cache().serialize()))
    return {"tensorrt_version": trt.__version__, **gpu_info(), "dla_core": settings.get("dla_core")}


class PlanRunner:
    """Runs a plan with the TensorRT Python API; device buffers come from cuda-python, not torch."""

    def __init__(self, plan_path: Path) -> None:
        import numpy as np
        import tensorrt as trt

        cudart = cuda_runtime()
        if cudart is None:
            raise RuntimeError("running a TensorRT plan from Python needs cuda-python (pip install cuda-python)")
        self._np, self._cudart = np, cudart
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._engine = trt.Runtime(self._logger).deserialize_cuda_engine(Path(plan_path).read_bytes())
        if self._engine is None:
            raise RuntimeError(f"{plan_path} does not load with TensorRT {trt.__version__} on this GPU "
                               "(a plan only loads on the GPU model and TensorRT version that built it)")
        self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        self.input_names = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if n not in self.input_names]
        self.dtypes = {n: np.dtype(trt.nptype(self._engine.get_tensor_dtype(n))) for n in names}
        self.shapes = {n: tuple(self._engine.get_tensor_shape(n)) for n in names}  # -1 = dynamic
        self._buffers: dict[str, tuple[Any, int]] = {}
        self._stream: Any = None
        self._stream = _check(self._cudart.cudaStreamCreate())

    def _buffer(self, name: str, nbytes: int) -> Any:
        """Device memory per tensor, kept between runs (re-allocated only when it must grow): latency
        figures measure TensorRT and the copies, not cudaMalloc."""
        pointer, size = self._buffers.get(name, (None, 0))
        if pointer is None or size < nbytes:
            if pointer is not None:
                self._cudart.cudaFree(pointer)
            pointer = _check(self._cudart.cudaMalloc(max(1, nbytes)))
            self._buffers[name] = (pointer, max(1, nbytes))
        return pointer

    def run(self, feeds: dict[str, Any]) -> list[Any]:
        np, cudart = self._np, self._cudart
        to_device, to_host = (cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost)
        for name in self.input_names:
            array = np.ascontiguousarray(feeds[name], dtype=self.dtypes[name])
            pointer = self._buffer(name, array.nbytes)
            _check(cudart.cudaMemcpy(pointer, array.ctypes.data, array.nbytes, to_device))
            self._context.set_input_shape(name, array.shape)
            self._context.set_tensor_address(name, int(pointer))
        outputs = []
        for name in self.output_names:
            host = np.empty(tuple(self._context.get_tensor_shape(name)), self.dtypes[name])
            pointer = self._buffer(name, host.nbytes)
            self._context.set_tensor_address(name, int(pointer))
            outputs.append((host, pointer))
        if not self._context.execute_async_v3(int(self._stream)):
            raise RuntimeError("TensorRT execution failed (see the TensorRT log)")
        _check(cudart.cudaStreamSynchronize(self._stream))
        for host, pointer in outputs:
            _check(cudart.cudaMemcpy(host.ctypes.data, pointer, host.nbytes, to_host))
        return [host for host, _ in outputs]

    def close(self) -> None:
        for pointer, _ in self._buffers.values():
            self._cudart.cudaFree(pointer)
        self._buffers.clear()
        if self._stream is not None:
            self._cudart.cudaStreamDestroy(self._stream)
            self._stream = None

    def __del__(self) -> None:
        if getattr(self, "_buffers", None) is not None:
            self.close()


class TrtexecRunner:
    """Runs a plan through `trtexec --loadEngine` where Python has no TensorRT (JetPack always has trtexec)."""

    def __init__(self, plan_path: Path, trtexec: str, outputs: list[str]) -> None:
        self.plan_path, self.trtexec, self.output_names = Path(plan_path), trtexec, outputs

    def command(self, feeds: dict[str, Any], work: Path) -> list[str]:
        """One inference: inputs from raw .bin files, outputs exported as JSON."""
        loads = ",".join(f"{name}:{work / f'input_{i}.bin'}" for i, name in enumerate(feeds))
        shapes = ",".join(f"{name}:{'x'.join(str(d) for d in array.shape)}" for name, array in feeds.items())
        return [self.trtexec, f"--loadEngine={self.plan_path}", f"--loadInputs={loads}", f"--shapes={shapes}",
                f"--exportOutput={work / 'outputs.json'}", "--iterations=1", "--warmUp=0", "--duration=0",
                "--avgRuns=1"]

    def run(self, feeds: dict[str, Any]) -> list[Any]:
        import numpy as np

        with tempfile.TemporaryDirectory(prefix="trtexec-") as tmp:
            work = Path(tmp)
            for index, array in enumerate(feeds.values()):
                np.ascontiguousarray(array).tofile(work / f"input_{index}.bin")
            done = subprocess.run(self.command(feeds, work), capture_output=True, text=True)
            if done.returncode != 0:
                tail = (done.stdout + done.stderr).strip().splitlines()[-3:]
                raise RuntimeError(f"trtexec could not run {self.plan_path}: {' | '.join(tail)}")
            return read_exported_outputs(work / "outputs.json", self.output_names)


def read_exported_outputs(path: Path, names: list[str]) -> list[Any]:
    """trtexec's `--exportOutput` JSON: [{"name", "dimensions": "4x10", "values": [...]}, ...], in `names` order."""
    import numpy as np

    exported = {entry["name"]: entry for entry in json.loads(Path(path).read_text())}
    missing = [name for name in names if name not in exported]
    if missing:
        raise RuntimeError(f"trtexec exported no output named {', '.join(missing)}")
    return [np.asarray(exported[name]["values"], np.float32).reshape(
        [int(d) for d in str(exported[name]["dimensions"]).split("x")]) for name in names]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--onnx", default="model.int8.onnx")
    parser.add_argument("--settings", default="build_settings.json")
    parser.add_argument("--plan", default="engine.plan")
    args = parser.parse_args(argv)
    settings = json.loads(Path(args.settings).read_text())
    facts = build_plan(Path(args.onnx), Path(args.plan), settings)
    print(json.dumps({"plan": args.plan, **facts}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
