"""edgecompress: a trained model in, a verified and benchmarked int8 edge engine out.

`edgecompress.build(model, calib=loader, targets=["cpu"])` from Python, `edgecompress build` from a shell: the same
options, steps and reports; `export_onnx`, `quantize_int8`, `make_calibration`, `bundle`, `release` and `ship_bundle`
run one step each. The Python API loads on first use (PEP 562), so `import edgecompress` and the CLI's start stay fast.

The one-step functions are not called `export`, `quantize`, `calib` or `ship`: those names are this package's stage
subpackages, which the import system sets as attributes here once anything imports them.
"""

from __future__ import annotations

__version__ = "0.1.0"

TYPE_CHECKING = False  # not typing's: importing typing would cost `import edgecompress` more than all of it

if TYPE_CHECKING:
    from edgecompress.api import (
        BuildResult, EngineResult, EngineRunner, QuantizeResult, build, bundle, export_onnx, make_calibration, quantize_int8,
        release, ship_bundle,
    )

__all__ = ["BuildResult", "EngineResult", "EngineRunner", "QuantizeResult", "__version__", "build", "bundle", "export_onnx",
           "make_calibration", "quantize_int8", "release", "ship_bundle"]


def __getattr__(name: str) -> object:
    if name in __all__ and name != "__version__":
        from edgecompress import api

        return getattr(api, name)
    raise AttributeError(f"module 'edgecompress' has no attribute {name!r}")
