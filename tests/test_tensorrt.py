"""TensorRT: the on-device build kit, trtexec flags per profile, preflight, and (with a GPU) real plans."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest

from edgecompress.data import digits_splits
from edgecompress.engines import _trt_build, get_builder
from edgecompress.engines.tensorrt import KIT_DIR, PLAN_NAME, TensorRTBuilder, write_build_kit
from edgecompress.engines.trt_preflight import preflight
from edgecompress.errors import EngineBuildError
from edgecompress.targets import load_profile
from tests._int8_models import qdq_models, with_extra_node  # noqa: F401 - fixture

GPU_REASON = TensorRTBuilder().available()


@pytest.fixture(scope="module")
def jetson_kit(qdq_models, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("jetson")
    return out_dir, write_build_kit(qdq_models["int8"], load_profile("jetson"), out_dir)


def test_kit_holds_model_profile_scripts_and_no_engine(jetson_kit):
    out_dir, artifact = jetson_kit
    kit = out_dir / KIT_DIR
    assert sorted(p.name for p in kit.iterdir()) == [
        "build_engine.py", "build_engine.sh", "build_settings.json", "model.int8.onnx", "preflight.json",
        "profile.json"]
    assert artifact.path is None and not artifact.runnable_here
    assert not list(out_dir.rglob(PLAN_NAME))
    assert json.loads((kit / "profile.json").read_text())["name"] == "jetson"


def test_kit_note_says_build_on_device_with_the_command(jetson_kit):
    _, artifact = jetson_kit
    assert "must be built on the device" in artifact.note
    assert artifact.metadata["trtexec"] in artifact.note
    assert artifact.metadata["trtexec"] in (artifact.files[1]).read_text()  # build_engine.sh


def test_kit_python_script_is_the_builder_code_and_runs_without_edgecompress(jetson_kit, tmp_path):
    out_dir, _ = jetson_kit
    script = out_dir / KIT_DIR / "build_engine.py"
    assert script.read_text() == open(_trt_build.__file__).read()
    shutil.copy(script, tmp_path / "build_engine.py")
    done = subprocess.run([sys.executable, "-S", "build_engine.py", "--help"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert done.returncode == 0 and "--settings" in done.stdout


@pytest.mark.parametrize("target, expected, absent", [
    ("jetson-orin-nano", ["--int8", "--minShapes=input:1x1x32x32", "--optShapes=input:1x1x32x32",
                          "--maxShapes=input:8x1x32x32", "--memPoolSize=workspace:1024",
                          "--timingCacheFile=timing.cache", "--noTF32"], ["--useDLACore=0", "--fp16"]),
    ("jetson-agx-orin", ["--int8", "--fp16", "--useDLACore=0", "--allowGPUFallback",
                         "--maxShapes=input:1x1x32x32", "--memPoolSize=workspace:2048"], []),
    ("gpu", ["--optShapes=input:8x1x32x32", "--maxShapes=input:32x1x32x32", "--memPoolSize=workspace:4096"],
     ["--useDLACore=0"]),
])
def test_trtexec_flags_follow_the_profile(qdq_models, tmp_path, target, expected, absent):
    artifact = write_build_kit(qdq_models["int8"], load_profile(target), tmp_path)
    command = artifact.metadata["trtexec"].split()
    assert command[:3] == ["trtexec", "--onnx=model.int8.onnx", f"--saveEngine={PLAN_NAME}"]
    assert set(expected) <= set(command) and not set(absent) & set(command)


def test_builder_writes_the_kit_for_a_jetson_on_this_host(qdq_models, tmp_path):
    artifact = get_builder("tensorrt").build(qdq_models["int8"], load_profile("jetson"), tmp_path)
    assert artifact.path is None and (tmp_path / KIT_DIR / "build_engine.sh").is_file()
    with pytest.raises(EngineBuildError, match="built on the device"):
        get_builder("tensorrt").load(artifact, load_profile("jetson"))


def test_preflight_passes_the_symmetric_int8_model(qdq_models):
    report = preflight(qdq_models["int8"], trt_major=10)
    assert report.nodes_checked > 10 and report.errors == []


def test_preflight_names_unsupported_nodes(qdq_models, tmp_path):
    bad = with_extra_node(qdq_models["int8"], tmp_path / "det.onnx", "Det", "head/determinant")
    custom = with_extra_node(bad, tmp_path / "both.onnx", "FancyNorm", "head/fancy", domain="com.example")
    errors = [issue.line() for issue in preflight(custom, trt_major=8).errors]
    assert errors == ["node 'head/determinant' (Det): Det is not supported by TensorRT 8's ONNX parser",
                      "node 'head/fancy' (FancyNorm): op from domain 'com.example' has no TensorRT importer "
                      "(it needs a plugin)"]


def test_preflight_knows_what_tensorrt_10_added(qdq_models, tmp_path):
    model = with_extra_node(qdq_models["int8"], tmp_path / "nonzero.onnx", "NonZero", "head/nonzero")
    assert [i.op_type for i in preflight(model, trt_major=8).errors] == ["NonZero"]
    assert preflight(model, trt_major=10).errors == []


def test_preflight_rejects_onnxruntime_default_quantization(qdq_models):
    """uint8 activations at zero point 128 and int32 biases: both are refused by TensorRT's parser."""
    errors = preflight(qdq_models["uint8"]).errors
    assert {i.op_type for i in errors} == {"QuantizeLinear", "DequantizeLinear"}
    problems = {i.problem.split(";")[0] for i in errors}
    assert problems == {"uint8 quantization", "int32-quantized bias"}


def test_dla_misses_are_warnings_with_gpu_fallback_and_errors_without(qdq_models, tmp_path):
    model = with_extra_node(qdq_models["int8"], tmp_path / "exp.onnx", "Exp", "head/exp")
    with_fallback = preflight(model, dla=True, gpu_fallback=True)
    without = preflight(model, dla=True, gpu_fallback=False)
    assert with_fallback.errors == [] and "head/exp" in [i.node for i in with_fallback.warnings]
    assert [i.node for i in without.errors] == [i.node for i in with_fallback.warnings]
    assert preflight(model, dla=False).warnings == []


def test_build_with_an_unsupported_op_names_it_and_writes_nothing(qdq_models, tmp_path):
    bad = with_extra_node(qdq_models["int8"], tmp_path / "bad.onnx", "Det", "head/determinant")
    out_dir = tmp_path / "jetson"
    with pytest.raises(EngineBuildError) as error:
        get_builder("tensorrt").build(bad, load_profile("jetson"), out_dir)
    assert "Det is not supported" in str(error.value) and "'head/determinant'" in str(error.value)
    assert not out_dir.exists() or list(out_dir.iterdir()) == []


def test_int8_on_dla_without_calibration_scales_is_rejected(qdq_models, tmp_path):
    with pytest.raises(EngineBuildError, match="no calibration"):
        get_builder("tensorrt").build(qdq_models["fp32"], load_profile("jetson-agx-orin"), tmp_path / "agx")
    assert not (tmp_path / "agx").exists()


@pytest.mark.gpu
@pytest.mark.skipif(GPU_REASON is not None, reason=f"TensorRT GPU build needs TensorRT and a GPU: {GPU_REASON}")
def test_gpu_plan_builds_runs_and_agrees_with_onnxruntime(qdq_models, tmp_path):
    profile = load_profile("gpu")
    builder = get_builder("tensorrt")
    artifact = builder.build(qdq_models["int8"], profile, tmp_path)
    assert artifact.path.name == PLAN_NAME and artifact.metadata["tensorrt_version"]
    assert artifact.metadata["gpu"] != "unknown" and "." in artifact.metadata["compute_capability"]
    batch = digits_splits().test.x[:8]
    (plan_out,) = builder.load(artifact, profile).run({"input": batch})
    session = ort.InferenceSession(str(qdq_models["int8"]), providers=["CPUExecutionProvider"])
    (ort_out,) = session.run(None, {"input": batch})
    assert (plan_out.argmax(1) == ort_out.argmax(1)).mean() >= 0.875
