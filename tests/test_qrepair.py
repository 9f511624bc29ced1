"""Repair changes only the recipe until the budget is met, or says why it stopped."""

import pytest

from edgecompress.engines.ort_cpu import OrtRunner
from edgecompress.core.errors import BudgetError, BudgetNotMetError
from edgecompress.measure.evaluate import EvalSet
from edgecompress.pipeline.repair import Budget, RepairOptions, RepairSession, repair
from edgecompress.quantize.recipe import QuantRecipe
from tests.quant_models import digits_case  # noqa: F401  (fixture)

RECIPE = QuantRecipe(reduce_range=True)


def session(case, budget: Budget, eval_set: EvalSet | None = None, **options) -> RepairSession:
    load = lambda path: OrtRunner(path, threads=1)  # noqa: E731
    return RepairSession(
        case.fragile, eval_set or case.eval_set, case.quantizer(case.fragile), load, load(case.fragile), budget,
        options=RepairOptions(**({"latency_runs": 0, "diagnose_samples": 32, "try_equalize": False, "try_bias_correction": False} | options)),
    )


@pytest.mark.parametrize("strategy", ["bisect", "greedy"])
def test_repair_meets_the_budget_by_keeping_the_fragile_layer_in_fp32(digits_case, strategy) -> None:
    result = repair(session(digits_case, Budget(max_accuracy_drop=1.0), strategy=strategy), RECIPE)
    assert result.met
    assert "/conv2/Conv" in result.fp32_nodes
    assert result.best.evaluation.accuracy_reference - result.best.evaluation.accuracy_engine <= 1.0
    assert [t.step for t in result.tries[:3]] == ["target recipe (minmax)", "calibration entropy", "calibration percentile"]
    assert not any(t.met for t in result.tries[:3])  # calibration alone cannot fix an outlier channel
    result.raise_if_unmet(allow_over_budget=False)  # met: no error


def test_cross_layer_equalization_repairs_an_outlier_channel_without_fp32_nodes(digits_case) -> None:
    result = repair(session(digits_case, Budget(max_accuracy_drop=1.0), try_equalize=True), RECIPE)
    assert result.met and result.fp32_nodes == []
    assert result.best.step == "cross-layer equalization" and result.best.recipe.equalize


def test_bias_correction_is_tried_before_any_layer_is_kept_in_fp32(digits_case) -> None:
    result = repair(session(digits_case, Budget(max_accuracy_drop=1.0), try_bias_correction=True), RECIPE)
    steps = [t.step for t in result.tries]
    corrected = result.tries[steps.index("bias correction on")]
    assert corrected.recipe.bias_correction and not corrected.recipe.nodes_to_exclude
    assert all(not t.recipe.nodes_to_exclude for t in result.tries[: steps.index("bias correction on")])
    assert result.met  # an outlier activation range is not a weight error: exclusions still do the repair


def test_repair_stops_at_the_layer_limit_and_keeps_the_best_try(digits_case) -> None:
    result = repair(session(digits_case, Budget(max_accuracy_drop=1.0), max_excluded_layers=0), RECIPE)
    assert not result.met
    assert "limit" in result.stop_reason
    assert result.best in result.tries and result.fp32_nodes == []
    with pytest.raises(BudgetNotMetError) as raised:
        result.raise_if_unmet(allow_over_budget=False)
    assert raised.value.exit_code == 3
    result.raise_if_unmet(allow_over_budget=True)


def test_agreement_budget_needs_no_labels(digits_case) -> None:
    unlabelled = EvalSet(digits_case.eval_set.inputs, None, "digits test without labels")
    result = repair(session(digits_case, Budget(min_agreement=0.98), eval_set=unlabelled), RECIPE)
    assert result.met and result.best.evaluation.agreement.top1 >= 0.98


def test_clean_model_is_met_by_the_target_recipe_alone(digits_case) -> None:
    load = lambda path: OrtRunner(path, threads=1)  # noqa: E731
    clean = RepairSession(digits_case.clean, digits_case.eval_set, digits_case.quantizer(digits_case.clean), load,
                          load(digits_case.clean), Budget(max_accuracy_drop=1.0), options=RepairOptions(latency_runs=0))
    result = repair(clean, RECIPE)
    assert result.met and len(result.tries) == 1 and result.fp32_nodes == []


@pytest.mark.parametrize("budget", [{"max_accuracy_drop": -0.5}, {"max_accuracy_drop": 101.0}, {"min_agreement": 1.5}])
def test_budget_out_of_range_is_rejected(budget) -> None:
    with pytest.raises(BudgetError):
        Budget(**budget)


def test_accuracy_budget_without_labels_is_rejected(digits_case) -> None:
    unlabelled = EvalSet(digits_case.eval_set.inputs, None, "unlabelled.npz")
    with pytest.raises(BudgetError, match="labels"):
        repair(session(digits_case, Budget(max_accuracy_drop=1.0), eval_set=unlabelled), RECIPE)
