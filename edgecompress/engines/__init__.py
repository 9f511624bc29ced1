"""engines: one module per engine kind (ONNX Runtime CPU, ARM .ort, TensorRT, OpenVINO, ExecuTorch .pte) behind `EngineBuilder` / `Runner`,
looked up by the profile's `engine` key; `build_place` decides whether an engine is built here or on the device.

May import: core, source, export, quantize (instruction-set facts).
"""

from __future__ import annotations

from importlib import import_module

from edgecompress.engines.base import BuildPlace, EngineArtifact, EngineBuilder, Runner, decide_build_place

from edgecompress.source.specs import TensorSpec
from edgecompress.core.errors import TargetError
from edgecompress.core.targets import TargetProfile

# engine kind -> "module:attribute"; modules import lazily so optional runtimes
# (TensorRT) are only touched when a profile asks for them.
_BUILDERS = {
    "ort-cpu": "edgecompress.engines.ort_cpu:OrtCpuBuilder",
    "ort-arm": "edgecompress.engines.arm:ArmBuilder",
    "tensorrt": "edgecompress.engines.tensorrt:TensorRTBuilder",
    "openvino": "edgecompress.engines.openvino:OpenVinoBuilder",
    "executorch": "edgecompress.engines.executorch:ExecuTorchBuilder",  # built from the torch model (takes = "torch")
}


def get_builder(kind: str) -> EngineBuilder:
    try:
        module_name, attribute = _BUILDERS[kind].split(":")
    except KeyError:
        raise TargetError(
            f"no engine builder for engine kind '{kind}'", f"use one of: {', '.join(sorted(_BUILDERS))}"
        ) from None
    return getattr(import_module(module_name), attribute)()


def check_profile(profile: TargetProfile) -> None:
    """Validate a profile's engine options up front, so a typo fails before hours of work.

    Builders with engine-specific options expose `check(profile)`; the others have none.
    """
    check = getattr(get_builder(profile.engine), "check", None)
    if check is not None:
        check(profile)


def checked_profiles(names: list[str]) -> list[TargetProfile]:
    """The target profiles a build names, each engine's options validated: a typo in --target or in a profile
    fails here, before any work (and, from the CLI, before torch is even imported)."""
    from edgecompress.core.targets import load_profiles

    profiles = load_profiles(names)
    for profile in profiles:
        check_profile(profile)
    return profiles


def build_place(builder: EngineBuilder, profile: TargetProfile) -> BuildPlace:
    """Whether `profile`'s engine is built (and measured) on this host or handed over as a device kit."""
    from edgecompress.quantize.isa import host_arch

    needs_device_arch = getattr(builder, "needs_device_arch", False)
    return decide_build_place(builder.available(), needs_device_arch, profile.arch, host_arch())


def describe_profile(profile: TargetProfile) -> str:
    """A builder's one-line view of a profile (engine options, what builds on this host)."""
    describe = getattr(get_builder(profile.engine), "describe", None)
    return describe(profile) if describe is not None else ""


__all__ = [
    "BuildPlace", "EngineArtifact", "EngineBuilder", "Runner", "TensorSpec", "build_place", "check_profile", "checked_profiles",
    "describe_profile", "get_builder",
]
