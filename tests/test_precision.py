"""Per target, the fastest candidate within the budget ships; a slower int8 is said plainly."""

from pathlib import Path

import numpy as np

from edgecompress.measure.bench import LatencyStats
from edgecompress.engines.ort_cpu import OrtCpuBuilder
from edgecompress.pipeline.precision import (
    Candidate, PrecisionSettings, TargetModels, _fastest_with_margin, _slower_sentence, choose_precision, quantize_for_target,
)
from edgecompress.pipeline.repair import Budget, RepairOptions
from edgecompress.quantize.recipe import QuantRecipe
from edgecompress.core.targets import load_profile
from tests.quant_models import digits_case  # noqa: F401  (fixture)


def stats(p50: float) -> LatencyStats:
    return LatencyStats(p50, p50, p50, p50, p50, 1, 10, 1000.0 / p50)


def model_file(tmp_path, name: str, size_bytes: int):
    """A real file of a known size: the tie rule reads candidates' sizes from disk."""
    path = tmp_path / f"{name}.onnx"
    path.write_bytes(b"\0" * size_bytes)
    return path


def candidate(tmp_path, name: str, p50: float, size_bytes: int, within_budget: bool = True) -> Candidate:
    return Candidate(name, model_file(tmp_path, name, size_bytes), within_budget, latency=stats(p50))


def test_smaller_model_within_ten_percent_of_the_fastest_wins(tmp_path) -> None:
    fp32, int8 = candidate(tmp_path, "fp32", 1.00, 4000), candidate(tmp_path, "int8", 1.09, 1000)
    assert _fastest_with_margin([fp32, int8]) is int8
    assert _fastest_with_margin([int8, fp32]) is int8  # order of the list does not matter


def test_faster_model_wins_beyond_ten_percent(tmp_path) -> None:
    fp32, int8 = candidate(tmp_path, "fp32", 1.00, 4000), candidate(tmp_path, "int8", 1.11, 1000)
    assert _fastest_with_margin([fp32, int8]) is fp32
    assert _fastest_with_margin([int8, fp32]) is fp32


def test_faster_of_two_equally_small_models_wins_a_tie(tmp_path) -> None:
    slower, faster = candidate(tmp_path, "int8", 1.05, 1000), candidate(tmp_path, "int8 repaired", 1.00, 1000)
    assert _fastest_with_margin([slower, faster]) is faster


def test_smallest_of_three_tied_candidates_wins(tmp_path) -> None:
    tied = [candidate(tmp_path, "fp32", 1.00, 4000), candidate(tmp_path, "fp16", 1.02, 2000),
            candidate(tmp_path, "int8", 1.08, 1000), candidate(tmp_path, "int8 repaired", 1.30, 900)]
    assert _fastest_with_margin(tied).name == "int8"  # 'int8 repaired' is smaller but 30% slower


def test_slower_int8_is_reported_with_both_latencies(tmp_path) -> None:
    int8, fp32 = Candidate("int8", tmp_path, True, latency=stats(3.0)), Candidate("fp32", tmp_path, True, latency=stats(2.0))
    sentence = _slower_sentence(int8, fp32)
    assert sentence.startswith("WARNING:") and "SLOWER" in sentence and "3.000 ms" in sentence and "2.000 ms" in sentence
    assert _slower_sentence(Candidate("int8", tmp_path, True, latency=stats(1.0)), fp32) is None


def test_candidate_over_budget_is_never_chosen(digits_case, tmp_path) -> None:
    int8 = digits_case.quantizer(digits_case.fragile)(QuantRecipe(reduce_range=True))
    models = TargetModels(OrtCpuBuilder(), load_profile("cpu"), tmp_path / "candidates")
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
        TargetModels(OrtCpuBuilder(), load_profile("cpu"), tmp_path / "candidates"), {"input": digits_case.eval_set.inputs["input"][:1]}, settings,
    )
    fields = result.report_fields(tmp_path)
    assert fields["repair"]["met"] and "/conv2/Conv" in fields["fp32_nodes"]
    assert {c["name"] for c in fields["precision"]["candidates"]} == {"int8", "int8 repaired", "fp32"}
    candidates = {c["name"]: c for c in fields["precision"]["candidates"]}
    assert {name: c["within_budget"] for name, c in candidates.items()} == {"int8": False, "int8 repaired": True, "fp32": True}
    repaired, fp32 = candidates["int8 repaired"], candidates["fp32"]
    assert Path(repaired["model_path"]).stat().st_size < Path(fp32["model_path"]).stat().st_size
    # the rule on these measured figures: the smaller repaired int8 ships unless it is over 10% slower than fp32
    fastest = min(repaired["latency_ms_p50"], fp32["latency_ms_p50"])
    expected = "int8 repaired" if repaired["latency_ms_p50"] <= 1.1 * fastest else "fp32"
    assert fields["precision"]["chosen"] == expected
    assert candidates["fp32"]["accuracy"] is not None  # evaluated too (vs ONNX Runtime's fp32), not assumed
    assert candidates["int8"]["label"] == "int8" and candidates["int8 repaired"]["label"].startswith("mixed (")
    assert fields["layers"] and (tmp_path / fields["layers_plot"]).is_file()
    assert np.isfinite([layer["output_sqnr_db"] for layer in fields["layers"]]).all()


def int8_report_without_fidelity(fp32_top1: float, engine_top1: float):
    """A report of an int8 engine that nothing timed and no task metric judged: only top-1 speaks."""
    from edgecompress.pipeline.report_types import (
        Accuracy, BuildReport, CalibrationFacts, EngineFacts, ModelFacts, QuantizationFacts, ReferenceFacts,
    )

    calibration = CalibrationFacts("digits train split", "0" * 64, 16, False, None, {"batch_axis": {"input": 0}})
    return BuildReport(
        target="cpu", model=ModelFacts("digits", "test", [], []), preprocess=None, profile={},
        engine=EngineFacts("ort-cpu", "engine.onnx", "int8", None, 1000), reference=ReferenceFacts("model.fp32.onnx", "fp32", 4000),
        size_ratio_vs_fp32=4.0, quantization=QuantizationFacts({}, "model.int8.onnx", calibration),
        accuracy=Accuracy(fp32_top1, engine_top1, "digits test split"), agreement=None,
    )


def test_accuracy_over_budget_is_a_warning_in_the_verdict() -> None:
    from edgecompress.pipeline.report import verdicts

    (line,) = verdicts(int8_report_without_fidelity(95.0, 90.0), max_accuracy_drop=1.0)
    assert line.startswith("WARNING:") and "OVER the 1-point budget" in line
    (line,) = verdicts(int8_report_without_fidelity(95.0, 94.5), max_accuracy_drop=1.0)
    assert not line.startswith("WARNING") and "within" in line
