"""Fidelity: how close an engine's outputs are to fp32's, measured in the units of the model's task.

Top-1 agreement measures a classifier only. On a raw YOLO head it is the argmax over
thousands of anchor columns, on a probability map the argmax of one flattened image, on a
CTC recognizer the argmax of a flattened [T, C] grid: numbers near 0% that a budget on
them cannot judge. So each task gets a comparator that measures what the task delivers —
boxes after NMS, masks, decoded text, embeddings' nearest neighbours, values — picked per output
from its shape, values and name (`pick_task`) or set with `--task` (Polygraphy's comparators:
written once, applied to any pair of outputs). A `Budget` turns the user's limits, or a stated default per metric, into
bounds on those metrics; repair, the precision choice and the verdict ask the same Budget.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np

from edgecompress.core.config import TASK_CHOICES, TASKS  # noqa: F401 (re-exported: the options validate against them)
from edgecompress.core.errors import BudgetError, ConfigError


@dataclass(frozen=True)
class Metric:
    """A fidelity metric, which way is better, and the budget that holds when the user states none."""

    name: str
    higher_is_better: bool
    default_limit: float
    unit: str  # "%" (a fraction shown in percent), "pt" (top-1 points), "dB", or "" (a plain ratio)
    short: str  # the name in a narrow console column
    decimals: int = 3  # of a plain ratio: cosines need 4, as int8 moves them in the third decimal

    def format(self, value: float) -> str:
        if self.unit == "%":
            return f"{100 * value:.1f}%"
        if self.unit == "pt":
            return f"{value:.2f} pt"
        if self.unit == "dB":
            return f"{value:.1f} dB"
        return f"{value:.{self.decimals}f}"


TOP1_DROP = Metric("top-1 accuracy drop", False, 1.0, "pt", "Δtop-1")
TOP1_AGREEMENT = Metric("top-1 agreement", True, 0.99, "%", "agree")
DETECTION_F1 = Metric("detection F1", True, 0.90, "", "F1")
PIXEL_AGREEMENT = Metric("pixel agreement", True, 0.98, "%", "pixels")
MASK_IOU = Metric("mask IoU", True, 0.90, "", "mask IoU")
CHARACTER_ERROR_RATE = Metric("character error rate", False, 0.02, "", "CER")
STEP_AGREEMENT = Metric("step agreement", True, 0.98, "%", "steps")
SQNR = Metric("SQNR", True, 20.0, "dB", "SQNR")
NEIGHBOUR_AGREEMENT = Metric("neighbour agreement", True, 0.95, "%", "neighbours")
EMBEDDING_COSINE = Metric("embedding cosine", True, 0.99, "", "cosine", decimals=4)
WORST_COSINE = Metric("worst cosine", True, 0.97, "", "worst cos", decimals=4)
METRICS = {m.name: m for m in (TOP1_DROP, TOP1_AGREEMENT, DETECTION_F1, PIXEL_AGREEMENT, MASK_IOU,
                               CHARACTER_ERROR_RATE, STEP_AGREEMENT, SQNR, NEIGHBOUR_AGREEMENT, EMBEDDING_COSINE,
                               WORST_COSINE)}
# Bounds that hold beside the task metric's own default when the user states no limit. Embeddings: on a small
# evaluation set every sample can keep its nearest neighbour while all of them drift, or one sample can be ruined
# without moving any neighbour; the mean and worst cosine bound both.
DEFAULT_BOUNDS_BESIDE_METRIC: dict[str, tuple[Metric, ...]] = {"embed": (EMBEDDING_COSINE, WORST_COSINE)}


def format_metric(name: str, value: float) -> str:
    metric = METRICS.get(name)
    return metric.format(value) if metric else f"{value:.4g}"


@dataclass(frozen=True)
class FidelityResult:
    """One output's comparison: the task metric, and other figures (`details`) for the report."""

    metric: str
    value: float
    higher_is_better: bool
    details: dict[str, float] = field(default_factory=dict)

    @property
    def values(self) -> dict[str, float]:
        return {**self.details, self.metric: self.value}

    @property
    def score(self) -> float:
        """Higher is better, whatever the metric's direction (for ranking repair tries)."""
        return self.value if self.higher_is_better else -self.value

    def describe(self) -> str:
        return f"{self.metric} {format_metric(self.metric, self.value)}"


def _result(metric: Metric, value: float, **details: float) -> FidelityResult:
    return FidelityResult(metric.name, float(value), metric.higher_is_better, {k: float(v) for k, v in details.items()})


class Comparator(Protocol):
    """Compares the engine's outputs of one model output with fp32's, over all samples (batch on axis 0)."""

    @property
    def task(self) -> str: ...  # read-only: comparators are frozen dataclasses

    def compare(self, reference: np.ndarray, engine: np.ndarray, labels: np.ndarray | None = None) -> FidelityResult: ...


def mean_cosine(reference: np.ndarray, engine: np.ndarray) -> float:
    return float(np.mean(np.sum(unit_rows(reference) * unit_rows(engine), axis=1)))


SQNR_OF_IDENTICAL_OUTPUTS_DB = 200.0  # reported instead of infinity, which JSON cannot hold


def sqnr_db(reference: np.ndarray, engine: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio: 10·log10(Σref² / Σ(ref − engine)²)."""
    ref = reference.astype(np.float64)
    noise = float(np.sum((ref - engine.astype(np.float64)) ** 2))
    signal = float(np.sum(ref**2))
    if noise == 0.0:
        return SQNR_OF_IDENTICAL_OUTPUTS_DB
    return min(SQNR_OF_IDENTICAL_OUTPUTS_DB, 10.0 * math.log10(max(signal, 1e-30) / noise))


@dataclass(frozen=True)
class ClassifyComparator:
    """[N, C] scores: top-1 agreement with fp32, or with labels the top-1 accuracy points lost."""

    task: str = "classify"

    def compare(self, reference: np.ndarray, engine: np.ndarray, labels: np.ndarray | None = None) -> FidelityResult:
        ref_top1 = reference.reshape(len(reference), -1).argmax(1)
        eng_top1 = engine.reshape(len(engine), -1).argmax(1)
        figures = {"cosine": mean_cosine(reference, engine), "top-1 agreement": float(np.mean(ref_top1 == eng_top1))}
        if labels is None:
            return _result(TOP1_AGREEMENT, figures.pop("top-1 agreement"), **figures)
        accuracy_fp32 = 100.0 * float(np.mean(ref_top1 == labels))
        accuracy_engine = 100.0 * float(np.mean(eng_top1 == labels))
        return _result(TOP1_DROP, accuracy_fp32 - accuracy_engine, **figures,
                       **{"top-1 accuracy fp32": accuracy_fp32, "top-1 accuracy engine": accuracy_engine})


@dataclass(frozen=True)
class RegressComparator:
    """Values (and embeddings given --task regress): SQNR (dB) of the engine's outputs against fp32's, and their cosine."""

    task: str = "regress"

    def compare(self, reference: np.ndarray, engine: np.ndarray, labels: np.ndarray | None = None) -> FidelityResult:
        return _result(SQNR, sqnr_db(reference, engine), cosine=mean_cosine(reference, engine))


def unit_rows(outputs: np.ndarray) -> np.ndarray:
    """[N, D] rows scaled to length 1 (trailing dims flattened); an all-zero row stays zero rather than NaN."""
    rows = outputs.reshape(len(outputs), -1).astype(np.float64)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.where(norms == 0, 1.0, norms)


NEIGHBOUR_TIE = 1e-6  # fp32 cosines this close are one distance: a duplicated sample's neighbours tie


def nearest_neighbour_hits(reference_rows: np.ndarray, engine_rows: np.ndarray, k: int,
                           block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Per sample of unit rows: whether the engine's nearest other sample is fp32's nearest, and whether fp32's
    nearest is among the engine's `k` nearest. An engine neighbour that fp32 finds exactly as near as its own (a
    duplicate sample) counts as the same. Rows go in blocks, so memory grows with N, not N²."""
    count = len(reference_rows)
    k = min(k, count - 1)
    nearest, within_k = np.ones(count, dtype=bool), np.ones(count, dtype=bool)
    if k < 1:  # one sample has no neighbour to lose
        return nearest, within_k
    for start in range(0, count, block):
        rows = np.arange(start, min(start + block, count))
        ref_similarity, eng_similarity = reference_rows[rows] @ reference_rows.T, engine_rows[rows] @ engine_rows.T
        ref_similarity[np.arange(len(rows)), rows] = eng_similarity[np.arange(len(rows)), rows] = -np.inf
        as_near = ref_similarity.max(1) - NEIGHBOUR_TIE
        engine_nearest = eng_similarity.argmax(1)
        engine_k_nearest = np.argpartition(-eng_similarity, k - 1, axis=1)[:, :k]
        nearest[rows] = ref_similarity[np.arange(len(rows)), engine_nearest] >= as_near
        within_k[rows] = np.take_along_axis(ref_similarity, engine_k_nearest, 1).max(1) >= as_near
    return nearest, within_k


@dataclass(frozen=True)
class EmbedComparator:
    """[N, D] embeddings (trailing dims flattened): what retrieval and clustering use them for, which sample is
    nearest to which (cosine similarity among the evaluation samples), kept by the engine; and how far each
    engine embedding turned from fp32's (mean and worst cosine). Top-1 of a 384-d embedding's largest coordinate
    agrees on a few percent of samples whatever the engine's quality; SQNR cannot say whether neighbours survive.

    With fewer than 3 samples no neighbour can change (N = 2: each one's only neighbour is the other; N = 1: none),
    so neighbour agreement is 1.0 and the cosines carry the judgement.
    """

    recall_at: int = 5
    task: str = "embed"

    def compare(self, reference: np.ndarray, engine: np.ndarray, labels: np.ndarray | None = None) -> FidelityResult:
        ref_rows, eng_rows = unit_rows(reference), unit_rows(engine)
        both_zero = ~ref_rows.any(1) & ~eng_rows.any(1)  # an all-zero embedding, reproduced: not turned at all
        cosines = np.where(both_zero, 1.0, np.sum(ref_rows * eng_rows, axis=1))
        nearest, within_k = nearest_neighbour_hits(ref_rows, eng_rows, self.recall_at)
        return _result(NEIGHBOUR_AGREEMENT, np.mean(nearest), **{
            EMBEDDING_COSINE.name: np.mean(cosines), WORST_COSINE.name: np.min(cosines),
            f"recall@{self.recall_at}": np.mean(within_k)})


@dataclass(frozen=True)
class DenseMapComparator:
    """[N, C, H, W] maps: per-pixel argmax agreement (C > 1), or IoU of the thresholded map (C = 1).

    `threshold` None: 0.5 for a map of probabilities in [0, 1], else 0 (logits).
    """

    threshold: float | None = None
    task: str = "segment"

    def compare(self, reference: np.ndarray, engine: np.ndarray, labels: np.ndarray | None = None) -> FidelityResult:
        cosine = mean_cosine(reference, engine)
        if reference.shape[1] > 1:
            return _result(PIXEL_AGREEMENT, np.mean(reference.argmax(1) == engine.argmax(1)), cosine=cosine)
        threshold = self.threshold
        if threshold is None:
            threshold = 0.5 if reference.min() >= 0.0 and reference.max() <= 1.0 else 0.0
        ref_mask, eng_mask = reference > threshold, engine > threshold
        union = np.logical_or(ref_mask, eng_mask).sum()
        iou = 1.0 if union == 0 else np.logical_and(ref_mask, eng_mask).sum() / union
        return _result(MASK_IOU, iou, cosine=cosine, threshold=threshold, **{"pixel agreement": np.mean(ref_mask == eng_mask)})


def ctc_greedy_decode(scores: np.ndarray, blank: int) -> list[int]:
    """Best path of one [T, C] score grid: argmax per step, repeats merged, blanks dropped."""
    best = scores.argmax(-1)
    return [int(c) for i, c in enumerate(best) if c != blank and (i == 0 or c != best[i - 1])]


def edit_distance(reference: Sequence[int], hypothesis: Sequence[int]) -> int:
    """Levenshtein distance (insertions, deletions, substitutions)."""
    previous = list(range(len(hypothesis) + 1))
    for i, ref_item in enumerate(reference, 1):
        current = [i]
        for j, hyp_item in enumerate(hypothesis, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ref_item != hyp_item)))
        previous = current
    return previous[-1]


@dataclass(frozen=True)
class SequenceComparator:
    """[N, T, C] per-step scores: for CTC (`blank` set) the character error rate of the engine's greedy-decoded
    text against fp32's; else per-step argmax agreement. Both are reported."""

    blank: int | None = 0
    task: str = "sequence"

    def compare(self, reference: np.ndarray, engine: np.ndarray, labels: np.ndarray | None = None) -> FidelityResult:
        step_agreement = float(np.mean(reference.argmax(-1) == engine.argmax(-1)))
        if self.blank is None:
            return _result(STEP_AGREEMENT, step_agreement, cosine=mean_cosine(reference, engine))
        errors = characters = 0
        for ref_scores, eng_scores in zip(reference, engine):
            ref_text = ctc_greedy_decode(ref_scores, self.blank)
            errors += edit_distance(ref_text, ctc_greedy_decode(eng_scores, self.blank))
            characters += len(ref_text)
        rate = errors / characters if characters else float(errors > 0)
        return _result(CHARACTER_ERROR_RATE, rate, **{"step agreement": step_agreement, "reference characters": characters})


@dataclass(frozen=True)
class DetectionOptions:
    score_threshold: float = 0.25  # a box counts when its class score exceeds this
    nms_iou: float = 0.45  # NMS drops a box overlapping a better one of its class by more than this
    match_iou: float = 0.5  # an engine box matches an fp32 box of the same class at this IoU or more
    max_candidates: int = 3000  # best-scoring boxes kept before NMS, as detectors' own post-processing does


def _box_area(boxes: np.ndarray) -> np.ndarray:
    """Area of x1,y1,x2,y2 boxes (last axis); an inverted box has none."""
    return np.clip(boxes[..., 2] - boxes[..., 0], 0, None) * np.clip(boxes[..., 3] - boxes[..., 1], 0, None)


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one x1,y1,x2,y2 box with each of `boxes`."""
    width = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    height = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    intersection = width * height
    union = _box_area(box) + _box_area(boxes) - intersection
    return np.where(union > 0, intersection / np.where(union > 0, union, 1.0), 0.0)


@dataclass(frozen=True)
class Detections:
    boxes: np.ndarray  # [K, 4] x1, y1, x2, y2
    scores: np.ndarray  # [K]
    classes: np.ndarray  # [K] int


def non_max_suppression(found: Detections, iou_threshold: float) -> Detections:
    """Per class, keep a box unless a better-scoring box of its class overlaps it by more than `iou_threshold`."""
    order = np.argsort(-found.scores, kind="stable")
    keep: list[int] = []
    suppressed = np.zeros(len(order), dtype=bool)
    for rank, index in enumerate(order):
        if suppressed[rank]:
            continue
        keep.append(index)
        rest = order[rank + 1 :]
        overlap = box_iou(found.boxes[index], found.boxes[rest]) > iou_threshold
        suppressed[rank + 1 :] |= overlap & (found.classes[rest] == found.classes[index])
    return Detections(found.boxes[keep], found.scores[keep], found.classes[keep])


def decode_raw_head(head: np.ndarray, options: DetectionOptions) -> Detections:
    """One image of a YOLOv8-style head, [4 + C, A]: centre x, y, width, height, then C class scores per anchor."""
    scores_per_class = head[4:]
    classes, scores = scores_per_class.argmax(0), scores_per_class.max(0)
    keep = np.flatnonzero(scores > options.score_threshold)
    keep = keep[np.argsort(-scores[keep], kind="stable")[: options.max_candidates]]
    cx, cy, w, h = head[:4, keep]
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    return non_max_suppression(Detections(boxes, scores[keep], classes[keep]), options.nms_iou)


def read_post_nms(rows: np.ndarray, options: DetectionOptions) -> Detections:
    """One image of post-NMS detections, [K, 6]: x1, y1, x2, y2, score, class (padding rows score 0)."""
    keep = rows[:, 4] > options.score_threshold
    return Detections(rows[keep, :4], rows[keep, 4], rows[keep, 5].astype(np.int64))


def match_detections(reference: Detections, engine: Detections, match_iou: float) -> tuple[int, list[float]]:
    """Greedy matching, best engine box first: each fp32 box is matched at most once, same class, IoU ≥ match_iou."""
    matched = np.zeros(len(reference.boxes), dtype=bool)
    ious: list[float] = []
    for index in np.argsort(-engine.scores, kind="stable"):
        candidates = np.flatnonzero(~matched & (reference.classes == engine.classes[index]))
        if not len(candidates):
            continue
        overlap = box_iou(engine.boxes[index], reference.boxes[candidates])
        best = int(overlap.argmax())
        if overlap[best] >= match_iou:
            matched[candidates[best]] = True
            ious.append(float(overlap[best]))
    return int(matched.sum()), ious


def mean_average_precision(found: Sequence[Detections], truths: Sequence[np.ndarray] | np.ndarray, match_iou: float) -> float:
    """mAP at `match_iou` against labelled boxes, [K, 5] rows of class, x1, y1, x2, y2 per image (class < 0: padding).

    Per class, detections of all images ranked by score, each true box matched at most once; AP is the area under
    the precision envelope over recall (all points, as VOC since 2010 and COCO compute it); mean over labelled classes.
    """
    classes = sorted({int(c) for truth in truths for c in truth[:, 0] if c >= 0})
    precisions = []
    for cls in classes:
        ranked: list[tuple[float, bool]] = []
        true_boxes = 0
        for image, truth in zip(found, truths):
            boxes = truth[truth[:, 0] == cls, 1:5]
            true_boxes += len(boxes)
            used = np.zeros(len(boxes), dtype=bool)
            mine = np.flatnonzero(image.classes == cls)
            for index in mine[np.argsort(-image.scores[mine], kind="stable")]:
                overlap = np.where(used, -1.0, box_iou(image.boxes[index], boxes)) if len(boxes) else np.array([-1.0])
                hit = bool(overlap.max() >= match_iou)
                if hit:
                    used[int(overlap.argmax())] = True
                ranked.append((float(image.scores[index]), hit))
        hits = np.array([hit for _, hit in sorted(ranked, key=lambda r: -r[0])], dtype=np.float64)
        if not len(hits):
            precisions.append(0.0)
            continue
        recall = np.concatenate([[0.0], np.cumsum(hits) / true_boxes, [1.0]])
        precision = np.concatenate([[0.0], np.cumsum(hits) / np.arange(1, len(hits) + 1), [0.0]])
        envelope = np.maximum.accumulate(precision[::-1])[::-1]
        precisions.append(float(np.sum((recall[1:] - recall[:-1]) * envelope[1:])))
    return float(np.mean(precisions)) if precisions else 0.0


@dataclass(frozen=True)
class DetectionComparator:
    """Detections: F1 of the engine's boxes after NMS against fp32's boxes after NMS (same class, IoU ≥ match_iou).

    `layout`: "channels_first" ([N, 4+C, A], YOLOv8's raw head), "channels_last" ([N, A, 4+C]) or "post_nms"
    ([N, K, 6]). Logit cosine is kept in the details, but it is not the metric: box coordinates in pixels
    dominate it, so a cosine of 0.999 can hide an F1 of 0.4. With labelled boxes ([N, K, 5]: class, x1, y1, x2, y2),
    the details add mAP@match_iou of fp32 and of the engine.
    """

    layout: str = "channels_first"
    options: DetectionOptions = DetectionOptions()
    task: str = "detect"

    def detections(self, image: np.ndarray) -> Detections:
        if self.layout == "post_nms":
            return read_post_nms(image, self.options)
        return decode_raw_head(image if self.layout == "channels_first" else image.T, self.options)

    def compare(self, reference: np.ndarray, engine: np.ndarray, labels: np.ndarray | None = None) -> FidelityResult:
        true_positives = reference_boxes = engine_boxes = 0
        ious: list[float] = []
        ref_all, eng_all = [self.detections(image) for image in reference], [self.detections(image) for image in engine]
        for ref_found, eng_found in zip(ref_all, eng_all):
            matched, matched_ious = match_detections(ref_found, eng_found, self.options.match_iou)
            true_positives, ious = true_positives + matched, ious + matched_ious
            reference_boxes, engine_boxes = reference_boxes + len(ref_found.boxes), engine_boxes + len(eng_found.boxes)
        total = reference_boxes + engine_boxes
        f1 = 1.0 if total == 0 else 2 * true_positives / total
        with_labels = {}
        if labels is not None:
            key = f"mAP@{self.options.match_iou:g}"
            with_labels = {f"{key} fp32": mean_average_precision(ref_all, labels, self.options.match_iou),
                           f"{key} engine": mean_average_precision(eng_all, labels, self.options.match_iou)}
        return _result(
            DETECTION_F1, f1, precision=true_positives / engine_boxes if engine_boxes else 1.0,
            recall=true_positives / reference_boxes if reference_boxes else 1.0,
            **{"reference boxes": reference_boxes, "engine boxes": engine_boxes,
               "matched mean IoU": float(np.mean(ious)) if ious else 0.0, "cosine": mean_cosine(reference, engine), **with_labels},
        )


@dataclass(frozen=True)
class TaskPick:
    task: str
    why: str
    layout: str | None = None  # detection layout, see DetectionComparator


def _looks_post_nms(output: np.ndarray) -> bool:
    rows = output.reshape(-1, 6)
    real = rows[rows[:, 4] > 0]
    return bool(
        len(real) and real[:, 4].max() <= 1.0 and np.allclose(real[:, 5], np.round(real[:, 5])) and real[:, 5].min() >= 0
        and np.all(real[:, 2] >= real[:, 0]) and np.all(real[:, 3] >= real[:, 1])
    )


def _raw_head_layout(output: np.ndarray) -> str | None:
    """"channels_first"/"channels_last" when [N, 4+C, A] or [N, A, 4+C] looks like a YOLO head: many more anchors
    than channels, box rows with pixel coordinates, class rows of sigmoid scores in [0, 1]."""
    channels_axis = 1 if output.shape[1] < output.shape[2] else 2
    channels, anchors = output.shape[channels_axis], output.shape[3 - channels_axis]
    if channels < 5 or anchors < 4 * channels:
        return None
    head = np.moveaxis(output, channels_axis, 1)
    boxes, scores = head[:, :4], head[:, 4:]
    if boxes.max() > 1.5 and scores.min() >= 0.0 and scores.max() <= 1.0:
        return "channels_first" if channels_axis == 1 else "channels_last"
    return None


# parts of the output names that sentence and image encoders give pooled hidden states (sentence-transformers'
# "sentence_embedding", Hugging Face's "pooler_output", "image_embeds"...); "embedding" covers "embeddings" too
EMBEDDING_NAME_PARTS = ("embedding", "embeds", "pooler_output", "pooled")
MIN_UNIT_ROW_WIDTH = 8  # narrower unit rows are as likely a 2- or 4-way classifier's normalised scores
UNIT_ROW_TOLERANCE = 1e-3


def _looks_like_probabilities(output: np.ndarray) -> bool:
    """Softmax rows: non-negative, summing to 1 (a confident one is also nearly unit-length)."""
    return bool(output.min() >= 0.0 and np.allclose(output.sum(1), 1.0, atol=UNIT_ROW_TOLERANCE))


def _embedding_why(output: np.ndarray, name: str | None, shape: str) -> str | None:
    """Why an [N, D] output is an embedding, or None: its name says it is pooled hidden states, or every row has
    unit length (an L2-normalised embedding, as sentence encoders and CLIP-style image towers output)."""
    if name is not None and any(part in name.lower() for part in EMBEDDING_NAME_PARTS):
        return f"{shape}: output '{name}' names pooled hidden states (an embedding)"
    if output.shape[1] < MIN_UNIT_ROW_WIDTH or not output.size or _looks_like_probabilities(output):
        return None
    norms = np.linalg.norm(output.astype(np.float64), axis=1)
    if not np.all(np.abs(norms - 1) <= UNIT_ROW_TOLERANCE):
        return None
    return f"{shape}: unit-length rows (an L2-normalised embedding)"


def pick_task(reference: np.ndarray, batch_axis: int | None = 0, name: str | None = None) -> TaskPick:
    """The task an output serves, from the fp32 outputs' shape (batch on axis 0) and values, and its name where
    shape and values leave two readings ([N, D]: class scores or an embedding).

    An output that carries its batch on another axis (a recurrent state [layers, N, hidden], fed back as the
    next call's input) fits none of the batch-first layouts: its values are compared.
    """
    if batch_axis is not None and 0 < batch_axis < reference.ndim:
        dims = [str(d) for d in reference.shape]
        dims[batch_axis] = "N"
        return TaskPick("regress", f"[{', '.join(dims)}]: batch on axis {batch_axis} (a recurrent state): values")
    shape = "[" + ", ".join(["N", *map(str, reference.shape[1:])]) + "]"
    if reference.ndim == 2 and reference.shape[1] > 1:
        embedding = _embedding_why(reference, name, shape)
        return TaskPick("embed", embedding) if embedding else TaskPick("classify", f"{shape}: one score per class")
    if reference.ndim == 4:
        return TaskPick("segment", f"{shape}: a dense [N, C, H, W] map")
    if reference.ndim == 3:
        if reference.shape[2] == 6 and _looks_post_nms(reference):
            return TaskPick("detect", f"{shape}: boxes after NMS (x1, y1, x2, y2, score, class)", "post_nms")
        layout = _raw_head_layout(reference)
        if layout is not None:
            return TaskPick("detect", f"{shape}: a raw detection head (box rows in pixels, class scores in [0, 1])", layout)
        return TaskPick("sequence", f"{shape}: per-step scores [N, T, C]")
    return TaskPick("regress", f"{shape}: values")


@dataclass(frozen=True)
class FidelityOptions:
    """How outputs are compared: the task per output (None = every output) and each task's settings."""

    tasks: tuple[tuple[str | None, str], ...] = ()
    detection: DetectionOptions = DetectionOptions()
    ctc_blank: int | None = 0  # None: a sequence output is compared step by step, not decoded as CTC
    mask_threshold: float | None = None

    def task_for(self, output: str) -> str:
        named = dict(self.tasks)
        return named.get(output, named.get(None, "auto"))


@dataclass(frozen=True)
class OutputComparison:
    output: str
    pick: TaskPick
    comparator: Comparator


def comparator_for(pick: TaskPick, reference: np.ndarray, options: FidelityOptions) -> Comparator:
    if pick.task == "classify":
        return ClassifyComparator()
    if pick.task == "detect":
        layout = pick.layout or ("post_nms" if reference.shape[-1] == 6 else
                                 "channels_first" if reference.shape[1] < reference.shape[2] else "channels_last")
        return DetectionComparator(layout, options.detection)
    if pick.task == "segment":
        return DenseMapComparator(options.mask_threshold)
    if pick.task == "sequence":
        return SequenceComparator(options.ctc_blank)
    if pick.task == "embed":
        return EmbedComparator()
    return RegressComparator()


TASK_SHAPES = {"classify": (2,), "detect": (3,), "segment": (4,), "sequence": (3,), "embed": (2,)}


def plan_fidelity(output_names: Sequence[str], reference_outputs: Sequence[np.ndarray], options: FidelityOptions,
                  batch_axes: Sequence[int | None] | None = None) -> list[OutputComparison]:
    """One comparator per output: the task given for it, or the one its fp32 outputs (and batch axes) show."""
    known = set(output_names)
    for name, _ in options.tasks:
        if name is not None and name not in known:
            raise ConfigError(f"--task names output '{name}', but the model's outputs are {', '.join(output_names)}",
                              "use OUTPUT=TASK with one of those names, or a plain TASK for every output")
    plan = []
    axes = list(batch_axes) if batch_axes is not None else [0] * len(reference_outputs)
    for name, reference, batch_axis in zip(output_names, reference_outputs, axes):
        wanted = options.task_for(name)
        if wanted == "auto":
            pick = pick_task(reference, batch_axis, name)
        else:
            if reference.ndim not in TASK_SHAPES.get(wanted, (reference.ndim,)):
                raise ConfigError(
                    f"--task {wanted} does not fit output '{name}' of shape {list(reference.shape)} "
                    f"(it needs {TASK_SHAPES[wanted][0]} dimensions)",
                    "name the output it applies to (--task OUTPUT=TASK) or use --task auto",
                )
            pick = TaskPick(wanted, f"--task {wanted}")
        plan.append(OutputComparison(name, pick, comparator_for(pick, reference, options)))
    return plan


@dataclass(frozen=True)
class OutputFidelity:
    """One output's task and its comparison with fp32."""

    output: str
    task: str
    why: str
    result: FidelityResult

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare_outputs_by_task(
    plan: Sequence[OutputComparison], reference: Sequence[np.ndarray], engine: Sequence[np.ndarray], labels: np.ndarray | None
) -> tuple[OutputFidelity, ...]:
    """Labels go to the first output they fit: class ids [N] to a classifier, boxes [N, K, 5] to a detector."""
    def fits(task: str) -> bool:
        return labels is not None and (
            (task == "classify" and labels.ndim == 1) or (task == "detect" and labels.ndim == 3 and labels.shape[-1] == 5)
        )

    labelled = next((c.output for c in plan if fits(c.pick.task)), None)
    return tuple(
        OutputFidelity(c.output, c.pick.task, c.pick.why, c.comparator.compare(ref, eng, labels if c.output == labelled else None))
        for c, ref, eng in zip(plan, reference, engine)
    )


@dataclass(frozen=True)
class Bound:
    """One limit on one metric, and where it came from (an option, or the stated default)."""

    metric: str
    limit: float
    higher_is_better: bool
    source: str

    def met(self, value: float) -> bool:
        return value >= self.limit - 1e-9 if self.higher_is_better else value <= self.limit + 1e-9

    def describe(self) -> str:
        return f"{self.metric} {'>=' if self.higher_is_better else '<='} {format_metric(self.metric, self.limit)} ({self.source})"


@dataclass(frozen=True)
class Judgement:
    fidelity: OutputFidelity
    bounds: tuple[Bound, ...]

    @property
    def met(self) -> bool:
        return all(bound.met(self.fidelity.result.values[bound.metric]) for bound in self.bounds)

    def describe_budget(self) -> str:
        return " and ".join(bound.describe() for bound in self.bounds)


class Evaluated(Protocol):
    """What the budget judges: an evaluation's per-output fidelity (edgecompress.evaluate.Evaluation)."""

    @property
    def fidelity(self) -> tuple[OutputFidelity, ...]: ...


class Labelled(Protocol):
    """What the budget checks before anything runs: whether evaluation data has labels (evaluate.EvalSet)."""

    @property
    def labels(self) -> np.ndarray | None: ...

    @property
    def description(self) -> str: ...


@dataclass(frozen=True)
class Budget:
    """The one budget of a build. Classifiers: top-1 points lost vs fp32 (needs labels) and/or the fraction of
    samples whose top-1 matches fp32. Any task: `limits`, bounds in the task metric's own units, per output
    (name) or for all (None). Where nothing is given, the metric's stated default holds, with the defaults of the
    figures some tasks are also bounded by (`DEFAULT_BOUNDS_BESIDE_METRIC`): never no budget."""

    max_accuracy_drop: float | None = None
    min_agreement: float | None = None
    limits: tuple[tuple[str | None, float], ...] = ()

    def __post_init__(self) -> None:
        if self.max_accuracy_drop is not None and not 0 <= self.max_accuracy_drop <= 100:
            raise BudgetError(
                f"max_accuracy_drop {self.max_accuracy_drop} is outside 0..100 top-1 points", "pass e.g. --max-accuracy-drop 1.0"
            )
        if self.min_agreement is not None and not 0 <= self.min_agreement <= 1:
            raise BudgetError(
                f"min_agreement {self.min_agreement} is outside 0..1 (a fraction of samples)", "pass e.g. --min-agreement 0.99"
            )

    @property
    def given(self) -> bool:
        """Whether the user stated any limit (else the defaults hold)."""
        return self.max_accuracy_drop is not None or self.min_agreement is not None or bool(self.limits)

    def check_measurable(self, eval_set: Labelled) -> None:
        if self.max_accuracy_drop is not None and eval_set.labels is None:
            raise BudgetError(
                f"--max-accuracy-drop needs labelled evaluation data, but {eval_set.description} has no labels",
                "pass --eval-data FILE.npz with labels under `y`, or use --min-agreement FRACTION instead",
            )

    def bounds(self, fidelity: OutputFidelity) -> tuple[Bound, ...]:
        result, found = fidelity.result, []
        if fidelity.task == "classify":
            if self.max_accuracy_drop is not None and TOP1_DROP.name in result.values:
                found.append(Bound(TOP1_DROP.name, self.max_accuracy_drop, False, "--max-accuracy-drop"))
            if self.min_agreement is not None:
                found.append(Bound(TOP1_AGREEMENT.name, self.min_agreement, True, "--min-agreement"))
        limits = dict(self.limits)
        limit = limits.get(fidelity.output, limits.get(None))
        if limit is not None:
            found.append(Bound(result.metric, limit, result.higher_is_better, "--fidelity-budget"))
        if not found:  # the task metric's bound first: the report states its limit
            defaults = (METRICS[result.metric], *DEFAULT_BOUNDS_BESIDE_METRIC.get(fidelity.task, ()))
            found += [Bound(m.name, m.default_limit, m.higher_is_better, f"default for {fidelity.task}") for m in defaults]
        return tuple(found)

    def judge(self, evaluation: Evaluated) -> list[Judgement]:
        judgements = [Judgement(item, self.bounds(item)) for item in evaluation.fidelity]
        if (self.max_accuracy_drop is not None or self.min_agreement is not None) and not any(
            j.fidelity.task == "classify" for j in judgements
        ):
            tasks = ", ".join(sorted({j.fidelity.task for j in judgements}))
            raise BudgetError(
                f"--max-accuracy-drop and --min-agreement bound classifiers, but this model's outputs are: {tasks}",
                "state the budget in the task's metric with --fidelity-budget VALUE (or leave the stated default)",
            )
        return judgements

    def met(self, evaluation: Evaluated) -> bool:
        return all(judgement.met for judgement in self.judge(evaluation))

    def shortfall(self, evaluation: Evaluated) -> float:
        """How far the evaluation is from the budget, in the units of the metric that misses most (0 when met):
        what a search compares to see whether its steps close the gap."""
        return max((max(0.0, bound.limit - value if bound.higher_is_better else value - bound.limit)
                    for judgement in self.judge(evaluation) for bound in judgement.bounds
                    for value in [judgement.fidelity.result.values[bound.metric]]), default=0.0)

    def headline(self, evaluation: Evaluated) -> Judgement:
        """The output a one-line verdict names: the first that misses its budget, else the first."""
        judgements = self.judge(evaluation)
        return next((j for j in judgements if not j.met), judgements[0])

    def describe(self, evaluation: Evaluated | None = None) -> str:
        if evaluation is not None and evaluation.fidelity:
            judgements = self.judge(evaluation)
            named = len(judgements) > 1
            return "; ".join(f"{j.fidelity.output}: {j.describe_budget()}" if named else j.describe_budget() for j in judgements)
        parts = []
        if self.max_accuracy_drop is not None:
            parts.append(f"top-1 drop <= {self.max_accuracy_drop:g} pt")
        if self.min_agreement is not None:
            parts.append(f"agreement >= {self.min_agreement:.1%}")
        parts += [f"{name + ': ' if name else ''}task metric bound {value:g}" for name, value in self.limits]
        return " and ".join(parts) or "the stated default of each task's metric"


def fidelity_report(budget: Budget, evaluation: Evaluated, validated_on: str) -> dict[str, Any]:
    """report.json's `fidelity`: the headline output's task, metric, value and budget, and every output's figures."""
    judgements = budget.judge(evaluation)
    headline = budget.headline(evaluation)
    result = headline.fidelity.result
    # the task metric's limit is stated where its bound speaks for the verdict; where another figure decides (an
    # embedding's worst cosine, top-1 agreement beside points lost) a limit met beside "over budget" would mislead
    own = next((bound for bound in headline.bounds if bound.metric == result.metric), None)
    stated = own if own is not None and own.met(result.value) == headline.met else None
    return {
        "task": headline.fidelity.task,
        "output": headline.fidelity.output,
        "metric": result.metric,
        "value": result.value,
        "higher_is_better": result.higher_is_better,
        "budget": headline.describe_budget(),
        "limit": stated.limit if stated else None,
        "limit_source": (stated or headline.bounds[0]).source,
        "met": all(j.met for j in judgements),
        "validated_on": validated_on,
        "outputs": [
            {**j.fidelity.to_dict(), "budget": j.describe_budget(), "met": j.met} for j in judgements
        ],
    }


def parse_per_output(items: Sequence[str], option: str) -> tuple[tuple[str | None, str], ...]:
    """`VALUE` (every output) or `OUTPUT=VALUE` (one output) per item."""
    parsed = []
    for item in items:
        name, _, value = item.rpartition("=")
        if not value:
            raise ConfigError(f"{option} '{item}' has no value", f"use {option} VALUE or {option} OUTPUT=VALUE")
        parsed.append((name or None, value))
    return tuple(parsed)
