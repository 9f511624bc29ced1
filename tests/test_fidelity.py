"""Each task's comparator gives the known answer on hand-made outputs; auto-pick reads the task from each output;
the budget always holds, in the metric's own units, with a stated default."""

import numpy as np
import pytest

from edgecompress.core.errors import BudgetError, ConfigError
from edgecompress.measure.evaluate import Agreement, Evaluation
from edgecompress.measure.fidelity import (
    Budget,
    ClassifyComparator,
    DenseMapComparator,
    DetectionComparator,
    DetectionOptions,
    FidelityOptions,
    FidelityResult,
    OutputFidelity,
    RegressComparator,
    SequenceComparator,
    edit_distance,
    pick_task,
    plan_fidelity,
)


def test_classifier_fidelity_is_top1_agreement_without_labels_and_points_lost_with_them() -> None:
    reference = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.4, 0.6]])
    engine = np.array([[0.8, 0.2], [0.3, 0.7], [0.4, 0.6], [0.4, 0.6]])  # sample 2 flips
    assert ClassifyComparator().compare(reference, engine).value == pytest.approx(0.75)
    labelled = ClassifyComparator().compare(reference, engine, labels=np.array([0, 1, 0, 0]))
    assert labelled.metric == "top-1 accuracy drop" and labelled.value == pytest.approx(25.0)  # 75% -> 50%
    assert labelled.details["top-1 agreement"] == pytest.approx(0.75)


def raw_head(boxes_xywh: list[tuple[float, float, float, float]], classes: list[int], anchors: int = 40, num_classes: int = 2):
    """One image of a YOLOv8-style head [4 + C, A]: the given boxes on the first anchors, background elsewhere."""
    head = np.zeros((4 + num_classes, anchors), dtype=np.float32)
    head[:4] = 50.0  # background anchors: a box in pixels, scores 0
    for anchor, (box, cls) in enumerate(zip(boxes_xywh, classes)):
        head[:4, anchor] = box
        head[4 + cls, anchor] = 0.9
    return head


def detection_f1(reference_boxes, engine_boxes, reference_classes=(0, 1), engine_classes=(0, 1), layout="channels_first"):
    reference = raw_head(reference_boxes, list(reference_classes))[None]
    engine = raw_head(engine_boxes, list(engine_classes))[None]
    if layout == "channels_last":
        reference, engine = reference.transpose(0, 2, 1), engine.transpose(0, 2, 1)
    return DetectionComparator(layout, DetectionOptions()).compare(reference, engine)


@pytest.mark.parametrize("layout", ["channels_first", "channels_last"])
def test_detection_box_shifted_to_iou_one_third_is_missed_and_f1_is_one_half(layout) -> None:
    # a 10x10 box shifted by 5 pixels: intersection 50, union 150, IoU 1/3 < 0.5
    result = detection_f1([(20, 20, 10, 10), (60, 60, 10, 10)], [(25, 20, 10, 10), (60, 60, 10, 10)], layout=layout)
    assert result.metric == "detection F1" and result.value == pytest.approx(0.5)
    assert result.details["precision"] == pytest.approx(0.5) and result.details["recall"] == pytest.approx(0.5)


def test_detection_box_shifted_to_iou_0_6_still_matches() -> None:
    # shifted by 2.5 pixels: intersection 75, union 125, IoU 0.6 >= 0.5
    result = detection_f1([(20, 20, 10, 10), (60, 60, 10, 10)], [(22.5, 20, 10, 10), (60, 60, 10, 10)])
    assert result.value == pytest.approx(1.0)
    assert result.details["matched mean IoU"] == pytest.approx((0.6 + 1.0) / 2)


def test_detection_with_the_class_changed_is_not_a_match() -> None:
    assert detection_f1([(20, 20, 10, 10), (60, 60, 10, 10)], [(20, 20, 10, 10), (60, 60, 10, 10)], engine_classes=(1, 1)).value == (
        pytest.approx(0.5))


def test_overlapping_candidates_of_one_class_count_once_after_nms() -> None:
    # the engine's head proposes the same object twice (IoU 0.82 > NMS 0.45): NMS keeps one, so F1 stays 1
    result = detection_f1([(20, 20, 10, 10)], [(20, 20, 10, 10), (21, 20, 10, 10)], reference_classes=(0,), engine_classes=(0, 0))
    assert result.value == pytest.approx(1.0) and result.details["engine boxes"] == 1


def test_post_nms_detections_compare_the_same_way_and_ignore_padding_rows() -> None:
    reference = np.zeros((1, 5, 6), dtype=np.float32)
    reference[0, 0] = [15, 15, 25, 25, 0.9, 0]
    reference[0, 1] = [55, 55, 65, 65, 0.8, 1]
    engine = reference.copy()
    engine[0, 1, [0, 2]] += 5  # IoU 1/3
    result = DetectionComparator("post_nms", DetectionOptions()).compare(reference, engine)
    assert result.value == pytest.approx(0.5) and result.details["reference boxes"] == 2


def test_probability_map_fidelity_is_the_iou_of_the_thresholded_maps() -> None:
    reference = np.zeros((1, 1, 4, 4), dtype=np.float32)
    reference[0, 0, 0, :4] = 0.9  # 4 pixels
    engine = np.zeros_like(reference)
    engine[0, 0, 0, :2] = 0.8  # 2 of them...
    engine[0, 0, 3, :2] = 0.7  # ...and 2 others: IoU 2 / 6
    result = DenseMapComparator().compare(reference, engine)
    assert result.metric == "mask IoU" and result.value == pytest.approx(2 / 6)
    assert result.details["threshold"] == 0.5


def test_multi_class_map_fidelity_is_per_pixel_argmax_agreement() -> None:
    reference = np.zeros((1, 3, 2, 2), dtype=np.float32)
    reference[0, 0] = 1.0
    engine = reference.copy()
    engine[0, 2, 0, 0] = 2.0  # one pixel of four changes class
    result = DenseMapComparator().compare(reference, engine)
    assert result.metric == "pixel agreement" and result.value == pytest.approx(0.75)


def one_hot_steps(classes: list[int], num_classes: int = 5) -> np.ndarray:
    return np.eye(num_classes, dtype=np.float32)[classes]


def test_ctc_fidelity_is_the_character_error_rate_of_the_greedy_decoded_text() -> None:
    reference = one_hot_steps([1, 1, 0, 2, 0, 3, 3])[None]  # decodes to 1 2 3
    engine = one_hot_steps([1, 0, 0, 0, 0, 3, 0])[None]  # decodes to 1 3: one deletion
    result = SequenceComparator(blank=0).compare(reference, engine)
    assert result.metric == "character error rate" and result.value == pytest.approx(1 / 3)
    assert result.details["step agreement"] == pytest.approx(4 / 7)


def test_sequence_without_ctc_is_compared_step_by_step() -> None:
    reference = one_hot_steps([1, 1, 0, 2])[None]
    engine = one_hot_steps([1, 2, 0, 2])[None]
    result = SequenceComparator(blank=None).compare(reference, engine)
    assert result.metric == "step agreement" and result.value == pytest.approx(0.75)


def test_edit_distance_counts_insertions_deletions_and_substitutions() -> None:
    assert edit_distance(list("kitten"), list("sitting")) == 3
    assert edit_distance([], [1, 2]) == 2 and edit_distance([1, 2], [1, 2]) == 0


def test_regression_fidelity_is_sqnr_in_db() -> None:
    reference = np.ones((4, 25), dtype=np.float32)
    result = RegressComparator().compare(reference, reference + 0.1)  # noise power 1% of the signal's
    assert result.metric == "SQNR" and result.value == pytest.approx(20.0, abs=1e-4)
    assert result.details["cosine"] == pytest.approx(1.0)


def yolo_like_head(num_classes: int = 2, anchors: int = 84) -> np.ndarray:
    rng = np.random.default_rng(0)
    head = np.concatenate([rng.uniform(0, 64, (2, 4, anchors)), rng.uniform(0, 1, (2, num_classes, anchors))], axis=1)
    return head.astype(np.float32)


def post_nms_rows() -> np.ndarray:
    rows = np.zeros((2, 10, 6), dtype=np.float32)
    rows[:, 0] = [1, 2, 30, 40, 0.9, 3]
    return rows


@pytest.mark.parametrize(
    "output, task, layout",
    [
        (np.random.default_rng(0).normal(size=(4, 10)), "classify", None),
        (np.random.default_rng(0).normal(size=(4, 1)), "regress", None),
        (np.random.default_rng(0).normal(size=(4, 3, 8, 8)), "segment", None),
        (np.random.default_rng(0).uniform(size=(4, 1, 8, 8)), "segment", None),
        (yolo_like_head(), "detect", "channels_first"),
        (yolo_like_head().transpose(0, 2, 1), "detect", "channels_last"),
        (post_nms_rows(), "detect", "post_nms"),
        (np.random.default_rng(0).dirichlet(np.ones(37), size=(4, 26)), "sequence", None),
        (np.log(np.random.default_rng(0).dirichlet(np.ones(6), size=(4, 80))), "sequence", None),
    ],
    ids=["[N,C]", "[N,1]", "[N,C,H,W]", "[N,1,H,W]", "[N,4+C,A]", "[N,A,4+C]", "[N,K,6]", "[N,T,C] softmax", "[N,T,C] log-softmax"],
)
def test_auto_pick_reads_the_task_from_each_output(output, task, layout) -> None:
    pick = pick_task(output)
    assert (pick.task, pick.layout) == (task, layout)


def test_task_given_per_output_overrides_auto_and_a_misfit_is_a_config_error() -> None:
    outputs = [np.zeros((2, 10)), np.zeros((2, 16))]
    plan = plan_fidelity(["logits", "embedding"], outputs, FidelityOptions(tasks=(("embedding", "regress"),)))
    assert [c.pick.task for c in plan] == ["classify", "regress"]
    with pytest.raises(ConfigError, match="segment"):
        plan_fidelity(["logits"], outputs[:1], FidelityOptions(tasks=((None, "segment"),)))
    with pytest.raises(ConfigError, match="boxes"):
        plan_fidelity(["logits"], outputs[:1], FidelityOptions(tasks=(("boxes", "detect"),)))


def evaluation_of(*items: OutputFidelity) -> Evaluation:
    return Evaluation(None, None, Agreement(0.0, 0.0, 0.0, 1.0, 4), "hand-made", fidelity=items)


def detect_output(f1: float, name: str = "output0") -> OutputFidelity:
    return OutputFidelity(name, "detect", "[N, 6, 84]", FidelityResult("detection F1", f1, True, {}))


def test_with_no_budget_given_the_default_of_the_task_metric_holds_and_is_stated() -> None:
    budget = Budget()
    assert not budget.met(evaluation_of(detect_output(0.42)))
    assert budget.met(evaluation_of(detect_output(0.95)))
    assert budget.describe(evaluation_of(detect_output(0.42))) == "detection F1 >= 0.900 (default for detect)"


def test_classifier_defaults_are_one_point_with_labels_and_99_percent_agreement_without() -> None:
    reference = np.eye(10)[np.arange(100) % 10]
    engine = reference.copy()
    engine[:2] = np.roll(engine[:2], 1, axis=1)  # 2 of 100 flip
    unlabelled = OutputFidelity("logits", "classify", "", ClassifyComparator().compare(reference, engine))
    labelled = OutputFidelity("logits", "classify", "", ClassifyComparator().compare(reference, engine, np.arange(100) % 10))
    assert not Budget().met(evaluation_of(unlabelled)) and "top-1 agreement >= 99.0% (default" in Budget().describe(evaluation_of(unlabelled))
    assert not Budget().met(evaluation_of(labelled)) and "top-1 accuracy drop <= 1.00 pt" in Budget().describe(evaluation_of(labelled))
    assert Budget(max_accuracy_drop=2.0).met(evaluation_of(labelled))


def test_budget_in_the_metric_units_applies_per_output_and_classifier_options_refuse_other_tasks() -> None:
    evaluation = evaluation_of(detect_output(0.8, "boxes"), detect_output(0.95, "other"))
    assert Budget(limits=(("boxes", 0.75),)).met(evaluation)
    assert not Budget(limits=((None, 0.85),)).met(evaluation)
    assert Budget(limits=((None, 0.85),)).headline(evaluation).fidelity.output == "boxes"
    with pytest.raises(BudgetError, match="--fidelity-budget"):
        Budget(min_agreement=0.99).met(evaluation)


def test_task_and_fidelity_budget_options_are_validated_where_they_are_given() -> None:
    from edgecompress.core.config import make_config

    config = make_config({"task": "boxes=detect", "fidelity_budget": 0.9}, {})
    assert config.task == ["boxes=detect"] and config.fidelity_budget == ["0.9"]
    with pytest.raises(ConfigError, match="task 'cluster'"):
        make_config({}, {"task": ["cluster"]})
    with pytest.raises(ConfigError, match="not a number"):
        make_config({}, {"fidelity_budget": ["boxes=high"]})


def test_detection_map_against_labelled_boxes_is_reported_beside_f1() -> None:
    reference = np.zeros((1, 3, 6), dtype=np.float32)
    reference[0, 0] = [15, 15, 25, 25, 0.9, 0]  # on the first labelled box
    reference[0, 1] = [80, 80, 90, 90, 0.8, 0]  # on no labelled box
    engine = reference.copy()
    engine[0, 1, 4] = 0.95  # the engine ranks its false box first
    labels = np.array([[[0, 15, 15, 25, 25], [0, 55, 55, 65, 65], [-1, 0, 0, 0, 0]]], dtype=np.float32)
    result = DetectionComparator("post_nms", DetectionOptions()).compare(reference, engine, labels)
    # fp32: hit then miss over 2 true boxes -> AP 0.5; engine: miss then hit -> precision 0.5 at recall 0.5 -> AP 0.25
    assert result.details["mAP@0.5 fp32"] == pytest.approx(0.5) and result.details["mAP@0.5 engine"] == pytest.approx(0.25)
    assert result.metric == "detection F1" and result.value == pytest.approx(1.0)
