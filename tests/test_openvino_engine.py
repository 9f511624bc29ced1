"""The intel-cpu target: OpenVINO's CPU plugin on the int8 QDQ model, ONNX Runtime timed beside it on the same file,
the fastest within the budget shipped; the bundle's runner loads whichever shipped."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgecompress.core.config import BuildConfig
from edgecompress.core.errors import TargetError
from edgecompress.core.targets import load_profile
from edgecompress.engines import check_profile, get_builder
from edgecompress.source.data import digits_splits

needs_openvino = pytest.mark.skipif(importlib.util.find_spec("openvino") is None,
                                    reason='openvino is not installed (pip install -e ".[openvino]")')


@pytest.fixture(scope="module")
def intel_build(tmp_path_factory):
    from edgecompress.pipeline.pipeline import build
    from tests._int8_models import export_fp32

    root = tmp_path_factory.mktemp("intel")
    fp32 = export_fp32(root / "fp32.onnx")
    splits = digits_splits()
    np.savez(root / "calib.npz", input=splits.val.x[:64])
    np.savez(root / "eval.npz", input=splits.test.x[:64], y=splits.test.y[:64])
    config = BuildConfig(model=str(fp32.path), target=["intel-cpu"], calib=root / "calib.npz", eval_data=root / "eval.npz",
                         out=root / "out", bench_runs=10, bench_warmup=1, precision="int8")
    report = build(config)[0]
    return config.out / "intel-cpu", report


@needs_openvino
def test_openvino_engine_runs_the_qdq_model_like_onnx_runtime(tmp_path) -> None:
    from edgecompress.engines.ort_cpu import OrtCpuBuilder
    from tests._int8_models import export_fp32, quantize
    from edgecompress.quantize.recipe import QuantRecipe

    fp32 = export_fp32(tmp_path / "fp32.onnx")
    int8 = quantize(fp32, tmp_path / "int8.onnx", QuantRecipe())
    profile = load_profile("intel-cpu")
    builder = get_builder("openvino")
    artifact = builder.build(int8, profile, tmp_path / "ov")
    assert artifact.kind == "openvino" and artifact.path is not None and artifact.path.suffix == ".xml"
    assert artifact.precision == "int8" and (tmp_path / "ov" / "engine.bin").is_file()
    assert artifact.metadata["compile_config"]["INFERENCE_PRECISION_HINT"] == "f32"
    runner = builder.load(artifact, profile)
    feeds = {"input": digits_splits().test.x[:8]}
    openvino_logits = runner.run(feeds)[0]
    ort = OrtCpuBuilder()
    ort_logits = ort.load(ort.build(int8, profile, tmp_path / "ort"), profile).run(feeds)[0]
    assert openvino_logits.shape == ort_logits.shape == (8, 10)
    assert (openvino_logits.argmax(1) == ort_logits.argmax(1)).mean() >= 0.75  # both int8: rounding differs, classes agree
    assert runner.inputs[0].name == "input" and runner.outputs[0].shape[-1] == 10


@needs_openvino
def test_openvino_engine_time_is_split_by_operator_from_its_performance_counters(tmp_path) -> None:
    from edgecompress.measure.op_profile import profile_openvino
    from edgecompress.quantize.recipe import QuantRecipe
    from tests._int8_models import export_fp32, quantize

    int8 = quantize(export_fp32(tmp_path / "fp32.onnx"), tmp_path / "int8.onnx", QuantRecipe())
    artifact = get_builder("openvino").build(int8, load_profile("intel-cpu"), tmp_path / "ov")
    profile = profile_openvino(artifact.path, {"input": digits_splits().test.x[:1]}, artifact.metadata["compile_config"],
                               runs=3, warmup=1)
    convolutions = [o for o in profile.by_op if o.op_type == "Convolution"]
    assert convolutions and convolutions[0].kind == "int8" and convolutions[0].ms > 0
    assert sum(o.fraction for o in profile.by_op) == pytest.approx(1.0, abs=1e-6)
    assert profile.islands is None and profile.by_kind["int8"] > 0


@needs_openvino
def test_intel_cpu_build_times_openvino_and_onnx_runtime_on_the_same_file_and_ships_the_faster(intel_build) -> None:
    target_dir, report = intel_build
    candidates = {c["name"]: c for c in report["quantization"]["precision"]["candidates"]}
    assert {"int8", "int8 on ort-cpu", "fp32", "fp32 on ort-cpu"} <= set(candidates)
    assert candidates["int8 on ort-cpu"]["runtime"] == "ort-cpu" and candidates["int8"]["runtime"] is None
    assert candidates["int8"]["model_path"] == candidates["int8 on ort-cpu"]["model_path"]
    assert all(c["latency_ms_p50"] > 0 and c["agreement"] is not None for c in candidates.values())
    chosen = report["quantization"]["precision"]["chosen"]
    assert chosen in ("int8", "int8 on ort-cpu")
    pair = [candidates["int8"], candidates["int8 on ort-cpu"]]
    eligible = [c for c in pair if c["within_budget"]] or pair
    assert candidates[chosen]["latency_ms_p50"] == min(c["latency_ms_p50"] for c in eligible)
    assert report["engine"]["kind"] == ("openvino" if chosen == "int8" else "ort-cpu")
    summary = " ".join(report["quantization"]["precision"]["summary"])
    assert "Runtime:" in summary and "openvino" in summary and "ort-cpu" in summary
    assert Path(report["engine"]["path"]).is_file() and not (target_dir / ".candidates").exists()


@needs_openvino
def test_inspect_breaks_down_the_intel_cpu_engine_whichever_runtime_shipped(intel_build, monkeypatch, capsys) -> None:
    from tests.cli_support import run_cli

    target_dir, report = intel_build
    capsys.readouterr()
    assert run_cli(monkeypatch, "inspect", target_dir, "--runs", "3") == 0
    printed = capsys.readouterr().out
    tool = "OpenVINO performance counters" if report["engine"]["kind"] == "openvino" else "ONNX Runtime profiler"
    assert f"engine time by operator type ({tool})" in printed and "ms of kernels per run" in printed


@needs_openvino
def test_openvino_engine_ships_in_a_bundle_the_device_runner_loads(tmp_path) -> None:
    """An OpenVINO engine, shipped: the manifest names the runtime and the bundled run.py loads and self-tests it."""
    from edgecompress.ship.bundle import build_bundle
    from edgecompress.ship.verify import verify_bundle
    from tests.ship_support import make_build_target

    target_dir = make_build_target(tmp_path / "run")
    profile = load_profile("intel-cpu")
    artifact = get_builder("openvino").build(target_dir / "engine.onnx", profile, target_dir)
    report = json.loads((target_dir / "report.json").read_text())
    report["engine"].update(kind="openvino", path=str(artifact.path), files=[str(f) for f in artifact.files],
                            metadata=artifact.metadata)
    report["profile"] = profile.summary()
    report["target"] = "intel-cpu"
    (target_dir / "report.json").write_text(json.dumps(report))
    bundle = build_bundle(target_dir, tmp_path / "b.tar.gz")
    root = verify_bundle(bundle.path, allow_unsigned=True, extract_to=tmp_path / "device").root
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["engine"]["kind"] == "openvino" and manifest["engine"]["path"] == "engine/engine.xml"
    assert manifest["runtime"]["openvino"]["compile_config"]["INFERENCE_PRECISION_HINT"] == "f32"
    assert "onnxruntime" not in manifest["runtime"] and manifest["selftest"]["source"] == "engine"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "run.py", "--verify", "--selftest", "--allow-unsigned"], cwd=root, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "engine loads" in result.stdout and "self-test passed" in result.stdout


def test_a_profile_with_a_misspelt_openvino_option_fails_before_any_work(tmp_path) -> None:
    text = (Path(load_profile("intel-cpu").source).read_text()
            .replace('inference_precision = "f32"', 'inference_precision = "fp32"'))
    (tmp_path / "board.toml").write_text(text)
    if importlib.util.find_spec("openvino") is None:
        pytest.skip('openvino is not installed (pip install -e ".[openvino]"): the missing runtime is reported first')
    with pytest.raises(TargetError, match="inference_precision 'fp32' is unknown"):
        check_profile(load_profile(str(tmp_path / "board.toml")))
