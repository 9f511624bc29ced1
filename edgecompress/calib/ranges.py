"""Entropy (KL-divergence) activation ranges, which ONNX Runtime's `quantize_static` cannot compute.

`quantize_static` builds its entropy calibrator with 128 histogram bins and 128 quantized
bins and forwards no option to change them (its extra_options pass on only symmetric,
moving-average, max-outputs and percentile). With equal counts the KL search has exactly
one candidate — the full observed range — so `entropy` silently equals `minmax`
(see onnxruntime PR #10261). Here the calibrator gets a real histogram, and its ranges go
back to `quantize_static` as `TensorQuantOverrides` (rmin/rmax per activation tensor).
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np

ENTROPY_BINS = 2048  # histogram resolution (TensorRT's entropy calibrator uses 2048 too)
ENTROPY_QUANTIZED_BINS = 256  # the histogram spans [-T, T]: 128 levels for each sign, as in 8 bits


def entropy_overrides(prepared_model: Path, reader, workdir: Path) -> dict[str, list[dict[str, float]]]:
    """`TensorQuantOverrides` holding each activation's KL-optimal [rmin, rmax] on the reader's data."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    calibrator = create_calibrator(
        Path(prepared_model),
        augmented_model_path=str(Path(workdir) / "entropy-augmented.onnx"),
        calibrate_method=CalibrationMethod.Entropy,
        extra_options={"num_bins": ENTROPY_BINS, "num_quantized_bins": ENTROPY_QUANTIZED_BINS},
    )
    with contextlib.redirect_stdout(io.StringIO()):  # the calibrator prints its progress
        calibrator.collect_data(reader)
        ranges = calibrator.compute_data()
    overrides = {}
    for name in ranges:
        low, high = ranges[name].range_value
        overrides[name] = [{"rmin": np.float32(low), "rmax": np.float32(high)}]  # ORT needs numpy scalars
    return overrides
