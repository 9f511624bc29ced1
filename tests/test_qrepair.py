"""Repair changes only the recipe until the budget is met, or says why it stopped."""

import numpy as np
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


def test_repair_stops_when_layers_in_fp32_cannot_reach_the_budget(digits_case, tmp_path) -> None:
    """Every layer damaged alike (a calibration set 100x too small clips every activation): keeping the 4 most
    damaged in fp32 closes little of the gap, so the search says so and stops instead of trying 8."""
    import torch
    from torch import nn

    from edgecompress.calib.load import calibration_set_from_arrays
    from edgecompress.export.graph import model_io, read_onnx
    from edgecompress.quantize.static import quantize_model
    from tests.quant_models import export_onnx

    torch.manual_seed(0)
    x = digits_case.eval_set.inputs["input"]
    deep = nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(x.shape[1:])), 64), nn.ReLU(),
                         *[m for _ in range(9) for m in (nn.Linear(64, 64), nn.ReLU())], nn.Linear(64, 10)).eval()
    with torch.no_grad():  # near-identity hidden layers: the input's information reaches the logits
        for layer in [m for m in deep if isinstance(m, nn.Linear)][1:-1]:
            layer.weight.copy_(torch.eye(64) + 0.05 * torch.randn(64, 64))
            layer.bias.zero_()
    path = export_onnx(deep, tmp_path / "deep.onnx", x)
    too_small = calibration_set_from_arrays({"input": x[:64] / 100}, model_io(read_onnx(path))[0], "digits / 100")
    quantize = lambda recipe: quantize_model(path, too_small, recipe, tmp_path / f"{abs(hash(recipe))}.onnx")  # noqa: E731
    load = lambda p: OrtRunner(p, threads=1)  # noqa: E731
    unlabelled = EvalSet({"input": x}, None, "digits test")
    options = RepairOptions(latency_runs=0, diagnose_samples=32, try_equalize=False, try_bias_correction=False,
                            calibration_methods=("minmax",))
    result = repair(RepairSession(path, unlabelled, quantize, load, load(path), Budget(min_agreement=0.99), options=options),
                    QuantRecipe())
    assert not result.met
    assert "will not reach it" in result.stop_reason
    steps = [t.step for t in result.tries]
    assert "exclude top 4" in steps and "exclude top 8" not in steps
