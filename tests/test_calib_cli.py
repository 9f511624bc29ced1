"""`edgecompress calib` as a user types it, and `build --calib` with the sets it makes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.calib_fixtures import COLOUR_PHOTOS, export_tiny_onnx, write_photo_folder

REPO = Path(__file__).resolve().parent.parent


def edgecompress(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), EDGECOMPRESS_QUIET="1", COLUMNS="250")
    return subprocess.run([sys.executable, "-m", "edgecompress", *args], capture_output=True, text=True, env=env, timeout=600)


def assert_clean_failure(result: subprocess.CompletedProcess, *phrases: str) -> None:
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    assert "error:" in result.stderr and "fix:" in result.stderr, result.stderr
    text = " ".join(result.stderr.split())
    for phrase in phrases:
        assert phrase in text, result.stderr


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> Path:
    return export_tiny_onnx(tmp_path_factory.mktemp("model") / "tiny.onnx")


def test_image_folder_to_set_and_manifest(tmp_path):
    photos = write_photo_folder(tmp_path / "photos", {"a": COLOUR_PHOTOS[:3], "b": COLOUR_PHOTOS[3:]})
    out = tmp_path / "calib.npz"
    result = edgecompress("calib", "--from", str(photos), "--count", "4", "--size", "24", "--out", str(out))
    assert result.returncode == 0, result.stderr
    manifest = json.loads(out.with_suffix(".json").read_text())
    assert manifest["count"] == 4 and manifest["inputs"]["x"]["shape"] == [4, 3, 24, 24]
    assert manifest["preprocess"]["center_crop"] == 24


def test_digits_set_checked_against_an_onnx_model_takes_its_input_name(tmp_path, tiny_onnx):
    out = tmp_path / "digits.npz"
    result = edgecompress(
        "calib", "--from", "digits", "--count", "20", "--resize", "8,8", "--model", str(tiny_onnx), "--out", str(out)
    )
    assert result.returncode == 0, result.stderr
    with np.load(out) as archive:
        assert archive.files == ["input"] and archive["input"].shape == (20, 1, 8, 8)


def test_set_that_does_not_fit_the_model_is_refused_before_writing(tmp_path, tiny_onnx):
    photos = write_photo_folder(tmp_path / "photos", {"a": COLOUR_PHOTOS[:2]})
    out = tmp_path / "calib.npz"
    result = edgecompress("calib", "--from", str(photos), "--count", "2", "--size", "8", "--model", str(tiny_onnx), "--out", str(out))
    assert_clean_failure(result, "size 3 on axis 1", "--size")
    assert not list(tmp_path.glob("calib.*"))


def test_data_free_from_a_factory_model(tmp_path):
    out = tmp_path / "synth.npz"
    result = edgecompress(
        "calib", "--data-free", "--model", "tests.calib_fixtures:tiny_bn_model", "--input-shape", "1,1,8,8",
        "--count", "8", "--steps", "5", "--out", str(out),
    )
    assert result.returncode == 0, result.stderr
    manifest = json.loads(out.with_suffix(".json").read_text())
    assert manifest["source"]["kind"] == "data-free" and manifest["inputs"]["input"]["shape"] == [8, 1, 8, 8]


def test_data_free_from_an_onnx_file_without_batchnorm_says_it_is_range_only(tmp_path, tiny_onnx):
    out = tmp_path / "synth.npz"  # the torch export folded the model's BatchNorm into its convolution
    result = edgecompress("calib", "--data-free", "--model", str(tiny_onnx), "--count", "4", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "range-only" in result.stderr
    assert json.loads(out.with_suffix(".json").read_text())["source"]["method"] == "range-only"


@pytest.mark.parametrize("args, phrases", [
    (["--from", "EMPTY", "--count", "4"], ["no JPEG/PNG images"]),
    (["--from", "digits", "--count", "5000"], ["has only 1078 samples", "--count 1078"]),
    (["--from", "digits", "--count", "4", "--color", "bgr"], ["color must be"]),
    (["--count", "4"], ["no calibration source"]),
])
def test_bad_input_is_one_clear_line(tmp_path, tiny_onnx, args, phrases):
    (tmp_path / "empty").mkdir()
    args = [{"MODEL": str(tiny_onnx), "EMPTY": str(tmp_path / "empty")}.get(a, a) for a in args]
    assert_clean_failure(edgecompress("calib", *args, "--out", str(tmp_path / "s.npz")), *phrases)
    assert not (tmp_path / "s.npz").exists()


def test_build_records_the_sets_sha256_and_refuses_a_changed_set(tmp_path, tiny_onnx):
    from edgecompress.calib.generate import CalibRecipe, make_calibration_set
    from edgecompress.core.config import make_config
    from edgecompress.pipeline.pipeline import build

    calib = tmp_path / "calib.npz"
    made = make_calibration_set(
        CalibRecipe(source="digits", count=64, input_name="input", preprocess={"resize": [8, 8], "color": "grayscale"}),
        calib,
    )
    config = make_config({}, {"model": str(tiny_onnx), "calib": calib, "out": tmp_path / "b", "bench_runs": 10,
                              "bench_warmup": 0, "bench_max_seconds": 1.0})
    (report,) = build(config)
    assert report["quantization"]["calibration"]["sha256"] == made.sha256
    assert report["quantization"]["calibration"]["manifest_verified"] is True
    with np.load(calib) as archive:
        changed = archive["input"].copy()
    changed[0, 0, 0, 0] += 0.5
    np.savez(calib, input=changed)
    from edgecompress.core.errors import CalibrationChecksumError

    with pytest.raises(CalibrationChecksumError, match="does not match its manifest"):
        build(config.model_copy(update={"out": tmp_path / "b2"}))
    assert not (tmp_path / "b2" / "int8").exists()
