"""`edgecompress build` with a budget, and `edgecompress inspect`, through the real CLI entry point."""

import json

import numpy as np
import pytest

from tests.cli_support import run_cli
from tests.quant_models import digits_case  # noqa: F401  (fixture)



@pytest.fixture(scope="module")
def data_files(digits_case, tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    np.savez(folder / "calib.npz", input=digits_case.calibration.arrays["input"])
    np.savez(folder / "eval.npz", input=digits_case.eval_set.inputs["input"], y=digits_case.eval_set.labels)
    return folder


def build_args(case, folder, out, *extra: str) -> list[str]:
    return ["build", "-m", case.fragile, "--calib", folder / "calib.npz", "--eval-data", folder / "eval.npz",
            "--out", out, "--bench-runs", "10", "--equalize", "off", *extra]


def test_build_repairs_within_budget_and_inspect_lists_layers(monkeypatch, digits_case, data_files, tmp_path, capsys) -> None:
    out = tmp_path / "build"
    args = build_args(digits_case, data_files, out, "--max-accuracy-drop", "1.0", "--precision", "int8")
    assert run_cli(monkeypatch, *args) == 0
    report = json.loads((out / "cpu" / "report.json").read_text())
    assert "/conv2/Conv" in report["quantization"]["recipe"]["nodes_to_exclude"]
    # a layer kept in fp32 makes the engine mixed, not int8 (the label counts it)
    assert report["engine"]["precision"] == "mixed" and report["engine"]["precision_layers"]["fp32"] >= 1
    assert report["accuracy"]["fp32"] - report["accuracy"]["engine"] <= 1.0
    assert report["quantization"]["tries"] and report["quantization"]["layers"]
    capsys.readouterr()
    assert run_cli(monkeypatch, "inspect", out / "cpu") == 0
    printed = capsys.readouterr().out
    assert "/conv1/Conv" in printed and "repair tries" in printed


def test_int8_that_misses_the_budget_ships_fp32_and_says_so_plainly(monkeypatch, digits_case, data_files, tmp_path) -> None:
    out = tmp_path / "build"
    args = build_args(digits_case, data_files, out, "--max-accuracy-drop", "1.0", "--max-excluded-layers", "0", "--qat", "off")
    assert run_cli(monkeypatch, *args) == 0  # --precision auto: the smallest precision within the budget ships
    report = json.loads((out / "cpu" / "report.json").read_text())
    assert report["quantization"]["repair"]["met"] is False
    assert report["engine"]["precision"] == "fp32" and report["fidelity"]["met"] is True
    assert any(line.startswith("WARNING: int8 misses the budget") and "shipping fp32, which meets it" in line
               for line in report["verdict"])


def test_build_that_asks_for_int8_and_misses_the_budget_exits_3_and_keeps_the_engine(
    monkeypatch, digits_case, data_files, tmp_path
) -> None:
    out = tmp_path / "build"
    args = build_args(digits_case, data_files, out, "--max-accuracy-drop", "1.0", "--max-excluded-layers", "0",
                      "--precision", "int8", "--qat", "off")
    assert run_cli(monkeypatch, *args) == 3
    report = json.loads((out / "cpu" / "report.json").read_text())
    assert report["quantization"]["repair"]["met"] is False and "limit" in report["quantization"]["repair"]["stop_reason"]
    assert (out / "cpu" / "engine.onnx").is_file()
    assert run_cli(monkeypatch, *args, "--allow-over-budget") == 0


@pytest.mark.parametrize("setting, corrected", [("on", True), ("off", False)])
def test_bias_correction_setting_is_applied_and_recorded(monkeypatch, digits_case, data_files, tmp_path, setting, corrected) -> None:
    out = tmp_path / "build"
    assert run_cli(monkeypatch, *build_args(digits_case, data_files, out, "--precision", "int8", "--bias-correction", setting)) == 0
    recipe = json.loads((out / "cpu" / "report.json").read_text())["quantization"]["recipe"]
    assert recipe["bias_correction"] is corrected
    assert ("bias-corrected" in (out / "cpu" / "report.md").read_text()) is corrected


def test_inspect_of_a_folder_without_report_fails_in_one_line(monkeypatch, tmp_path, capsys) -> None:
    assert run_cli(monkeypatch, "inspect", tmp_path) == 2
    assert "no report.json" in capsys.readouterr().err


def test_precision_the_target_does_not_run_is_rejected(monkeypatch, digits_case, data_files, tmp_path, capsys) -> None:
    assert run_cli(monkeypatch, *build_args(digits_case, data_files, tmp_path / "b", "--precision", "fp16")) == 2
    assert "precision 'fp16'" in capsys.readouterr().err


def test_unknown_node_in_exclusion_list_fails_before_anything_is_built(monkeypatch, digits_case, data_files, tmp_path, capsys) -> None:
    out = tmp_path / "b"
    assert run_cli(monkeypatch, *build_args(digits_case, data_files, out, "--exclude-node", "/conv9/Conv")) == 2
    assert "/conv9/Conv" in capsys.readouterr().err
    assert not (out / "cpu" / "engine.onnx").exists()


def test_accuracy_budget_without_labels_fails_in_one_line(monkeypatch, digits_case, data_files, tmp_path, capsys) -> None:
    np.savez(tmp_path / "unlabelled.npz", input=digits_case.eval_set.inputs["input"][:64])
    args = build_args(digits_case, data_files, tmp_path / "b", "--max-accuracy-drop", "1.0")
    args[args.index(data_files / "eval.npz")] = tmp_path / "unlabelled.npz"
    assert run_cli(monkeypatch, *args) == 2
    assert "labels" in capsys.readouterr().err


def test_budget_out_of_range_is_a_config_error(monkeypatch, digits_case, data_files, tmp_path, capsys) -> None:
    assert run_cli(monkeypatch, *build_args(digits_case, data_files, tmp_path / "b", "--min-agreement", "1.5")) == 2
    assert "min_agreement" in capsys.readouterr().err
