"""Engine builders, one module per engine kind, looked up by the profile's `engine` key."""

from __future__ import annotations

from importlib import import_module

from edgecompress.engines.base import EngineArtifact, EngineBuilder, Runner, TensorSpec
from edgecompress.errors import TargetError

# engine kind -> "module:attribute"; modules import lazily so optional runtimes
# (TensorRT) are only touched when a profile asks for them.
_BUILDERS = {
    "ort-cpu": "edgecompress.engines.ort_cpu:OrtCpuBuilder",
}


def get_builder(kind: str) -> EngineBuilder:
    try:
        module_name, attribute = _BUILDERS[kind].split(":")
    except KeyError:
        raise TargetError(
            f"no engine builder for engine kind '{kind}'", f"use one of: {', '.join(sorted(_BUILDERS))}"
        ) from None
    return getattr(import_module(module_name), attribute)()


__all__ = ["EngineArtifact", "EngineBuilder", "Runner", "TensorSpec", "get_builder"]
