"""TensorRT: the on-device build kit, trtexec flags per profile, preflight, and (with a GPU) real plans."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgecompress.source.data import digits_splits
from edgecompress.device import trt_device
from edgecompress.engines import get_builder
from edgecompress.engines.tensorrt import KIT_DIR, PLAN_NAME, TensorRTBuilder, write_build_kit
from edgecompress.engines.trt_preflight import _check_node, operator_table, preflight
from edgecompress.core.errors import EngineBuildError
from edgecompress.core.targets import load_profile
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
    assert script.read_text() == open(trt_device.__file__).read()
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


@pytest.mark.parametrize("op_type", ["Mod", "NonZero", "OneHot", "Shrink", "MeanVarianceNormalization"])
def test_preflight_accepts_what_onnx_tensorrt_lists_as_supported_on_tensorrt_8(qdq_models, tmp_path, op_type):
    """onnx-tensorrt's own table (8.5 GA onwards) marks these supported; refusing them refused valid models."""
    model = with_extra_node(qdq_models["int8"], tmp_path / f"{op_type}.onnx", op_type, f"head/{op_type}")
    assert preflight(model, trt_major=8).errors == []
    assert operator_table(8).operators[op_type] is True


def test_preflight_knows_what_tensorrt_10_added(qdq_models, tmp_path):
    model = with_extra_node(qdq_models["int8"], tmp_path / "hardmax.onnx", "Hardmax", "head/hardmax")
    assert [i.op_type for i in preflight(model, trt_major=8).errors] == ["Hardmax"]
    assert preflight(model, trt_major=10).errors == []


@pytest.mark.parametrize("major", [8, 10])
def test_operator_tables_are_onnx_tensorrts_and_say_where_they_came_from(major):
    table = operator_table(major)
    source = table.sources[0]
    assert source["repo"] == "onnx/onnx-tensorrt" and source["path"] == "docs/operators.md" and source["date"]
    assert {"Conv", "QuantizeLinear", "DequantizeLinear", "Gemm", "Resize"} <= table.supported()
    assert {"QLinearConv", "ConvInteger", "MatMulInteger", "Det", "Unique"} <= table.unsupported()
    assert table.supported() | table.unsupported() == set(table.operators)


def test_operator_table_for_tensorrt_8_is_the_recorded_commit_with_the_8_6_additions():
    table = operator_table(8)
    assert table.sources[0]["commit"] == "6d0ab7be324d02c7feb3a306b6fdbeae84f71ddc" and table.opset_max == 17
    assert len(table.supported()) == 145 and len(table.unsupported()) == 36  # 142 Y + 3 from the 8.6 changelog
    assert {"GroupNormalization", "LayerNormalization", "IsInf"} <= table.supported()  # 8.6 EA changelog


@pytest.mark.parametrize("major", [8, 10])
def test_every_operator_the_table_refuses_is_refused_and_every_one_it_supports_passes(major):
    """Preflight follows the table exactly (per-node checks beyond it only concern attributes and Q/DQ)."""
    table = operator_table(major)
    for op_type, supported in table.operators.items():
        node = onnx.helper.make_node(op_type, ["x"], ["y"], name=op_type)
        problem = _check_node(node, major, {}) or ""
        assert (f"not supported by TensorRT {major}'s ONNX parser" not in problem) == supported, (op_type, problem)


def test_operators_added_after_10_0_warn_and_undocumented_ones_warn(qdq_models, tmp_path):
    stft = with_extra_node(qdq_models["int8"], tmp_path / "stft.onnx", "STFT", "head/stft")
    [warning] = preflight(stft, trt_major=10).warnings
    assert preflight(stft, trt_major=10).errors == [] and "needs TensorRT >= 10.5" in warning.problem
    swish = with_extra_node(qdq_models["int8"], tmp_path / "swish.onnx", "Swish", "head/swish")
    [undocumented] = preflight(swish, trt_major=10).warnings
    assert "not in TensorRT 10's operator table" in undocumented.problem


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


def test_gpu_probe_uses_cuda_python_13_runtime_bindings_and_reports_no_gpu_here():
    """cuda-python 13 removed `cuda.cudart`; the probe asks `cuda.bindings.runtime` and needs no torch."""
    pytest.importorskip("cuda.bindings.runtime", reason="cuda-python is not installed (pip install -e .[dev])")
    runtime = trt_device.cuda_runtime()
    assert runtime.__name__ == "cuda.bindings.runtime"
    error, _count = runtime.cudaGetDeviceCount()  # a real CUDA call: no driver or no device on this host
    if int(error) == 0 and _count > 0:
        pytest.skip("this host has a CUDA GPU")
    assert trt_device.gpu_info() == {"gpu": "unknown", "compute_capability": "unknown"}


@pytest.fixture(scope="module")
def jetson_bundle_root(tmp_path_factory):
    """A Jetson bundle (the kit TensorRTBuilder writes here), unpacked as the device would."""
    from edgecompress.ship.bundle import build_bundle
    from edgecompress.ship.verify import verify_bundle
    from tests.ship_support import build_for_target

    work = tmp_path_factory.mktemp("jetson-bundle")
    bundle = build_for_target(work / "run", "jetson")
    archive = build_bundle(bundle, work / "jetson.tar.gz").path
    return verify_bundle(archive, allow_unsigned=True, extract_to=work / "device").root


def test_device_turns_the_kit_into_a_plan_with_the_kits_own_trtexec_line(jetson_bundle_root, tmp_path):
    from edgecompress.device.run import DEVICE_PLAN, load_manifest, plan_build_command

    root = jetson_bundle_root
    settings = json.loads((root / "engine" / "build_settings.json").read_text())
    cache = tmp_path / "cache" / "timing.cache"
    command = plan_build_command(root, settings, "/usr/src/tensorrt/bin/trtexec", cache)
    kit_line = (root / "engine" / "build_engine.sh").read_text().strip().splitlines()[-1].split()
    assert command[:3] == ["/usr/src/tensorrt/bin/trtexec", f"--onnx={root}/engine/model.int8.onnx",
                           f"--saveEngine={root}/{DEVICE_PLAN}"]
    assert f"--timingCacheFile={cache}" in command  # kept outside the release: the next build reuses it
    same_flags = [flag for flag in kit_line[3:] if not flag.startswith("--timingCacheFile")]
    assert command[3:-1] == same_flags and "--int8" in same_flags and "--noTF32" in same_flags  # the label's flags only
    assert load_manifest(root)["runtime"]["tensorrt"]["build_on_device"] is True


def test_building_the_plan_on_a_device_without_gpu_or_tensorrt_is_refused_clearly(jetson_bundle_root):
    done = subprocess.run([sys.executable, "run.py", "--build-engine"], cwd=jetson_bundle_root, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1
    assert "error: cannot build the TensorRT engine on this device: no NVIDIA GPU is visible" in done.stderr
    assert "no `tensorrt` Python module and no trtexec (looked in PATH and /usr/src/tensorrt/bin/trtexec)" in done.stderr
    assert not (jetson_bundle_root / "device-built" / "engine.plan").exists()


def test_selftest_before_the_plan_is_built_says_how_to_build_it(jetson_bundle_root):
    done = subprocess.run([sys.executable, "run.py", "--selftest"], cwd=jetson_bundle_root, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1 and "it is built on the device from the bundle's kit" in done.stderr
    assert "python3 run.py --build-engine" in done.stderr


def test_trtexec_runner_feeds_raw_inputs_and_exports_outputs(tmp_path):
    runner = trt_device.TrtexecRunner(tmp_path / "engine.plan", "/usr/src/tensorrt/bin/trtexec", ["logits"])
    command = runner.command({"input": np.zeros((8, 1, 32, 32), np.float32)}, tmp_path)
    assert command == ["/usr/src/tensorrt/bin/trtexec", f"--loadEngine={tmp_path}/engine.plan",
                       f"--loadInputs=input:{tmp_path}/input_0.bin", "--shapes=input:8x1x32x32",
                       f"--exportOutput={tmp_path}/outputs.json", "--iterations=1", "--warmUp=0", "--duration=0",
                       "--avgRuns=1"]


@pytest.mark.gpu
@pytest.mark.skipif(GPU_REASON is not None, reason=f"building a plan on the device needs TensorRT and a GPU: {GPU_REASON}")
def test_kit_bundle_builds_its_plan_and_self_tests_against_fp32_on_a_gpu_host(tmp_path):
    """The Jetson road on an x86 GPU host: kit bundle -> run.py builds the plan -> self-test vs the fp32 reference."""
    from edgecompress.ship.bundle import build_bundle
    from edgecompress.ship.verify import verify_bundle
    from tests.ship_support import build_for_target

    target = build_for_target(tmp_path / "run", "gpu")
    if json.loads((target / "report.json").read_text())["engine"]["path"] is not None:
        pytest.skip("this GPU host builds the plan itself; the kit road is for other devices")
    root = verify_bundle(build_bundle(target, tmp_path / "gpu.tar.gz").path, allow_unsigned=True,
                         extract_to=tmp_path / "device").root
    run = [sys.executable, "run.py", "--verify", "--build-engine", "--selftest"]
    env = {**__import__("os").environ, "EDGECOMPRESS_CACHE": str(tmp_path / "cache")}
    first = subprocess.run(run, cwd=root, capture_output=True, text=True, timeout=600, env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "built device-built/engine.plan on this device" in first.stdout and "self-test passed" in first.stdout
    again = subprocess.run(run, cwd=root, capture_output=True, text=True, timeout=600, env=env)
    assert again.returncode == 0 and "already built from this kit" in again.stdout
    assert (tmp_path / "cache" / "tensorrt" / "timing.cache").is_file()


def test_trtexec_exported_outputs_are_read_back_in_the_manifests_order(tmp_path):
    """The layout trtexec's exportJSONOutput writes (TensorRT samples/common/sampleReporting.cpp)."""
    exported = tmp_path / "outputs.json"
    exported.write_text('[\n  { "name" : "boxes"\n  , "dimensions" : "2x1"\n  , "values" : [ 0.5, 1 ]\n  }\n'
                        ', { "name" : "logits"\n  , "dimensions" : "2x3"\n  , "values" : [ 1, 2, 3, 4, 5, 6 ]\n  }\n]\n')
    logits, boxes = trt_device.read_exported_outputs(exported, ["logits", "boxes"])
    assert logits.shape == (2, 3) and logits[1].tolist() == [4, 5, 6] and boxes.tolist() == [[0.5], [1.0]]
    with pytest.raises(RuntimeError, match="no output named scores"):
        trt_device.read_exported_outputs(exported, ["scores"])
