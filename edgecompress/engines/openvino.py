"""OpenVINO CPU engine (x86-64 Intel gateways and workstations).

OpenVINO reads the same int8 QDQ ONNX file ONNX Runtime runs (its Q/DQ pairs become FakeQuantize nodes that its
CPU plugin executes with int8 kernels); the engine is that graph converted offline to OpenVINO's IR
(`engine.xml` + `engine.bin`), so the device only compiles it for its own CPU. The compile settings
(threads, latency hint, the precision of float layers) are part of the engine and travel in its metadata.

Float layers run in f32 unless the profile says otherwise: OpenVINO's CPU plugin would otherwise run them in bf16
on CPUs that have it, which is another precision than the one the budget judged on ONNX Runtime.
The `openvino` extra installs it (`pip install "edgecompress[openvino]"`); nothing imports it until a profile asks.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress.core.artifacts import write_json_atomic
from edgecompress.core.errors import EngineBuildError, TargetError
from edgecompress.core.targets import TargetProfile
from edgecompress.engines.base import EngineArtifact, onnx_precision
from edgecompress.source.specs import TensorSpec

INSTALL = 'pip install "edgecompress[openvino]"'
INFERENCE_PRECISIONS = ("f32", "bf16", "f16")
PERFORMANCE_HINTS = ("LATENCY", "THROUGHPUT")
_DTYPES = {"f32": "float32", "f16": "float16", "i64": "int64", "i32": "int32", "u8": "uint8", "i8": "int8", "boolean": "bool"}


def compile_config(profile: TargetProfile) -> dict[str, Any]:
    """OpenVINO CPU plugin properties from the profile: its threads (never more than this host has, as for ONNX
    Runtime's sessions), the latency hint, f32 float layers; CPU pinning only when the profile asks."""
    options = profile.options
    cores = os.cpu_count() or 1
    config: dict[str, Any] = {
        "INFERENCE_NUM_THREADS": min(profile.threads, cores) if profile.threads else cores,
        "PERFORMANCE_HINT": str(options.get("performance_hint", "LATENCY")),
        "INFERENCE_PRECISION_HINT": str(options.get("inference_precision", "f32")),
    }
    if "cpu_pinning" in options:
        config["ENABLE_CPU_PINNING"] = bool(options["cpu_pinning"])
    return config


class OpenVinoRunner:
    """A compiled OpenVINO model behind the `Runner` interface."""

    def __init__(self, model_path: Path, config: dict[str, Any]) -> None:
        import openvino as ov

        self.compiled = ov.Core().compile_model(str(model_path), "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.inputs = [_spec(port) for port in self.compiled.inputs]
        self.outputs = [_spec(port) for port in self.compiled.outputs]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        result = self.request.infer(feeds)
        return [np.array(result[port]) for port in self.compiled.outputs]


def _spec(port: Any) -> TensorSpec:
    shape = tuple(d.get_length() if d.is_static else None for d in port.get_partial_shape())
    return TensorSpec(port.get_any_name(), shape, _DTYPES.get(port.get_element_type().get_type_name(), "float32"))


class OpenVinoBuilder:
    kind = "openvino"

    def available(self) -> str | None:
        try:
            import openvino  # noqa: F401
        except ImportError:
            return f"openvino is not installed ({INSTALL})"
        return None

    def check(self, profile: TargetProfile) -> None:
        """The profile's OpenVINO options, checked before any work; a missing runtime fails here too."""
        options = profile.options
        if options.get("inference_precision", "f32") not in INFERENCE_PRECISIONS:
            raise TargetError(f"target '{profile.name}': inference_precision '{options['inference_precision']}' is unknown",
                              f"use one of: {', '.join(INFERENCE_PRECISIONS)}")
        if options.get("performance_hint", "LATENCY") not in PERFORMANCE_HINTS:
            raise TargetError(f"target '{profile.name}': performance_hint '{options['performance_hint']}' is unknown",
                              f"use one of: {', '.join(PERFORMANCE_HINTS)}")
        if profile.arch != "x86_64":
            raise TargetError(f"target '{profile.name}': the openvino engine is for x86_64 CPUs, not {profile.arch}",
                              "use engine = \"ort-arm\" for ARM devices")
        reason = self.available()
        if reason is not None:
            raise TargetError(f"target '{profile.name}' needs OpenVINO: {reason}", INSTALL)

    def describe(self, profile: TargetProfile) -> str:
        config = compile_config(profile)
        compared = f"; timed against {', '.join(profile.compare_engines)} on the same file" if profile.compare_engines else ""
        return f"OpenVINO CPU, float layers in {config['INFERENCE_PRECISION_HINT']}{compared}"

    def build(self, onnx_path: Path, profile: TargetProfile, out_dir: Path) -> EngineArtifact:
        reason = self.available()
        if reason is not None:
            raise EngineBuildError(f"cannot build the OpenVINO engine for '{profile.name}': {reason}", INSTALL)
        import openvino as ov

        xml_path, bin_path = Path(out_dir) / "engine.xml", Path(out_dir) / "engine.bin"
        try:
            model = ov.Core().read_model(str(onnx_path))
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses of its own
            raise EngineBuildError(
                f"OpenVINO cannot read the model for target '{profile.name}': {' '.join(str(exc).split())[:300]}",
                "check the model's operators are supported by OpenVINO's ONNX frontend, or use the cpu target (ort-cpu)",
            ) from exc
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".engine.", dir=out_dir) as staging:  # both files, then renamed
            ov.save_model(model, str(Path(staging) / xml_path.name), compress_to_fp16=False)
            os.replace(Path(staging) / bin_path.name, bin_path)
            os.replace(Path(staging) / xml_path.name, xml_path)
        config = compile_config(profile)
        settings_path = write_json_atomic(Path(out_dir) / "compile_config.json", config)
        label = onnx_precision(onnx_path)
        return EngineArtifact(
            target=profile.name, kind=self.kind, precision=label.name, precision_layers=label.layers, path=xml_path,
            files=[xml_path, bin_path, settings_path],
            metadata={"openvino": ov.__version__, "compile_config": config, "arch": profile.arch, "device": "CPU"},
        )

    def load(self, artifact: EngineArtifact, profile: TargetProfile) -> OpenVinoRunner:
        if artifact.path is None:
            raise EngineBuildError(f"no OpenVINO engine was built for '{profile.name}'", "build the target first")
        return OpenVinoRunner(artifact.path, artifact.metadata.get("compile_config") or compile_config(profile))
