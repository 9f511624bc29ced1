"""edgecompress: a trained model in, a verified and benchmarked int8 edge engine out.

`edgecompress.build(model, calib=loader, targets=["cpu"])` from Python, `edgecompress build` from a shell: the same
options, steps and reports. The Python API loads on first use (PEP 562), so `import edgecompress` and the CLI's
start stay fast.
"""

from __future__ import annotations

__version__ = "0.1.0"

TYPE_CHECKING = False  # not typing's: importing typing would cost `import edgecompress` more than all of it

if TYPE_CHECKING:
    from edgecompress.api import BuildResult, EngineResult, EngineRunner, build

__all__ = ["BuildResult", "EngineResult", "EngineRunner", "__version__", "build"]


def __getattr__(name: str) -> object:
    if name in __all__ and name != "__version__":
        from edgecompress import api

        return getattr(api, name)
    raise AttributeError(f"module 'edgecompress' has no attribute {name!r}")
