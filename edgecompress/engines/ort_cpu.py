"""ONNX Runtime CPU engine (x86-64 workstations and gateways).

The engine is the int8 model after ONNX Runtime's hardware-independent graph
optimizations (QDQ → QLinear fusions), saved offline so the device does not redo them.
The `extended` level is used offline because `all` adds layout transforms tied to the
host's CPU; the device applies the profile's level again when it loads the engine.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgecompress.core.artifacts import atomic_path, write_json_atomic
from edgecompress.core.runtime import session_options
from edgecompress.engines.base import EngineArtifact, onnx_precision
from edgecompress.source.specs import TensorSpec
from edgecompress.core.errors import EngineBuildError
from edgecompress.core.targets import TargetProfile

class OrtRunner:
    """An ONNX Runtime session behind the `Runner` interface (also used for the fp32 reference)."""

    def __init__(self, model_path: Path, threads: int = 0, level: str = "all", providers: list[str] | None = None):
        import onnxruntime as ort

        available = ort.get_available_providers()
        self.providers = [p for p in (providers or ["CPUExecutionProvider"]) if p in available] or [
            "CPUExecutionProvider"
        ]
        self.session = ort.InferenceSession(str(model_path), session_options(threads, level), providers=self.providers)
        self.inputs = [_spec(v) for v in self.session.get_inputs()]
        self.outputs = [_spec(v) for v in self.session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(None, feeds)


def _spec(value) -> TensorSpec:
    dtype = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64"}.get(value.type, "float32")
    return TensorSpec(value.name, tuple(d if isinstance(d, int) else None for d in value.shape), dtype)


class OrtCpuBuilder:
    kind = "ort-cpu"

    def available(self) -> str | None:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return "onnxruntime is not installed (pip install onnxruntime)"
        return None

    def build(self, onnx_path: Path, profile: TargetProfile, out_dir: Path) -> EngineArtifact:
        import onnxruntime as ort

        offline_level = profile.options.get("offline_optimization_level", "extended")
        engine_path = Path(out_dir) / "engine.onnx"
        with atomic_path(engine_path) as tmp:
            try:
                ort.InferenceSession(
                    str(onnx_path),
                    session_options(profile.threads, offline_level, optimized_path=tmp),
                    providers=["CPUExecutionProvider"],
                )
            except Exception as exc:
                raise EngineBuildError(
                    f"ONNX Runtime cannot load the model for target '{profile.name}': {' '.join(str(exc).split())[:300]}",
                    "check the model's ops are supported by onnxruntime's CPU provider",
                ) from exc
        settings = {
            "providers": profile.options.get("providers", ["CPUExecutionProvider"]),
            "intra_op_num_threads": profile.threads,
            "graph_optimization_level": profile.options.get("graph_optimization_level", "all"),
            "offline_optimization_level": offline_level,
        }
        settings_path = write_json_atomic(Path(out_dir) / "session_options.json", settings)
        label = onnx_precision(onnx_path)
        return EngineArtifact(
            target=profile.name,
            kind=self.kind,
            precision=label.name,
            precision_layers=label.layers,
            path=engine_path,
            files=[engine_path, settings_path],
            metadata={"onnxruntime": ort.__version__, "session_options": settings, "arch": profile.arch},
        )

    def load(self, artifact: EngineArtifact, profile: TargetProfile) -> OrtRunner:
        if artifact.path is None:
            raise EngineBuildError(f"no ONNX Runtime engine was built for '{profile.name}'", "build the target first")
        settings = artifact.metadata.get("session_options", {})
        return OrtRunner(
            artifact.path,
            threads=profile.threads,
            level=settings.get("graph_optimization_level", "all"),
            providers=settings.get("providers"),
        )
