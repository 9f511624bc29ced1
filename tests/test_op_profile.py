"""Where an int8 engine's time goes: ONNX Runtime's profiler aggregated per operator, and the float islands."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgecompress.measure.op_profile import profile_operators
from tests.cli_support import run_cli
from tests.quant_models import digits_case, export_onnx  # noqa: F401  (fixture)


class HardSigmoidIsland(nn.Module):
    """Conv -> HardSigmoid -> Conv: ONNX Runtime has no int8 HardSigmoid, so it runs in float between two int8 convs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv2(nn.functional.hardsigmoid(self.conv1(x)))).mean(dim=(2, 3))


@pytest.fixture(scope="module")
def island_int8(tmp_path_factory) -> Path:
    from edgecompress.calib.load import calibration_set_from_arrays
    from edgecompress.export.graph import model_io, read_onnx
    from edgecompress.quantize.recipe import QuantRecipe
    from edgecompress.quantize.static import quantize_model

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("island")
    sample = np.random.default_rng(0).normal(size=(16, 1, 16, 16)).astype(np.float32)
    fp32 = export_onnx(HardSigmoidIsland().eval(), folder / "island.onnx", sample)
    inputs, _ = model_io(read_onnx(fp32))
    calibration = calibration_set_from_arrays({"input": sample}, inputs, "random")
    return quantize_model(fp32, calibration, QuantRecipe(), folder / "island.int8.onnx")


def test_profile_splits_the_time_by_operator_type_and_the_shares_sum_to_one(island_int8) -> None:
    feeds = {"input": np.zeros((1, 1, 16, 16), np.float32)}
    profile = profile_operators(island_int8, feeds, threads=1, runs=5, warmup=2)
    by_type = {o.op_type: o for o in profile.by_op}
    assert by_type["QLinearConv"].kind == "int8" and by_type["QLinearConv"].nodes == 2 and by_type["QLinearConv"].ms > 0
    assert by_type["HardSigmoid"].kind == "float"
    assert by_type["QuantizeLinear"].kind == by_type["DequantizeLinear"].kind == "convert"
    assert sum(o.fraction for o in profile.by_op) == pytest.approx(1.0, abs=1e-6)
    assert sum(profile.by_kind.values()) == pytest.approx(1.0, abs=1e-6)
    assert profile.total_ms == pytest.approx(sum(o.ms for o in profile.by_op))
    assert profile.runs == 5 and profile.top_nodes[0].ms == max(n.ms for n in profile.top_nodes)


def test_a_float_op_between_int8_convs_is_one_island_with_its_q_dq_pair(island_int8) -> None:
    profile = profile_operators(island_int8, {"input": np.zeros((1, 1, 16, 16), np.float32)}, threads=1, runs=3, warmup=1)
    islands = profile.islands
    assert islands.count == 1 and islands.float_ops == {"HardSigmoid": 1}
    assert islands.convert_nodes == 2  # the DequantizeLinear in, the QuantizeLinear out
    assert 0 < islands.fraction < 1 and islands.ms <= profile.total_ms


def test_an_fp32_model_has_no_islands_and_runs_all_in_float(tmp_path) -> None:
    sample = np.zeros((1, 1, 16, 16), np.float32)
    fp32 = export_onnx(HardSigmoidIsland().eval(), tmp_path / "fp32.onnx", sample)
    profile = profile_operators(fp32, {"input": sample}, threads=1, runs=3, warmup=1)
    assert profile.islands.count == 0 and profile.by_kind.get("int8", 0.0) == 0.0 and profile.by_kind["float"] > 0.9


def test_inspect_shows_the_operator_breakdown_of_a_built_target(monkeypatch, digits_case, tmp_path, capsys) -> None:
    np.savez(tmp_path / "calib.npz", input=digits_case.calibration.arrays["input"])
    np.savez(tmp_path / "eval.npz", input=digits_case.eval_set.inputs["input"], y=digits_case.eval_set.labels)
    out = tmp_path / "build"
    assert run_cli(monkeypatch, "build", "-m", digits_case.clean, "--calib", tmp_path / "calib.npz", "--eval-data",
                   tmp_path / "eval.npz", "--out", out, "--bench-runs", "10", "--precision", "int8") == 0
    capsys.readouterr()
    assert run_cli(monkeypatch, "inspect", out / "cpu", "--runs", "3") == 0
    printed = capsys.readouterr().out
    assert "engine time by operator type" in printed and "QLinearConv" in printed and "ms of kernels per run" in printed
    assert json.loads((out / "cpu" / "report.json").read_text())["engine"]["kind"] == "ort-cpu"
    assert run_cli(monkeypatch, "inspect", out / "cpu", "--no-operators") == 0
    assert "engine time by operator type" not in capsys.readouterr().out


def test_when_fp32_ships_the_sentence_names_the_operators_that_made_int8_slower(island_int8) -> None:
    from edgecompress.pipeline.inspect import slower_int8_sentence

    sentence = slower_int8_sentence(island_int8, 2.0, 1.0, {"input": np.zeros((4, 1, 16, 16), np.float32)}, threads=1)
    assert sentence.startswith("int8 is slower than fp32 here (2.000 vs 1.000 ms p50)")
    assert "QLinearConv" in sentence and "1 float islands (1 HardSigmoid) with 2 Q/DQ nodes" in sentence
