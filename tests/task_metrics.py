"""Task metrics of int8 against fp32 for the model corpus: edgecompress's own comparators (measure/fidelity.py).

One implementation: the corpus tests and benchmarks/model_corpus.py judge with the same code the build's budget
uses, so a floor here and a budget there mean the same number. The comparators themselves are checked against
hand-computed values in tests/test_fidelity.py; `cosine` and `max_abs_difference` stay here because the
comparators report other figures (per-sample mean cosine, SQNR).
"""

from __future__ import annotations

import numpy as np

from edgecompress.measure.fidelity import ClassifyComparator, DenseMapComparator, DetectionComparator, SequenceComparator

# PaddleOCR's text-pixel threshold: the detector's map is binarized at 0.3 before its boxes are traced
TEXT_PIXEL_THRESHOLD = 0.3


def top1_agreement(reference: np.ndarray, other: np.ndarray) -> float:
    """Fraction of samples whose arg-max class is the same."""
    return ClassifyComparator().compare(reference, other).value


def cosine(reference: np.ndarray, other: np.ndarray) -> float:
    """Cosine of all outputs taken as one vector (the comparators report the per-sample mean instead)."""
    left, right = np.ravel(reference).astype(np.float64), np.ravel(other).astype(np.float64)
    return float(np.dot(left, right) / (np.linalg.norm(left) * np.linalg.norm(right)))


def map_iou(reference: np.ndarray, other: np.ndarray) -> float:
    """IoU of the two [N, 1, H, W] maps binarized at the text-pixel threshold, over all samples."""
    return DenseMapComparator(threshold=TEXT_PIXEL_THRESHOLD).compare(reference, other).value


def character_error_rate(reference: np.ndarray, other: np.ndarray) -> float:
    """Edits to turn the other model's greedy-decoded CTC text into fp32's, per fp32 character (blank = 0)."""
    return SequenceComparator(blank=0).compare(reference, other).value


def detection_f1(reference: np.ndarray, other: np.ndarray) -> float:
    """F1 of the other model's detections after NMS against fp32's, from YOLOv8 raw heads [N, 4+C, A]."""
    return DetectionComparator().compare(reference, other).value


def detection_count(raw: np.ndarray) -> int:
    """Boxes left after NMS in YOLOv8 raw heads [N, 4+C, A] (to check an F1 has something to count)."""
    return int(DetectionComparator().compare(raw, raw).details["reference boxes"])


def max_abs_difference(reference: np.ndarray, other: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(reference, np.float64) - np.asarray(other, np.float64))))
