"""The engine-builder seam.

Every engine kind (ONNX Runtime CPU, ARM/ORT format, TensorRT) implements the small
`EngineBuilder` interface. Evaluation, benchmarking and the report only ever talk to
a `Runner`, so they never branch on engine kind (Polygraphy's runner idea).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from edgecompress.core.targets import TargetProfile
from edgecompress.source.specs import TensorSpec


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
    precision: str
    path: Path | None
    files: list[Path] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    note: str | None = None

    @property
    def runnable_here(self) -> bool:
        return self.path is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "kind": self.kind,
            "precision": self.precision,
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
    """One engine kind. `available()` returns None when it can build here, else the reason."""

    kind: str

    def available(self) -> str | None: ...

    def build(self, onnx_path: Path, profile: TargetProfile, out_dir: Path) -> EngineArtifact: ...

    def load(self, artifact: EngineArtifact, profile: TargetProfile) -> Runner: ...


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


def onnx_precision(onnx_path: Path) -> str:
    """'int8' when the graph holds QuantizeLinear/QLinear nodes, else 'fp16' or 'fp32' by its inputs' type."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    if any(node.op_type in ("QuantizeLinear", "DynamicQuantizeLinear") or node.op_type.startswith("QLinear") for node in model.graph.node):
        return "int8"
    fp16 = onnx.TensorProto.FLOAT16
    return "fp16" if any(value.type.tensor_type.elem_type == fp16 for value in model.graph.input) else "fp32"
