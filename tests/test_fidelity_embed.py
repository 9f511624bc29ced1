"""Embeddings are judged by what retrieval uses them for: each sample's nearest neighbour survives the engine, and
no embedding turns far from fp32's. Auto-pick tells an embedding from class scores; the unset budget bounds all three."""

import numpy as np
import pytest

from edgecompress.core.errors import ConfigError
from edgecompress.measure.fidelity import (
    Budget,
    EmbedComparator,
    FidelityOptions,
    FidelityResult,
    OutputFidelity,
    fidelity_report,
    nearest_neighbour_hits,
    pick_task,
    plan_fidelity,
    unit_rows,
)
from tests.test_fidelity import evaluation_of


def on_circle(*degrees: float) -> np.ndarray:
    """Unit embeddings at these angles of one plane: cosine similarity is the cosine of the angle between them."""
    radians = np.radians(degrees)
    return np.stack([np.cos(radians), np.sin(radians)], axis=1)


def unit_embeddings(samples: int = 16, width: int = 384, seed: int = 0) -> np.ndarray:
    return unit_rows(np.random.default_rng(seed).normal(size=(samples, width)))


def test_identical_embeddings_have_cosine_one_and_keep_every_neighbour() -> None:
    embeddings = unit_embeddings()
    result = EmbedComparator().compare(embeddings, embeddings.copy())
    assert result.metric == "neighbour agreement" and result.value == 1.0
    assert result.details["embedding cosine"] == pytest.approx(1.0) and result.details["worst cosine"] == pytest.approx(1.0)
    assert result.details["recall@5"] == 1.0


def test_an_embedding_moved_past_another_changes_only_its_own_neighbour() -> None:
    # fp32: A 0°, B 20°, C 50°, D 180°: A->B, B->A (20° < 30°), C->B, D->C. The engine turns B to 30°:
    # B is now nearer C (20°) than A (30°); A, C and D keep theirs
    reference, engine = on_circle(0, 20, 50, 180), on_circle(0, 30, 50, 180)
    result = EmbedComparator().compare(reference, engine)
    assert result.value == pytest.approx(3 / 4)
    assert result.details["recall@5"] == 1.0  # with 4 samples every other one is among the 5 nearest


def test_worst_cosine_is_the_most_turned_sample_and_embedding_cosine_the_mean() -> None:
    reference, engine = on_circle(0, 20, 50, 180), on_circle(0, 30, 50, 180)  # only B turns, by 10°
    result = EmbedComparator().compare(reference, engine)
    assert result.details["worst cosine"] == pytest.approx(np.cos(np.radians(10)))
    assert result.details["embedding cosine"] == pytest.approx((3 + np.cos(np.radians(10))) / 4)


def test_recall_at_k_asks_whether_fp32s_neighbour_is_among_the_engines_k_nearest() -> None:
    # fp32: A 0°, B 10°, C 25°, D 45°, E 90°: A's nearest is B. The engine turns B to 60°: A's nearest are C, D, B
    reference, engine = unit_rows(on_circle(0, 10, 25, 45, 90)), unit_rows(on_circle(0, 60, 25, 45, 90))
    nearest, within_2 = nearest_neighbour_hits(reference, engine, k=2)
    _, within_3 = nearest_neighbour_hits(reference, engine, k=3)
    assert not nearest[0] and not within_2[0] and within_3[0]


def test_duplicate_samples_tie_so_either_copy_is_the_same_neighbour() -> None:
    # fp32: A and its copy A' at 0°, B at 90°: B's nearest is A or A' alike. The engine turns A' to 1°, so B picks A'
    result = EmbedComparator().compare(on_circle(0, 0, 90), on_circle(0, 1, 90))
    assert result.value == 1.0


@pytest.mark.parametrize("samples", [1, 2])
def test_with_fewer_than_three_samples_no_neighbour_can_change(samples) -> None:
    reference = unit_embeddings(samples)
    result = EmbedComparator().compare(reference, unit_embeddings(samples, seed=1))
    assert result.value == 1.0 and result.details["recall@5"] == 1.0
    assert result.details["worst cosine"] < 0.5  # the cosines still judge the engine


def test_an_all_zero_embedding_reproduced_by_the_engine_is_not_turned() -> None:
    reference = np.vstack([unit_embeddings(3), np.zeros((1, 384))])
    assert EmbedComparator().compare(reference, reference.copy()).details["worst cosine"] == 1.0


def test_trailing_dims_are_flattened_into_one_embedding() -> None:
    reference, engine = on_circle(0, 20, 50, 180), on_circle(0, 30, 50, 180)
    result = EmbedComparator().compare(reference.reshape(4, 1, 2), engine.reshape(4, 2, 1))
    assert result.value == pytest.approx(3 / 4)


def test_int8_rounding_of_clustered_sentence_embeddings_meets_the_default_budget() -> None:
    rng = np.random.default_rng(0)
    reference = unit_rows(np.repeat(rng.normal(size=(16, 384)), 4, axis=0) + 0.3 * rng.normal(size=(64, 384)))
    scale = np.abs(reference).max(1, keepdims=True) / 127
    engine = np.round(reference / scale) * scale  # per-row symmetric int8, as a quantized output carries it
    fidelity = OutputFidelity("sentence_embedding", "embed", "", EmbedComparator().compare(reference, engine))
    assert fidelity.result.details["worst cosine"] > 0.999 and Budget().met(evaluation_of(fidelity))


@pytest.mark.parametrize(
    "output, name, task",
    [
        (unit_embeddings(), None, "embed"),
        (np.random.default_rng(0).normal(size=(4, 768)), "pooler_output", "embed"),
        (np.random.default_rng(0).normal(size=(4, 384)), "Sentence_Embedding", "embed"),
        (np.random.default_rng(0).normal(size=(4, 512)), "image_embeds", "embed"),
        (np.random.default_rng(0).normal(size=(4, 10)), None, "classify"),
        (np.random.default_rng(0).normal(size=(4, 10)), "logits", "classify"),
        (np.random.default_rng(0).normal(size=(4, 1)), "embedding", "regress"),
    ],
    ids=["unit rows", "pooler_output", "name case-insensitive", "image_embeds", "random logits", "named logits", "[N,1]"],
)
def test_auto_pick_reads_an_embedding_from_unit_rows_or_the_outputs_name(output, name, task) -> None:
    assert pick_task(output, name=name).task == task


def test_auto_pick_says_why_it_read_an_embedding() -> None:
    assert pick_task(unit_embeddings()).why == "[N, 384]: unit-length rows (an L2-normalised embedding)"
    assert "pooled hidden states" in pick_task(np.ones((2, 8)), name="pooled").why


def test_confident_softmax_probabilities_stay_classify_though_their_rows_are_nearly_unit_length() -> None:
    logits = 20 * np.eye(10)[np.arange(32) % 10]  # top class at p ≈ 0.99999: row length within 1e-3 of 1
    probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert np.allclose(np.linalg.norm(probabilities, axis=1), 1.0, atol=1e-3)
    assert pick_task(probabilities).task == "classify"
    assert pick_task(np.eye(10)[np.arange(32) % 10]).task == "classify"  # one-hot rows


def test_a_two_column_classifier_with_unit_length_rows_stays_classify() -> None:
    assert pick_task(np.tile([[0.6, 0.8], [0.8, -0.6]], (8, 1))).task == "classify"


def embed_output(agreement: float, cosine: float, worst: float) -> OutputFidelity:
    result = FidelityResult("neighbour agreement", agreement, True, {"embedding cosine": cosine, "worst cosine": worst})
    return OutputFidelity("embedding", "embed", "[N, 384]", result)


def test_with_no_budget_given_an_embedding_is_bounded_by_neighbours_and_mean_and_worst_cosine() -> None:
    bounds = Budget().bounds(embed_output(1.0, 1.0, 1.0))
    assert [(b.metric, b.limit, b.source) for b in bounds] == [
        ("neighbour agreement", 0.95, "default for embed"), ("embedding cosine", 0.99, "default for embed"),
        ("worst cosine", 0.97, "default for embed")]
    assert Budget().describe(evaluation_of(embed_output(1.0, 1.0, 1.0))) == (
        "neighbour agreement >= 95.0% (default for embed) and embedding cosine >= 0.9900 (default for embed) "
        "and worst cosine >= 0.9700 (default for embed)")


def test_the_default_embed_budget_fails_when_only_the_worst_cosine_is_below_its_bound() -> None:
    evaluation = evaluation_of(embed_output(1.0, 0.995, 0.96))
    assert not Budget().met(evaluation)
    assert Budget().shortfall(evaluation) == pytest.approx(0.01)
    assert Budget().met(evaluation_of(embed_output(1.0, 0.995, 0.97)))


def test_a_fidelity_budget_bounds_neighbour_agreement_in_place_of_the_defaults() -> None:
    evaluation = evaluation_of(embed_output(0.9, 0.95, 0.5))
    assert Budget(limits=((None, 0.85),)).met(evaluation)
    assert Budget(limits=((None, 0.85),)).describe(evaluation) == "neighbour agreement >= 85.0% (--fidelity-budget)"


def test_task_embed_is_given_per_output_and_needs_an_n_by_d_output() -> None:
    outputs = [np.random.default_rng(0).normal(size=(4, 10)), np.random.default_rng(1).normal(size=(4, 10))]
    plan = plan_fidelity(["logits", "vector"], outputs, FidelityOptions(tasks=(("vector", "embed"),)))
    assert [(c.pick.task, c.pick.why) for c in plan] == [("classify", "[N, 10]: one score per class"), ("embed", "--task embed")]
    assert isinstance(plan[1].comparator, EmbedComparator)
    with pytest.raises(ConfigError, match="needs 2 dimensions"):
        plan_fidelity(["map"], [np.zeros((4, 3, 8, 8))], FidelityOptions(tasks=((None, "embed"),)))


def test_auto_plan_reads_the_output_names() -> None:
    outputs = [np.random.default_rng(0).normal(size=(4, 10)), np.random.default_rng(1).normal(size=(4, 10))]
    plan = plan_fidelity(["logits", "sentence_embedding"], outputs, FidelityOptions())
    assert [c.pick.task for c in plan] == ["classify", "embed"]


def test_task_embed_is_an_accepted_option() -> None:
    from edgecompress.core.config import make_config

    assert make_config({"task": "embedding=embed"}, {}).task == ["embedding=embed"]


def test_the_report_states_no_met_neighbour_limit_beside_a_verdict_the_worst_cosine_decided() -> None:
    over = fidelity_report(Budget(), evaluation_of(embed_output(1.0, 0.995, 0.96)), "hand-made")
    assert (over["metric"], over["met"], over["limit"]) == ("neighbour agreement", False, None)
    assert "worst cosine >= 0.9700 (default for embed)" in over["budget"]
    within = fidelity_report(Budget(), evaluation_of(embed_output(1.0, 0.995, 0.98)), "hand-made")
    assert (within["met"], within["limit"], within["limit_source"]) == (True, 0.95, "default for embed")
