"""`edgecompress.build()` from a Python session: an in-memory module and data in, the CLI's engines and reports out."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import edgecompress
from edgecompress import api
from edgecompress.core.artifacts import sha256_file
from edgecompress.core.config import BuildConfig, describe
from edgecompress.core.errors import CalibrationError, ConfigError, DeviceOnlyEngineError, TargetError
from edgecompress.source.data import digits_splits
from tests.conftest import make_tiny_net

# fast and deterministic: few timed runs, int8 forced (so the int8 file is the engine), the quick exporter
FAST = {"bench_runs": 10, "bench_warmup": 0, "precision": "int8", "exporter": "torchscript", "diagnose": False}
CALIB_COUNT = 128


def digits_loader(split: str, count: int, batch_size: int = 32) -> torch.utils.data.DataLoader:
    """Real digits images (1×32×32) with their labels, as (x, y) batches."""
    part = getattr(digits_splits(), split)
    dataset = torch.utils.data.TensorDataset(torch.from_numpy(part.x[:count]), torch.from_numpy(part.y[:count]))
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[api.BuildResult, torch.nn.Module, Path]:
    """A TinyNet (random weights) built for cpu from a DataLoader of (x, y) batches, no input shape given."""
    out = tmp_path_factory.mktemp("api") / "build"
    module = make_tiny_net()
    result = edgecompress.build(module, calib=digits_loader("train", CALIB_COUNT), eval_data=digits_loader("test", 96),
                                out=out, progress=False, **FAST)
    return result, module, out


def test_a_module_and_a_dataloader_build_an_engine_for_cpu(built):
    result, _, out = built
    engine = result.engines["cpu"]
    assert engine.path is not None and engine.path.is_file() and engine.report_path.is_file()
    assert engine.precision == "int8" and engine.kind == "ort-cpu" and engine.size_bytes > 0
    assert engine.fidelity is not None and engine.fidelity.met and engine.latency_ms_p50 is not None
    report = result.reports[0]
    assert report["model"]["inputs"][0]["shape"][1:] == [1, 32, 32]  # the first calibration sample's shape
    assert report["quantization"]["calibration"]["samples"] == CALIB_COUNT
    assert report["accuracy"]["fp32"] is not None  # the (x, y) batches' labels measured accuracy


def test_summary_has_one_line_for_the_target_with_its_fidelity(built):
    summary = built[0].summary()
    row = next(line for line in summary.splitlines() if line.startswith("cpu"))
    assert "ort-cpu int8" in row and "Δtop-1" in row and "≤ 1.00 pt" in row


def test_the_loaded_engine_computes_what_the_module_does(built):
    result, module, _ = built
    batch = torch.from_numpy(digits_splits().test.x[:20])
    run = result.load("cpu")
    outputs = run(batch)
    with torch.no_grad():
        expected = module(batch).numpy()
    assert isinstance(outputs, np.ndarray) and outputs.shape == (20, 10)
    assert np.abs(outputs - expected).max() < 0.1 * np.abs(expected).max()
    np.testing.assert_array_equal(run(batch.numpy().astype(np.float64)), outputs)  # numpy in, cast to the input dtype
    np.testing.assert_array_equal(run({"input": batch.numpy()}), outputs)


def test_in_memory_and_cli_routes_share_the_export_and_int8_cache_keys(built, tmp_path):
    """The same weights as a CLI factory with --weights and the same arrays as a calibration .npz: the same fp32 ONNX
    bytes and the same int8 file (its name is the content hash of fp32 bytes, calibration arrays and recipe)."""
    from edgecompress.pipeline.pipeline import build as pipeline_build

    result, module, out = built
    weights, calib = tmp_path / "weights.pt", tmp_path / "calib.npz"
    torch.save(module.state_dict(), weights)
    train = digits_splits().train
    np.savez(calib, x=train.x[:CALIB_COUNT], y=train.y[:CALIB_COUNT])
    config = BuildConfig(model="tests.conftest:make_tiny_net", weights=weights, input_shape=["1,1,32,32"], calib=calib,
                         out=tmp_path / "cli", **FAST)
    cli_report = pipeline_build(config)[0]
    assert sha256_file(tmp_path / "cli" / "model.fp32.onnx") == sha256_file(out / "model.fp32.onnx")
    in_memory_int8 = Path(result.reports[0]["quantization"]["model_path"]).name
    assert in_memory_int8.startswith("model.int8.") and Path(cli_report["quantization"]["model_path"]).name == in_memory_int8
    assert cli_report["quantization"]["calibration"]["sha256"] == result.reports[0]["quantization"]["calibration"]["sha256"]


def test_an_onnx_path_builds_with_numpy_calibration_picked_by_transform_fn(built, tmp_path):
    x = digits_splits().train.x[:64]
    batches = [{"image": x[i:i + 16], "label": np.zeros(16)} for i in range(0, 64, 16)]
    result = edgecompress.build(str(built[2] / "model.fp32.onnx"), calib=batches, transform_fn=lambda batch: batch["image"],
                                out=tmp_path / "onnx", progress=False, **FAST)
    assert result.engines["cpu"].path is not None and result.engines["cpu"].path.is_file()
    assert result.reports[0]["quantization"]["calibration"]["samples"] == 64


def test_an_onnx_model_proto_is_saved_and_built(built, tmp_path):
    proto = onnx.load(str(built[2] / "model.fp32.onnx"))
    result = edgecompress.build(proto, calib=digits_splits().train.x[:64], out=tmp_path / "proto", progress=False, **FAST)
    assert (tmp_path / "proto" / "source.onnx").is_file() and result.engines["cpu"].precision == "int8"


# --- options: the BuildConfig fields, checked before any work --------------------------------------------------------


def test_an_unknown_option_names_itself_and_the_closest_valid_ones(tmp_path):
    with pytest.raises(ConfigError) as error:
        edgecompress.build(make_tiny_net(), calib=np.zeros((4, 1, 8, 8), np.float32), out=tmp_path, max_acuracy_drop=1.0)
    assert "max_acuracy_drop" in str(error.value) and "max_accuracy_drop" in str(error.value)


def test_a_bad_option_value_names_the_field_without_a_pydantic_traceback(tmp_path):
    with pytest.raises(ConfigError, match="bench_runs"):
        edgecompress.build(make_tiny_net(), calib=np.zeros((4, 1, 8, 8), np.float32), out=tmp_path, bench_runs=1)


def test_every_config_field_is_a_keyword_of_build(monkeypatch, tmp_path):
    """Each BuildConfig field is a parameter of build() (model, calib, ...) or an option that reaches the config."""
    configs: list[BuildConfig] = []
    monkeypatch.setattr(api, "_run", lambda config, *rest: configs.append(config) or [])
    parameters = inspect.signature(edgecompress.build).parameters
    for name, field in BuildConfig.model_fields.items():
        if name in parameters:
            continue
        value = field.get_default(call_default_factory=True)
        edgecompress.build("model.onnx", calib=None, out=tmp_path, **{name: value})
        assert getattr(configs[-1], name) == value or value is None, name
    assert {"model", "calib", "eval_data", "out", "input_shape"} <= set(parameters)


def test_the_cli_options_are_the_config_fields_with_their_descriptions():
    from edgecompress.cli.build import build as build_command

    cli_only = {"config", "bundle", "sign", "passphrase"}
    options = {name: p.default for name, p in inspect.signature(build_command).parameters.items() if name not in cli_only}
    assert set(options) <= set(BuildConfig.model_fields)
    for name, option in options.items():
        assert option.help == describe(name), name


def test_progress_false_is_quiet_during_the_build_only(monkeypatch, tmp_path):
    from edgecompress.core import progress

    monkeypatch.setattr(progress, "quiet", False)
    seen: list[bool] = []
    monkeypatch.setattr(api, "_run", lambda *args: seen.append(progress.quiet) or [])
    edgecompress.build("model.onnx", calib=None, out=tmp_path, progress=False)
    assert seen == [True] and progress.quiet is False


# --- data: bad calibration fails before the model is exported -------------------------------------------------------


@pytest.mark.parametrize("calib, phrase", [
    ([], "no batches"),
    (iter(()), "no batches"),
    (np.full((8, 1, 32, 32), np.nan, np.float32), "NaN"),
    ([(torch.zeros(4, 1, 32, 32), torch.zeros(4)), (torch.zeros(4, 1, 16, 16), torch.zeros(4))], "do not join"),
    (42, "int"),
])
def test_bad_calibration_data_is_a_calibration_error(tmp_path, calib, phrase):
    with pytest.raises(CalibrationError, match=phrase):
        edgecompress.build(make_tiny_net(), calib=calib, out=tmp_path, progress=False)


def test_calibration_is_capped_at_calib_count(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(api, "_run", lambda config, source, calibration, held_out: seen.append(calibration) or [])
    edgecompress.build(make_tiny_net(), calib=digits_loader("train", 100, batch_size=16), out=tmp_path, calib_count=40)
    assert seen[0].inputs["0"].shape == (40, 1, 32, 32) and seen[0].labels is not None and len(seen[0].labels) == 40


# --- loading -------------------------------------------------------------------------------------------------------


def test_a_device_kit_cannot_be_loaded_here_and_an_unknown_target_is_named(built):
    result, _, out = built
    kit = dict(result.reports[0], target="jetson", engine=dict(result.reports[0]["engine"], path=None, runnable_here=False))
    kits = api.BuildResult.from_reports([kit], out)
    with pytest.raises(DeviceOnlyEngineError, match="on the device"):
        kits.load("jetson")
    with pytest.raises(TargetError, match="jetson"):
        kits.load("cpu")
