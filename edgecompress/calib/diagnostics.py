"""Warnings about a calibration set that would quietly make int8 ranges worse.

None of these stop a build: a small or odd set still calibrates, just less well. They
are printed when the set is made and stored in its manifest, so a bad int8 accuracy can
be traced back to "the set was 8 near-identical images" without re-running anything.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

MIN_RECOMMENDED_COUNT = 64  # below this, top-1 after int8 starts to vary with the draw (benchmarks/calibration.py)
CONSTANT_STD = 1e-6
NEAR_DUPLICATE_CORRELATION = 0.995
FEATURES_COMPARED = 4096
BN_MEAN_SHIFT_LIMIT = 1.0  # in running-std units, median over channels
BN_VAR_RATIO_LIMIT = 4.0  # batch/running variance, either direction, median over channels


def diagnose(arrays: Mapping[str, np.ndarray], model=None) -> list[str]:
    """Every warning for this set; pass the PyTorch model to compare with its first BatchNorm."""
    arrays = {name: array for name, array in arrays.items() if np.ndim(array)}  # a 0-d input is one value for all samples
    findings = [*too_small(arrays)] if arrays else []
    for name, array in arrays.items():
        if not np.issubdtype(np.asarray(array).dtype, np.floating):
            continue  # token ids and masks are not quantized: an all-ones mask or a repeated prompt costs no range
        findings += [f"input '{name}': {text}" for text in constant_samples(array) + near_duplicates(array)]
    if model is not None:
        findings += batchnorm_mismatch(model, arrays)
    return findings


def too_small(arrays: Mapping[str, np.ndarray]) -> list[str]:
    count = len(next(iter(arrays.values())))
    if count >= MIN_RECOMMENDED_COUNT:
        return []
    return [f"only {count} samples; int8 ranges from fewer than {MIN_RECOMMENDED_COUNT} are noisy — use --count 128+"]


def constant_samples(array: np.ndarray) -> list[str]:
    flat = array.reshape(len(array), -1).astype(np.float64)
    constant = np.flatnonzero(flat.std(axis=1) < CONSTANT_STD)
    if not len(constant):
        return []
    return [f"{len(constant)} constant samples (every value equal), e.g. index {int(constant[0])}: blank or broken images?"]


def near_duplicates(array: np.ndarray, seed: int = 0, limit: int = 1024) -> list[str]:
    """Pairs whose pixels correlate above the limit, compared on a fixed random subset of values.

    Only the first `limit` samples are compared: the cost grows with the square of the count.
    """
    flat = array[:limit].reshape(min(len(array), limit), -1).astype(np.float64)
    if flat.shape[1] > FEATURES_COMPARED:
        columns = np.random.default_rng(seed).choice(flat.shape[1], FEATURES_COMPARED, replace=False)
        flat = flat[:, np.sort(columns)]
    centred = flat - flat.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(centred, axis=1)
    usable = norms > CONSTANT_STD
    unit = centred[usable] / norms[usable, None]
    correlation = np.triu(unit @ unit.T, k=1)
    pairs = np.argwhere(correlation > NEAR_DUPLICATE_CORRELATION)
    if not len(pairs):
        return []
    original = np.flatnonzero(usable)
    first, second = original[pairs[0]]
    return [
        f"{len(pairs)} near-duplicate pairs (correlation > {NEAR_DUPLICATE_CORRELATION}), "
        f"e.g. indices {int(first)} and {int(second)}: they add no new ranges"
    ]


def batchnorm_mismatch(model, arrays: Mapping[str, np.ndarray], limit: int = 256) -> list[str]:
    """Compare what the first BatchNorm sees on this set with what it saw in training.

    A shift of more than a running standard deviation usually means the preprocessing
    differs from training (wrong mean/std, 0..255 instead of 0..1, BGR vs RGB).
    """
    import torch

    from edgecompress.calib.bn_stats import record_batchnorm_inputs

    from edgecompress.core.errors import CalibrationError

    feeds = [torch.from_numpy(np.ascontiguousarray(a[:limit])) for a in arrays.values()]
    model.eval()
    with torch.no_grad(), record_batchnorm_inputs(model) as records:
        try:
            model(*feeds)
        except RuntimeError as exc:
            shapes = [list(f.shape[1:]) for f in feeds]
            raise CalibrationError(
                f"the set's samples (shape {shapes}) do not fit the model: {str(exc).splitlines()[0]}",
                "regenerate it with the model's input size and channels (--size, --color, --layout)",
            ) from exc
    if not records:
        return []
    first = records[0]
    running_std = first.running_var.clamp_min(1e-12).sqrt()
    shift = float(((first.batch_mean - first.running_mean).abs() / running_std).median())
    ratio = float((first.batch_var.clamp_min(1e-12) / first.running_var.clamp_min(1e-12)).log().abs().median().exp())
    if shift <= BN_MEAN_SHIFT_LIMIT and ratio <= BN_VAR_RATIO_LIMIT:
        return []
    return [
        f"first BatchNorm '{first.name}' sees statistics unlike training (mean shift {shift:.2f} running std, "
        f"variance off by {ratio:.1f}x): is the preprocessing (mean/std, scale, colour order) the training one?"
    ]
