"""Diagnosis never kills a build: scalars, int64 and renamed tensors are handled, and any failure
inside it is one warning line while the build goes on. onnxruntime's log lines stay off the console."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from skimage import data as photos

from edgecompress.calib.load import CalibrationSet

from edgecompress.calib.manifest import arrays_sha256
from edgecompress.core.logs import configure, onnxruntime_logs
from edgecompress.quantize.diagnose import diagnose, diagnose_or_warn
from edgecompress.quantize.static import quantize_model
from edgecompress.quantize.recipe import QuantRecipe
from tests.onnx_graphs import conv_model, scalar_gain_model


def _photo_patches(count: int) -> np.ndarray:
    """8×8 RGB patches of a real photo, scaled to [0, 1], as NCHW."""
    image = photos.astronaut().astype(np.float32) / 255.0
    patches = [image[r : r + 8, c : c + 8] for r in range(0, 256, 37) for c in range(0, 256, 41)][:count]
    return np.ascontiguousarray(np.stack(patches).transpose(0, 3, 1, 2))


def _calibration(arrays: dict[str, np.ndarray]) -> CalibrationSet:
    return CalibrationSet(arrays, arrays_sha256(arrays), "photo patches")


@pytest.fixture(scope="module")
def scalar_case(tmp_path_factory):
    """A model with 0-d float and int64 inputs and scalar constants, and its int8 QDQ model."""
    folder = tmp_path_factory.mktemp("scalar")
    fp32 = scalar_gain_model(folder / "scalar.onnx")
    inputs = {"x": _photo_patches(12), "gain": np.array(1.5, np.float32), "step": np.array(3, np.int64)}
    int8 = quantize_model(fp32, _calibration(inputs), QuantRecipe(), folder / "scalar.int8.onnx")
    return fp32, int8, inputs


def test_scalar_and_int64_tensors_are_diagnosed(scalar_case):
    fp32, int8, inputs = scalar_case
    diagnosis = diagnose(fp32, int8, inputs, max_samples=8)
    assert diagnosis.samples == 8
    assert {"conv", "conv2"} <= {layer.node for layer in diagnosis.layers}
    assert all(np.isfinite(t.sqnr_db) for t in diagnosis.tensors)
    assert min(t.sqnr_db for t in diagnosis.tensors if t.kind == "weight") > 20.0


def test_bias_corrected_tensors_are_matched_through_their_node_without_log_noise(tmp_path, capfd):
    fp32 = conv_model(tmp_path / "conv.onnx", ["n", 3, 8, 8])
    inputs = {"x": _photo_patches(12)}
    int8 = quantize_model(fp32, _calibration(inputs), QuantRecipe(reduce_range=True, bias_correction=True), tmp_path / "int8.onnx")
    diagnosis = diagnose(fp32, int8, inputs, max_samples=8)
    weights = {t.tensor: t for t in diagnosis.tensors if t.kind == "weight"}
    assert "w" in weights and weights["w"].cosine > 0.99
    assert any(name.endswith("_corrected_bias") or name == "b" for name in weights)  # the renamed bias still scored
    assert "not found" not in capfd.readouterr().err


def test_a_failure_inside_diagnosis_is_one_warning_and_no_diagnosis(scalar_case, tmp_path, capsys):
    fp32, _, inputs = scalar_case
    broken = tmp_path / "broken.int8.onnx"
    broken.write_bytes(b"not an onnx model")
    assert diagnose_or_warn(fp32, broken, inputs, max_samples=4) is None
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "diagnosis skipped" in lines[0]


@pytest.mark.parametrize("level, shown", [("warning", False), ("debug", True)])
def test_onnxruntime_root_logger_lines_reach_the_console_only_at_the_chosen_level(capfd, level, shown):
    configure(level)
    try:
        with onnxruntime_logs():
            logging.error("Model Error: weight tensor 'conv_corrected_bias' not found!")  # what ORT's helper does
    finally:
        configure("warning")
    err = capfd.readouterr().err
    assert "ERROR:root" not in err
    assert ("DEBUG: edgecompress.onnxruntime: error: Model Error" in err) is shown


def test_an_unknown_log_level_is_one_error_with_the_levels():
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "edgecompress", "--log-level", "loud", "targets"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "unknown --log-level 'loud'" in result.stderr and "debug, info, warning, error" in result.stderr
    assert "Traceback" not in result.stderr
