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


def kl_threshold(histogram: tuple, num_quantized_bins: int = ENTROPY_QUANTIZED_BINS) -> tuple[np.ndarray, np.ndarray]:
    """The [low, high] of the slice of `histogram` whose int8 rendering loses the least information (KL divergence).

    The same search, step for step and value for value, as onnxruntime's
    `HistogramCalibrater.get_entropy_threshold` (TensorRT's algorithm); that one loops in Python over every
    bin for each of ~900 candidate slices and took minutes per model on 2048 bins (11 minutes for a CTC text
    recognizer), this one does each slice in a few array operations.
    """
    hist, edges, min_value, max_value = histogram[0], histogram[1], histogram[2], histogram[3]
    num_bins, zero_bin, half = hist.size, hist.size // 2, num_quantized_bins // 2
    cumulative = np.concatenate([[0], np.cumsum(hist)])
    divergences = np.empty(zero_bin - half + 1)
    for step, i in enumerate(range(half, zero_bin + 1)):
        start, end = zero_bin - i, min(zero_bin + i + 1, num_bins)
        sliced = hist[start:end]
        p = sliced.astype(np.int64)  # the reference: the slice with the outliers folded into its end bins
        p[0] += cumulative[start]
        p[-1] += cumulative[-1] - cumulative[end]
        merged = sliced.size // num_quantized_bins
        covered = num_quantized_bins * merged
        quantized = sliced[:covered].reshape(num_quantized_bins, merged).sum(axis=1).astype(np.int64)
        quantized[-1] += sliced[covered:].sum()
        nonzero_counts = (p[:covered] != 0).reshape(num_quantized_bins, merged).sum(axis=1)
        spread = np.where(nonzero_counts > 0, quantized / np.maximum(nonzero_counts, 1), 0)
        q = np.zeros(p.size, dtype=np.int64)  # the candidate: quantized bins spread over the non-empty source bins
        q[:covered] = np.repeat(spread, merged).astype(np.int64)  # int64 as onnxruntime stores it (truncates)
        divergences[step] = _smoothed_kl(p, q)
    best = half + int(np.argmin(divergences))
    low, high = edges[zero_bin - best], edges[min(zero_bin + best + 1, num_bins)]
    return (low if low >= min_value else min_value), (high if high <= max_value else max_value)


def _smoothed_kl(p: np.ndarray, q: np.ndarray, eps: float = 0.0001) -> float:
    """KL(p || q) after onnxruntime's `smooth_distribution` of both (zeros get eps, taken off the others)."""
    smoothed = []
    for counts in (p, q):
        zeros = counts == 0
        if zeros.all():
            return float("inf")
        eps_nonzero = eps * float(zeros.sum()) / float(counts.size - zeros.sum())
        smoothed.append(counts.astype(np.float32) + np.where(zeros, np.float32(eps), np.float32(-eps_nonzero)))
    pk, qk = (d / d.sum() for d in smoothed)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where((pk > 0) & (qk > 0), pk * np.log(pk / qk), np.inf)
    return float(np.float32(terms.sum(dtype=np.float32)))


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
    overrides = {}
    for name, histogram in calibrator.collector.histogram_dict.items():
        low, high = kl_threshold(histogram)
        overrides[name] = [{"rmin": np.float32(low), "rmax": np.float32(high)}]  # ORT needs numpy scalars
    return overrides
