"""The CLI end to end, as a user types it, and every bad input the spine names."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parent.parent


def edgecompress(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), EDGECOMPRESS_QUIET="1", COLUMNS="250")
    return subprocess.run(
        [sys.executable, "-m", "edgecompress", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=900
    )


def assert_clean_failure(result: subprocess.CompletedProcess, *phrases: str) -> None:
    """Non-zero exit, an error line and a fix line on stderr, no traceback."""
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert "error:" in result.stderr and "fix:" in result.stderr, result.stderr
    for phrase in phrases:
        assert phrase in " ".join(result.stderr.split()), result.stderr


def engines_in(out: Path) -> list[Path]:
    return [p for p in out.rglob("engine.*")] + [p for p in out.rglob("*.tmp")]


def test_version_and_help():
    assert edgecompress("--version").stdout.startswith("edgecompress ")
    help_text = edgecompress("build", "--help").stdout
    for option in ("--model", "--input-shape", "--target", "--calib", "--config", "--out", "default: cpu"):
        assert option in help_text


@pytest.mark.parametrize("command, panels", [
    ("build", ["Model and data", "Targets and measurement", "Accuracy budget and task metric", "Quantization and repair",
               "Compression (PyTorch models)", "Bundle and signing"]),
    ("calib", ["Source and output", "Preprocessing (images)", "Model", "Data-free synthesis (no images)",
               "Text (transformer encoders)"]),
    ("ship", ["Signature and trust", "SSH connection"]),  # after its Arguments and Options
])
def test_long_help_at_80_columns_is_grouped_in_panels_and_cuts_no_option_name(command, panels):
    env = dict(os.environ, PYTHONPATH=str(REPO), COLUMNS="80", TERM="dumb")
    result = subprocess.run([sys.executable, "-m", "edgecompress", command, "--help"], capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    titles = [line.strip("╭─╮ ") for line in lines if line.startswith("╭─")]
    assert titles[-len(panels):] == panels and set(titles[:-len(panels)]) <= {"Arguments", "Options"}  # in reading order
    flags = [line.split()[1] for line in lines if line.startswith("│ --") or line.startswith("│ *  --")]
    assert flags and not any(flag.endswith("…") for flag in flags)  # every option's name is whole
    if command == "build":
        assert "Most used" in result.stdout and "edgecompress build -m model.onnx" in result.stdout
        assert "--seed" in result.stdout and "(default: 0)" in " ".join(result.stdout.split())


def test_targets_lists_the_cpu_profile():
    result = edgecompress("targets")
    assert result.returncode == 0 and "cpu" in result.stdout and "ort-cpu" in result.stdout


@pytest.mark.slow  # trains, distils, prunes and builds the example (~1-2 min)
def test_builtin_example_ships_a_verified_int8_engine_within_a_point_of_its_teacher(tmp_path):
    out = tmp_path / "build"
    result = edgecompress("build", "--out", str(out), "--bench-runs", "20")  # precision auto: the build chooses
    assert result.returncode == 0, result.stderr
    assert "edgecompress build summary" in result.stdout
    report = json.loads((out / "cpu" / "report.json").read_text())
    assert report["engine"]["precision"] == "int8" and Path(report["engine"]["path"]).is_file()
    assert any(line.startswith("Shipping int8") for line in report["verdict"]), report["verdict"]
    assert not any("SLOWER" in line for line in report["verdict"]), report["verdict"]
    assert report["accuracy"]["fp32"] - report["accuracy"]["engine"] <= 1.0
    assert report["accuracy"]["fp32"] > 95.0
    teacher, *_, engine = report["compression"]["stages"]
    assert teacher["model"] == "digits-example" and teacher["accuracy"] - engine["accuracy"] <= 1.0
    assert [stage["name"] for stage in report["compression"]["stages"]] == ["teacher", "student", "pruned", "engine"]
    assert engine["flops"] < teacher["flops"] and engine["size_bytes"] < teacher["size_bytes"] / 3
    assert report["agreement"]["samples"] == 360 and report["agreement"]["top1"] > 0.97
    assert report["reference"]["size_bytes"] / report["engine"]["size_bytes"] > 3.0
    for key in ("p50", "p90", "p99", "batch", "runs"):
        assert report["latency_ms"][key] is not None
    assert report["throughput_per_s"] > 0 and set(report["versions"]) >= {"edgecompress", "torch", "onnx", "onnxruntime"}
    assert (out / "cpu" / "report.md").read_text().startswith("# edgecompress report")
    assert (out / "cpu" / "latency.png").read_bytes()[:4] == b"\x89PNG"
    # a second build reuses export and quantization (content-hash cache)
    again = subprocess.run(
        [sys.executable, "-m", "edgecompress", "build", "--out", str(out), "--bench-runs", "10", "--precision", "int8"],
        capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO), EDGECOMPRESS_QUIET=""), timeout=900,
    )
    assert again.returncode == 0 and "export: reused" in again.stderr and "quantize: reused" in again.stderr


def _third_party_onnx(path: Path) -> Path:
    """An ONNX file made outside edgecompress: opset 13, dynamic height/width, Resize + HardSigmoid."""

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 8, 3, padding=1)
            self.up = torch.nn.ConvTranspose2d(8, 8, 2, stride=2)
            self.head = torch.nn.Linear(8, 10)

        def forward(self, x):
            x = torch.nn.functional.interpolate(x, scale_factor=0.5, mode="nearest")
            x = torch.nn.functional.hardsigmoid(self.up(self.conv(x)))
            return torch.softmax(self.head(x.mean((2, 3))), dim=1)

    torch.manual_seed(0)
    torch.onnx.export(Net().eval(), (torch.zeros(1, 1, 8, 8),), str(path), dynamo=False, opset_version=13,
                      input_names=["pixels"], dynamic_axes={"pixels": {0: "n", 2: "h", 3: "w"}})
    return path


@pytest.mark.slow  # a whole build in a subprocess
def test_third_party_onnx_builds_with_input_shape(tmp_path, tiny_calib):
    model = _third_party_onnx(tmp_path / "other.onnx")
    out = tmp_path / "build"
    result = edgecompress("build", "--model", str(model), "--input-shape", "pixels:1,1,8,8", "--calib", str(tiny_calib),
                          "--target", "cpu", "--out", str(out), "--bench-runs", "10", "--precision", "int8")
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "cpu" / "report.json").read_text())
    assert report["model"]["opset"] >= 17 and report["engine"]["precision"] == "int8"
    assert report["agreement"]["top1"] > 0.9


@pytest.mark.slow  # a whole build in a subprocess
def test_factory_model_with_weights(tmp_path, tiny_calib):
    from tests.conftest import make_tiny_net

    weights = tmp_path / "w.pt"
    torch.save(make_tiny_net().state_dict(), weights)
    out = tmp_path / "build"
    result = edgecompress("build", "--model", "tests.conftest:make_tiny_net", "--weights", str(weights),
                          "--input-shape", "1,1,8,8", "--calib", str(tiny_calib), "--out", str(out), "--bench-runs", "10", "--precision", "int8",
                          "--exporter", "torchscript", cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "cpu" / "report.json").read_text())["engine"]["precision"] == "int8"


# --- bad input: one clear line, non-zero exit, no traceback, nothing half-written ---------


def test_missing_onnx_file(tmp_path):
    assert_clean_failure(edgecompress("build", "--model", str(tmp_path / "none.onnx"), "--out", str(tmp_path)), "does not exist")


def test_truncated_onnx_file(tmp_path, tiny_onnx, tiny_calib):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(tiny_onnx.read_bytes()[:500])
    out = tmp_path / "build"
    result = edgecompress("build", "--model", str(broken), "--calib", str(tiny_calib), "--out", str(out))
    assert_clean_failure(result, "not a valid ONNX model", "truncated or corrupt")
    assert engines_in(out) == []


def test_factory_that_does_not_import(tmp_path):
    result = edgecompress("build", "--model", "no_such_pkg.models:make", "--input-shape", "1,3,8,8", "--out", str(tmp_path))
    assert_clean_failure(result, "cannot import 'no_such_pkg.models:make'")


def test_weights_that_do_not_match(tmp_path, tiny_calib):
    weights = tmp_path / "other.pt"
    torch.save(torch.nn.Linear(3, 4).state_dict(), weights)
    result = edgecompress("build", "--model", "tests.conftest:make_tiny_net", "--weights", str(weights),
                          "--input-shape", "1,1,8,8", "--calib", str(tiny_calib), "--out", str(tmp_path / "b"), cwd=REPO)
    assert_clean_failure(result, "do not match the model")


def test_input_shape_that_does_not_fit(tmp_path, tiny_onnx, tiny_calib):
    result = edgecompress("build", "--model", str(tiny_onnx), "--input-shape", "input:1,3,8,8", "--calib", str(tiny_calib),
                          "--out", str(tmp_path / "b"))
    assert_clean_failure(result, "fixed size 1 on axis 1")


def test_unknown_target_lists_known_ones(tmp_path):
    result = edgecompress("build", "--target", "toaster", "--out", str(tmp_path / "b"))
    assert_clean_failure(result, "unknown target 'toaster'", "cpu")
    assert not (tmp_path / "b").exists()


@pytest.mark.slow  # three builds in subprocesses up to the calibration check
@pytest.mark.parametrize("array, phrase", [
    (np.zeros((4, 3, 8, 8), np.float32), "size 3 on axis 1"),
    (np.full((4, 1, 8, 8), np.inf, np.float32), "NaN/Inf"),
    (np.zeros((0, 1, 8, 8), np.float32), "empty set"),
])
def test_bad_calibration_data(tmp_path, tiny_onnx, array, phrase):
    calib = tmp_path / "calib.npz"
    np.savez(calib, input=array)
    out = tmp_path / "build"
    assert_clean_failure(edgecompress("build", "--model", str(tiny_onnx), "--calib", str(calib), "--out", str(out)), phrase)
    assert engines_in(out) == []


def test_model_without_calibration_data_is_told_how_to_make_a_set(tmp_path, tiny_onnx):
    result = edgecompress("build", "--model", str(tiny_onnx), "--out", str(tmp_path / "b"))
    assert_clean_failure(result, "needs calibration data", "edgecompress calib")


@pytest.mark.parametrize("text, phrase", [
    ('targte = "cpu"\n', "unknown key 'targte'"),
    ('bench_runs = "many"\n', "'bench_runs'"),
    ("calibration_method = [\n", "not valid TOML"),
])
def test_bad_config_file(tmp_path, text, phrase):
    config = tmp_path / "edge.toml"
    config.write_text(text)
    assert_clean_failure(edgecompress("build", "--config", str(config), "--out", str(tmp_path / "b")), phrase)
