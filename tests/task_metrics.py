"""Task metrics of int8 against fp32 for the model corpus: one small function per task.

Written here, outside edgecompress, so the lead can swap them for the fidelity comparators
(edgecompress's `--task` seam) without touching the tests' floors.
"""

from __future__ import annotations

import numpy as np


def top1_agreement(reference: np.ndarray, other: np.ndarray) -> float:
    """Fraction of samples whose arg-max class is the same."""
    return float(np.mean(np.argmax(reference, axis=-1) == np.argmax(other, axis=-1)))


def cosine(reference: np.ndarray, other: np.ndarray) -> float:
    left, right = np.ravel(reference).astype(np.float64), np.ravel(other).astype(np.float64)
    return float(np.dot(left, right) / (np.linalg.norm(left) * np.linalg.norm(right)))


def map_iou(reference: np.ndarray, other: np.ndarray, threshold: float = 0.3) -> float:
    """IoU of the two maps binarized at `threshold` (PaddleOCR's text-pixel threshold), over all samples."""
    left, right = reference > threshold, other > threshold
    union = np.logical_or(left, right).sum()
    return float(np.logical_and(left, right).sum() / union) if union else 1.0


def ctc_greedy_decode(probabilities: np.ndarray, blank: int = 0) -> list[list[int]]:
    """Best path per sample: arg-max per step, repeats merged, blanks dropped."""
    decoded = []
    for path in np.argmax(probabilities, axis=-1):
        merged = [int(token) for i, token in enumerate(path) if token != blank and (i == 0 or token != path[i - 1])]
        decoded.append(merged)
    return decoded


def _edit_distance(left: list[int], right: list[int]) -> int:
    row = list(range(len(right) + 1))
    for i, a in enumerate(left, 1):
        previous, row[0] = row[0], i
        for j, b in enumerate(right, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (a != b))
    return row[-1]


def character_error_rate(reference: np.ndarray, other: np.ndarray) -> float:
    """Edits to turn int8's decoded text into fp32's, per fp32 character (CTC, blank = 0)."""
    expected, got = ctc_greedy_decode(reference), ctc_greedy_decode(other)
    return sum(_edit_distance(e, g) for e, g in zip(expected, got)) / max(1, sum(len(e) for e in expected))


def yolo_detections(raw: np.ndarray, confidence: float = 0.25, iou: float = 0.45) -> list[np.ndarray]:
    """YOLOv8 raw head [N, 4+C, A] (cx, cy, w, h, class scores) → per image [K, 6] x1 y1 x2 y2 score class after NMS."""
    results = []
    for head in raw:
        boxes_cxcywh, scores = head[:4].T, head[4:].T
        classes, best = scores.argmax(axis=1), scores.max(axis=1)
        keep = best >= confidence
        boxes = np.concatenate([boxes_cxcywh[keep, :2] - boxes_cxcywh[keep, 2:] / 2, boxes_cxcywh[keep, :2] + boxes_cxcywh[keep, 2:] / 2], axis=1)
        candidates = np.concatenate([boxes, best[keep, None], classes[keep, None]], axis=1)
        results.append(_nms(candidates[np.argsort(-candidates[:, 4])], iou))
    return results


def _box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    top_left = np.maximum(box[:2], boxes[:, :2])
    bottom_right = np.minimum(box[2:4], boxes[:, 2:4])
    inter = np.prod(np.clip(bottom_right - top_left, 0, None), axis=1)
    area = lambda b: np.prod(b[..., 2:4] - b[..., :2], axis=-1)  # noqa: E731
    return inter / np.maximum(area(box) + area(boxes) - inter, 1e-9)


def _nms(sorted_boxes: np.ndarray, iou: float) -> np.ndarray:
    kept = []
    for box in sorted_boxes:
        if all(box[5] != k[5] or _box_iou(box, k[None])[0] < iou for k in kept):
            kept.append(box)
    return np.array(kept).reshape(-1, 6)


def detection_f1(reference: list[np.ndarray], other: list[np.ndarray], iou: float = 0.5) -> float:
    """F1 of int8 detections against fp32's (same class, IoU ≥ `iou`, greedy one-to-one by score)."""
    matched = expected = found = 0
    for truth, boxes in zip(reference, other):
        expected, found = expected + len(truth), found + len(boxes)
        free = np.ones(len(truth), bool)
        for box in boxes:
            if not free.any():
                break
            overlaps = np.where(free & (truth[:, 5] == box[5]), _box_iou(box, truth) if len(truth) else 0.0, 0.0)
            if len(truth) and overlaps.max() >= iou:
                free[overlaps.argmax()] = False
                matched += 1
    if expected == found == 0:
        return 1.0
    return 2 * matched / (expected + found)


def max_abs_difference(reference: np.ndarray, other: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(reference, np.float64) - np.asarray(other, np.float64))))
