"""The ARM engine: ORT-format conversion, required-operators config, the Runner, bad models."""

from __future__ import annotations

import os

import numpy as np
import onnxruntime as ort
import pytest

from edgecompress.source.data import digits_splits
from edgecompress.engines import get_builder
from edgecompress.engines.arm import ENGINE_NAME
from edgecompress.core.errors import EngineBuildError
from edgecompress.core.targets import load_profile
from tests._int8_models import qdq_models, with_extra_node  # noqa: F401 - fixture

BATCH = digits_splits().test.x[:64]


@pytest.fixture(scope="module")
def pi5_engine(qdq_models, tmp_path_factory):
    profile = load_profile("raspberry-pi-5")
    out_dir = tmp_path_factory.mktemp("raspberry-pi-5")
    return profile, get_builder("ort-arm").build(qdq_models["arm"], profile, out_dir)


def test_build_writes_the_ort_model_and_its_required_operators_config(pi5_engine):
    _, artifact = pi5_engine
    assert artifact.path.name == ENGINE_NAME and artifact.path.read_bytes()[4:8] == b"ORTM"
    config = artifact.path.with_name("required_operators.config")
    assert config in artifact.files
    assert "QLinearConv" in config.read_text()
    assert "com.microsoft:QLinearConv@1" in artifact.metadata["required_operators"]
    assert sorted(p.name for p in artifact.path.parent.iterdir()) == [ENGINE_NAME, config.name]


def test_artifact_records_the_device_providers_and_the_cpu_fallback_notice(pi5_engine):
    _, artifact = pi5_engine
    assert artifact.metadata["device_providers"] == ["XNNPACKExecutionProvider", "CPUExecutionProvider"]
    assert "XNNPACKExecutionProvider not in this onnxruntime build" in artifact.note


def test_runner_falls_back_to_cpu_and_matches_the_int8_onnx(pi5_engine, qdq_models):
    profile, artifact = pi5_engine
    runner = get_builder("ort-arm").load(artifact, profile)
    assert runner.providers == ["CPUExecutionProvider"] and "XNNPACK" in runner.notice
    assert [t.name for t in runner.inputs] == ["input"] and runner.inputs[0].shape[1:] == (1, 32, 32)
    (ort_out,) = runner.run({"input": BATCH})
    session = ort.InferenceSession(str(qdq_models["arm"]), providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(None, {"input": BATCH})
    assert np.array_equal(ort_out.argmax(1), onnx_out.argmax(1))
    assert np.abs(ort_out - onnx_out).max() < 0.05 * np.abs(onnx_out).max()


def test_profile_without_xnnpack_has_no_notice(qdq_models, tmp_path):
    profile = load_profile("arm64")
    artifact = get_builder("ort-arm").build(qdq_models["arm"], profile, tmp_path)
    assert artifact.note is None
    assert get_builder("ort-arm").load(artifact, profile).notice is None


def test_type_reduction_profile_writes_the_typed_operator_config(qdq_models, tmp_path):
    artifact = get_builder("ort-arm").build(qdq_models["arm"], load_profile("android-arm64"), tmp_path)
    config = (tmp_path / "required_operators.config").read_text()
    assert '{"inputs"' in config and "# - engine.ort" in config  # per-op type lists, no scratch paths
    assert "com.microsoft:QLinearConv@1" in artifact.metadata["required_operators"]
    assert not any("{" in op for op in artifact.metadata["required_operators"])


def test_op_the_converter_rejects_is_named_and_nothing_is_written(qdq_models, tmp_path):
    bad = with_extra_node(qdq_models["arm"], tmp_path / "bad.onnx", "FancyNorm", "head/fancy_norm",
                          domain="com.example")
    out_dir = tmp_path / "raspberry-pi-5"
    with pytest.raises(EngineBuildError) as error:
        get_builder("ort-arm").build(bad, load_profile("raspberry-pi-5"), out_dir)
    assert "FancyNorm" in str(error.value) and "head/fancy_norm" in str(error.value)
    assert list(out_dir.iterdir()) == []


@pytest.mark.arm64_emulated
def test_ort_engine_runs_on_emulated_aarch64_and_agrees_with_x86(pi5_engine):
    from edgecompress.engines.arm64_emulated import run_emulated, unavailable_reason

    if not os.environ.get("EDGECOMPRESS_ARM64"):
        pytest.skip("opt-in: set EDGECOMPRESS_ARM64=1 (or run scripts/arm64-emulated.sh)")
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"arm64 emulation unavailable: {reason}")
    profile, artifact = pi5_engine
    x86 = get_builder("ort-arm").load(artifact, profile).run({"input": BATCH})[0]
    emulated = run_emulated({"int8": artifact.path}, {"input": BATCH}, repeats=2)["int8"]
    assert emulated.machine == "aarch64" and "emulated" in emulated.label
    assert np.array_equal(emulated.outputs[0].argmax(1), x86.argmax(1))
    assert np.abs(emulated.outputs[0] - x86).max() < 0.05 * np.abs(x86).max()


def test_report_warns_when_this_hosts_u8s8_kernels_can_understate_device_accuracy(qdq_models):
    from edgecompress.engines.arm import host_caveats
    from edgecompress.quantize.isa import Isa

    profile = load_profile("raspberry-pi-5")
    avx2, vnni = Isa("x86_64", frozenset({"avx2"})), Isa("x86_64", frozenset({"avx2", "avx512_vnni"}))
    assert any("no VNNI" in line for line in host_caveats(profile, qdq_models["uint8"], avx2))
    assert not any("no VNNI" in line for line in host_caveats(profile, qdq_models["uint8"], vnni))
    assert not any("no VNNI" in line for line in host_caveats(profile, qdq_models["arm"], avx2))
    assert any("not from the device" in line for line in host_caveats(profile, qdq_models["arm"], vnni))
    assert host_caveats(profile, qdq_models["arm"], Isa("aarch64", frozenset({"dotprod"}))) == []


@pytest.fixture(scope="module")
def pi5_int8(tmp_path_factory):
    """The int8 model quantized with the Raspberry Pi's own recipe (what `edgecompress build` gives an ARM target)."""
    from edgecompress.quantize.isa import recipe_for_target
    from tests._int8_models import export_fp32, quantize

    root = tmp_path_factory.mktemp("pi5-int8")
    return quantize(export_fp32(root / "model.fp32.onnx"), root / "model.int8.onnx",
                    recipe_for_target(load_profile("raspberry-pi-5")))


def test_runtime_optimization_style_ships_the_converted_ort_and_applies_its_saved_optimizations(pi5_int8, tmp_path):
    """The converter writes `engine.with_runtime_opt.ort` for this style; the session must be told to apply it."""
    profile = load_profile("raspberry-pi-5").model_copy(
        update={"options": {**load_profile("raspberry-pi-5").options, "optimization_style": "Runtime"}})
    artifact = get_builder("ort-arm").build(pi5_int8, profile, tmp_path)
    assert artifact.path == tmp_path / ENGINE_NAME and artifact.path.read_bytes()[4:8] == b"ORTM"
    assert artifact.metadata["session_config"] == {"optimization.minimal_build_optimizations": "apply"}
    runner = get_builder("ort-arm").load(artifact, profile)
    applied = runner.session.get_session_options().get_session_config_entry("optimization.minimal_build_optimizations")
    assert applied == "apply"
    (ort_out,) = runner.run({"input": BATCH})
    session = ort.InferenceSession(str(pi5_int8), providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(None, {"input": BATCH})
    assert np.array_equal(ort_out.argmax(1), onnx_out.argmax(1))
    assert np.abs(ort_out - onnx_out).max() < 0.05 * np.abs(onnx_out).max()


def session_settings_of(runner) -> tuple[int, str]:
    options = runner.session.get_session_options()
    return options.intra_op_num_threads, options.get_session_config_entry("session.intra_op.allow_spinning")


def test_engine_and_its_fp32_reference_are_timed_with_the_same_session_settings(pi5_engine, qdq_models):
    from edgecompress.engines.ort_cpu import OrtRunner

    profile, artifact = pi5_engine
    engine = get_builder("ort-arm").load(artifact, profile)
    reference = OrtRunner(qdq_models["fp32"], threads=profile.threads)  # as pipeline.measure_engine makes it
    assert profile.threads == 4
    assert session_settings_of(engine) == session_settings_of(reference) == (min(4, os.cpu_count()), "0")


def test_the_missing_provider_notice_is_printed_once_per_process_not_per_engine_load(pi5_engine, capsys):
    from edgecompress.core import progress

    profile, artifact = pi5_engine
    progress._warned.discard(get_builder("ort-arm").load(artifact, profile).notice)  # as if this process were new
    capsys.readouterr()
    for _ in range(3):  # repair and the precision choice load the engine many times
        get_builder("ort-arm").load(artifact, profile)
    assert capsys.readouterr().err.count("XNNPACKExecutionProvider not in this onnxruntime build") == 1
