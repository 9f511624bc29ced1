#!/usr/bin/env python3
"""Build a TensorRT plan from an ONNX model with the TensorRT Python API (8.6 and 10.x).

This file is self-contained on purpose (standard library + `tensorrt` only): edgecompress
uses it in-process on a GPU host, and copies it verbatim into the on-device build kit as
`build_engine.py`, so the plan built on a Jetson comes from exactly the same code.

    python3 build_engine.py --onnx model.int8.onnx --settings build_settings.json --plan engine.plan

`build_settings.json` holds: precisions (list of "int8"/"fp16"/"fp32"), workspace_mib,
dla_core (null = GPU only), gpu_fallback, shapes ({input: [min, opt, max] shapes}),
timing_cache (file path or null).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any


def trt_major(trt: Any) -> int:
    return int(trt.__version__.split(".")[0])


def gpu_info() -> dict[str, Any]:
    """GPU name and compute capability: plans only run on the GPU model they were built for."""
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            return {"gpu": torch.cuda.get_device_name(0), "compute_capability": f"{major}.{minor}"}
    except ImportError:
        pass
    try:
        from cuda import cudart

        err, props = cudart.cudaGetDeviceProperties(0)
        if int(err) == 0:
            name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
            return {"gpu": name.strip("\x00"), "compute_capability": f"{props.major}.{props.minor}"}
    except ImportError:
        pass
    return {"gpu": "unknown", "compute_capability": "unknown"}


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
        Path(cache_path).write_bytes(bytes(config.get_timing_cache().serialize()))
    return {"tensorrt_version": trt.__version__, **gpu_info(), "dla_core": settings.get("dla_core")}


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
