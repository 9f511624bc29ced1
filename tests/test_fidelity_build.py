"""Builds of models that are not classifiers judge int8 by their task's metric, under a budget that always holds."""

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from tests.cli_support import run_cli
from edgecompress.source.data import digits_splits
from edgecompress.quantize.detect_tail import detector_tail_nodes


class InkSegmenter(nn.Module):
    """1×8×8 digit in, 1×8×8 probability that a pixel is ink out: sigmoid(2·Σ relu(x − t_i) − 2), no training needed."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 1, 1)
        with torch.no_grad():
            self.conv1.weight.zero_()
            self.conv1.weight[:, 0, 1, 1] = 1.0
            self.conv1.bias.copy_(torch.tensor([0.0, -0.25, -0.5, -0.75]))
            self.conv2.weight.fill_(2.0)
            self.conv2.bias.fill_(-2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.conv2(torch.relu(self.conv1(x))))


class RowReader(nn.Module):
    """A CTC-style line reader: the 8 rows of a digit are 8 time steps, 5 classes (0 = blank) per step, [N, T, C]."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.step = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(4.0 * self.step(x.reshape(-1, 8, 8)), dim=-1)


class TinyDetector(nn.Module):
    """A YOLOv8-shaped head on 8×8 digits: per cell a box conv and a class conv, concatenated, then decoded
    (box in pixels, sigmoid class scores) to [N, 4 + 2, 64]."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.box = nn.Conv2d(8, 4, 1)
        self.cls = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = torch.relu(self.stem(x))
        head = torch.cat([self.box(features), self.cls(features)], 1).reshape(-1, 6, 64)
        boxes, scores = head.split([4, 2], dim=1)
        return torch.cat([torch.sigmoid(boxes) * 64.0, torch.sigmoid(scores)], 1)


def export(model: nn.Module, path: Path, output: str) -> Path:
    sample = torch.from_numpy(digits_splits().val.x[:1])
    torch.onnx.export(model.eval(), sample, str(path), input_names=["input"], output_names=[output],
                      dynamic_axes={"input": {0: "n"}, output: {0: "n"}}, dynamo=False)
    return path



@pytest.fixture(scope="module")
def digits_files(tmp_path_factory) -> Path:
    """Real digits images, unlabelled: these models have no class labels to score."""
    folder = tmp_path_factory.mktemp("fidelity")
    splits = digits_splits()
    np.savez(folder / "calib.npz", input=splits.train.x[:64])
    np.savez(folder / "eval.npz", input=splits.test.x[:128])
    return folder


def build(monkeypatch, model: Path, files: Path, out: Path, *extra) -> int:
    return run_cli(monkeypatch, "build", "-m", model, "--calib", files / "calib.npz", "--eval-data", files / "eval.npz",
                   "--out", out, "--bench-runs", "10", "--equalize", "off", "--precision", "int8", *extra)


def test_segmenter_build_judges_int8_by_mask_iou_under_the_stated_default(monkeypatch, digits_files, tmp_path, capsys) -> None:
    model = export(InkSegmenter(), tmp_path / "segmenter.onnx", "ink")
    assert build(monkeypatch, model, digits_files, tmp_path / "b") == 0
    report = json.loads((tmp_path / "b" / "cpu" / "report.json").read_text())
    fidelity = report["fidelity"]
    assert (fidelity["task"], fidelity["metric"], fidelity["met"]) == ("segment", "mask IoU", True)
    assert fidelity["value"] >= 0.9 and fidelity["budget"] == "mask IoU >= 0.900 (default for segment)"
    assert "top-1" not in " ".join(report["verdict"])  # no top-1 agreement of a flattened map anywhere in the verdict
    assert any(line.startswith("Fidelity (segment): mask IoU") for line in report["verdict"])
    assert "mask IoU" in capsys.readouterr().out  # the summary table names the metric
    assert "Fidelity (segment): mask IoU" in (tmp_path / "b" / "cpu" / "report.md").read_text()


def test_build_over_budget_exits_3_and_allow_over_budget_ships_and_says_so(monkeypatch, digits_files, tmp_path) -> None:
    model = export(InkSegmenter(), tmp_path / "segmenter.onnx", "ink")
    strict = ("--task", "regress", "--fidelity-budget", "150", "--max-excluded-layers", "0", "--bias-correction", "off")
    assert build(monkeypatch, model, digits_files, tmp_path / "b", *strict) == 3
    report = json.loads((tmp_path / "b" / "cpu" / "report.json").read_text())
    assert report["fidelity"]["metric"] == "SQNR" and report["fidelity"]["met"] is False
    assert report["fidelity"]["budget"] == "SQNR >= 150.0 dB (--fidelity-budget)"
    assert build(monkeypatch, model, digits_files, tmp_path / "b", *strict, "--allow-over-budget") == 0
    verdict = json.loads((tmp_path / "b" / "cpu" / "report.json").read_text())["verdict"]
    assert any("--allow-over-budget" in line and line.startswith("WARNING") for line in verdict)


def test_ctc_reader_build_reports_the_character_error_rate(monkeypatch, digits_files, tmp_path) -> None:
    model = export(RowReader(), tmp_path / "reader.onnx", "steps")
    assert build(monkeypatch, model, digits_files, tmp_path / "b", "--fidelity-budget", "0.5") == 0
    fidelity = json.loads((tmp_path / "b" / "cpu" / "report.json").read_text())["fidelity"]
    assert (fidelity["task"], fidelity["metric"]) == ("sequence", "character error rate")
    assert 0.0 <= fidelity["value"] <= 0.5 and "step agreement" in fidelity["outputs"][0]["result"]["details"]


def test_classifier_budget_options_on_a_detector_fail_in_one_line(monkeypatch, digits_files, tmp_path, capsys) -> None:
    model = export(TinyDetector(), tmp_path / "detector.onnx", "head")
    assert build(monkeypatch, model, digits_files, tmp_path / "b", "--min-agreement", "0.99") == 2
    assert "--fidelity-budget" in capsys.readouterr().err


def test_detector_tail_is_everything_after_the_conv_concat(tmp_path) -> None:
    model = onnx.load(str(export(TinyDetector(), tmp_path / "detector.onnx", "head")))
    tail = detector_tail_nodes(model)
    ops = {node.name: node.op_type for node in model.graph.node}
    assert "/Concat" not in tail and ops[tail[0]] == "Reshape"  # the raw conv outputs' Concat stays int8
    assert {"Reshape", "Split", "Sigmoid", "Mul"} <= {ops[name] for name in tail}
    assert all(ops[name] != "Conv" for name in tail)
    last = next(node.name for node in model.graph.node if "head" in node.output)
    assert last in tail


def test_detector_repair_tries_the_decode_tail_in_fp32_first(digits_files, tmp_path) -> None:
    from edgecompress.calib.load import calibration_set_from_arrays
    from edgecompress.engines.ort_cpu import OrtRunner
    from edgecompress.measure.evaluate import EvalSet
    from edgecompress.export.graph import model_io, read_onnx
    from edgecompress.measure.fidelity import Budget
    from edgecompress.pipeline.repair import RepairOptions, RepairSession, repair
    from edgecompress.quantize.static import quantize_model
    from edgecompress.quantize.recipe import QuantRecipe

    fp32 = export(TinyDetector(), tmp_path / "detector.onnx", "head")
    inputs, _ = model_io(read_onnx(fp32))
    calibration = calibration_set_from_arrays({"input": np.load(digits_files / "calib.npz")["input"]}, inputs, "digits train")

    def quantize(recipe):
        return quantize_model(fp32, calibration, recipe, tmp_path / f"{len(list(tmp_path.iterdir()))}.onnx")

    def load(path):
        return OrtRunner(path, threads=1)

    session = RepairSession(
        fp32, EvalSet({"input": np.load(digits_files / "eval.npz")["input"]}, None, "digits test"), quantize, load, load(fp32),
        Budget(limits=((None, 1.01),)),  # F1 above 1: unreachable, so every step runs
        options=RepairOptions(calibration_methods=("minmax",), max_excluded_layers=0, try_equalize=False,
                              try_bias_correction=False, latency_runs=0, diagnose_samples=16),
        detector_tail=detector_tail_nodes,
    )
    result = repair(session, QuantRecipe(reduce_range=True))
    assert [t.step for t in result.tries[:2]] == ["target recipe (minmax)", "decode tail in fp32"]
    assert set(detector_tail_nodes(fp32)) <= set(result.tries[1].recipe.nodes_to_exclude)
    assert result.tries[0].evaluation.fidelity[0].result.metric == "detection F1" and not result.met
