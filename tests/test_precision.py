"""Per target, the fastest candidate within the budget ships; a slower int8 is said plainly."""

import numpy as np

from edgecompress.bench import LatencyStats
from edgecompress.engines.ort_cpu import OrtCpuBuilder
from edgecompress.precision import Candidate, PrecisionSettings, TargetModels, _slower_sentence, choose_precision, quantize_for_target
from edgecompress.qrepair import Budget, RepairOptions
from edgecompress.quantize import QuantRecipe
from edgecompress.targets import load_profile
from tests.quant_models import digits_case  # noqa: F401  (fixture)


def stats(p50: float) -> LatencyStats:
    return LatencyStats(p50, p50, p50, p50, p50, 1, 10, 1000.0 / p50)


def test_slower_int8_is_reported_with_both_latencies(tmp_path) -> None:
    int8, fp32 = Candidate("int8", tmp_path, True, latency=stats(3.0)), Candidate("fp32", tmp_path, True, latency=stats(2.0))
    sentence = _slower_sentence(int8, fp32)
    assert sentence.startswith("WARNING:") and "SLOWER" in sentence and "3.000 ms" in sentence and "2.000 ms" in sentence
    assert _slower_sentence(Candidate("int8", tmp_path, True, latency=stats(1.0)), fp32) is None


def test_candidate_over_budget_is_never_chosen(digits_case) -> None:
    int8 = digits_case.quantizer(digits_case.fragile)(QuantRecipe(reduce_range=True))
    models = TargetModels(OrtCpuBuilder(), load_profile("cpu"))
    candidates = [Candidate("int8", int8, False), Candidate("fp32", digits_case.fragile, True)]
    feeds = {"input": digits_case.eval_set.inputs["input"][:1]}
    choice = choose_precision(candidates, models.load, feeds, runs=10, max_seconds=2.0)
    assert choice.chosen.name == "fp32"
    assert all(c.latency is not None and c.latency.p50 > 0 for c in candidates)
    assert choice.summary[-1].startswith("Shipping fp32")


def test_target_quantization_records_tries_layers_and_choice(digits_case, tmp_path) -> None:
    settings = PrecisionSettings(Budget(max_accuracy_drop=1.0), RepairOptions(latency_runs=0, diagnose_samples=32, try_equalize=False, try_bias_correction=False), bench_runs=10,
                                 bench_max_seconds=2.0)
    result = quantize_for_target(
        digits_case.fragile, digits_case.eval_set, QuantRecipe(reduce_range=True), digits_case.quantizer(digits_case.fragile),
        TargetModels(OrtCpuBuilder(), load_profile("cpu")), {"input": digits_case.eval_set.inputs["input"][:1]}, settings,
    )
    fields = result.report_fields(tmp_path)
    assert fields["repair"]["met"] and "/conv2/Conv" in fields["fp32_nodes"]
    assert {c["name"] for c in fields["precision"]["candidates"]} == {"int8", "int8 repaired", "fp32"}
    assert fields["precision"]["chosen"] in ("int8 repaired", "fp32")  # "int8" misses the budget
    candidates = {c["name"]: c for c in fields["precision"]["candidates"]}
    assert candidates["fp32"]["accuracy"] is not None  # evaluated too (vs ONNX Runtime's fp32), not assumed
    assert candidates["int8"]["label"] == "int8" and candidates["int8 repaired"]["label"].startswith("mixed (")
    assert fields["layers"] and (tmp_path / fields["layers_plot"]).is_file()
    assert np.isfinite([layer["output_sqnr_db"] for layer in fields["layers"]]).all()


def test_accuracy_over_budget_is_a_warning_in_the_verdict() -> None:
    from edgecompress.report import verdicts

    report = {"engine": {"precision": "int8"}, "accuracy": {"fp32": 95.0, "engine": 90.0}}
    (line,) = verdicts(report, max_accuracy_drop=1.0)
    assert line.startswith("WARNING:") and "OVER the 1-point budget" in line
    (line,) = verdicts({"engine": {"precision": "int8"}, "accuracy": {"fp32": 95.0, "engine": 94.5}}, max_accuracy_drop=1.0)
    assert not line.startswith("WARNING") and "within" in line
