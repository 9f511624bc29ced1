"""The ExecuTorch engine (`.pte`, XNNPACK): built from the torch model, run here through executorch.runtime."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edgecompress.core.errors import TargetError
from edgecompress.core.targets import load_profile
from edgecompress.engines import get_builder
from edgecompress.engines.base import TorchEngineRequest, TorchModel, engine_input

MOBILE_EXTRA = 'needs the mobile extra (pip install -e ".[mobile]"): executorch is not installed'


def _executorch_installed() -> bool:
    return get_builder("executorch").available() is None


needs_executorch = pytest.mark.skipif(not _executorch_installed(), reason=MOBILE_EXTRA)


class DepthwiseNet(torch.nn.Module):
    """Conv -> depthwise 3x3 -> pointwise -> pool -> linear: a MobileNet block at 1x16x16, small enough to build fast."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(1, 32, 3, padding=1)
        self.depthwise = torch.nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.pointwise = torch.nn.Conv2d(32, 64, 1)
        self.fc = torch.nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = torch.nn.functional.relu6(self.depthwise(x))
        x = torch.relu(self.pointwise(x))
        return self.fc(x.mean(dim=(2, 3)))


def make_depthwise_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return DepthwiseNet().eval()


def _inputs(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((count, 1, 16, 16), dtype=np.float32)


def _torch_model() -> TorchModel:
    calibration = _inputs(16, seed=1)
    return TorchModel(make_depthwise_net(), {"input": calibration[:1]}, ("output",),
                      lambda: ({"input": calibration[i:i + 1]} for i in range(len(calibration))))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The int8 and the fp32 .pte of DepthwiseNet, and the int8 one with the depthwise conv kept out of the quantizer."""
    builder = get_builder("executorch")
    profile = load_profile("android-arm64-executorch")
    root = tmp_path_factory.mktemp("pte")
    model = _torch_model()
    return {name: builder.build(model, request, profile, root / name) for name, request in {
        "int8": TorchEngineRequest("int8"), "fp32": TorchEngineRequest("fp32"),
        "kept": TorchEngineRequest("int8", ("depthwise",)),
        "all kept": TorchEngineRequest("int8", ("stem", "depthwise", "pointwise", "fc")),
    }.items()}


def test_the_phone_profiles_name_the_executorch_engine_built_from_the_torch_model():
    for name in ("android-arm64-executorch", "ios-arm64-executorch"):
        profile = load_profile(name)
        assert profile.engine == "executorch" and profile.arch == "aarch64" and profile.batch.max == 1
        assert engine_input(get_builder(profile.engine)) == "torch"
    assert engine_input(get_builder("ort-arm")) == "onnx"


def test_a_misspelt_executorch_option_is_named(tmp_path):
    from edgecompress.engines import check_profile

    path = tmp_path / "phone.toml"
    path.write_text('alias_of = "android-arm64-executorch"\n[options]\nper_chanel = false\n')
    with pytest.raises(TargetError, match="options.per_chanel"):
        check_profile(load_profile(str(path)))


def test_an_onnx_model_for_an_executorch_target_names_the_ort_phone_target(tiny_onnx, tmp_path):
    from edgecompress.core.config import BuildConfig
    from edgecompress.pipeline.pipeline import build

    config = BuildConfig(model=str(tiny_onnx), target=["android-arm64-executorch"], out=tmp_path / "out")
    with pytest.raises(TargetError) as error:
        build(config)
    assert "ONNX file" in error.value.problem and "--target android-arm64" in error.value.fix
    assert not (tmp_path / "out").exists()  # refused before any work


@needs_executorch
def test_int8_pte_runs_here_and_agrees_with_pytorch(built):
    builder, profile = get_builder("executorch"), load_profile("android-arm64-executorch")
    runner = builder.load(built["int8"], profile)
    x = _inputs(5, seed=2)
    (out,) = runner.run({"input": x})  # a batch of 5 through a batch-1 program
    with torch.no_grad():
        expected = make_depthwise_net()(torch.from_numpy(x)).numpy()
    cosine = (out * expected).sum(1) / np.linalg.norm(out, axis=1) / np.linalg.norm(expected, axis=1)
    assert out.shape == (5, 10) and cosine.min() > 0.99
    assert runner.inputs[0].name == "input" and runner.inputs[0].shape == (None, 1, 16, 16)


@needs_executorch
def test_int8_pte_is_smaller_than_fp32_and_says_where_it_is_measured(built):
    int8, fp32 = built["int8"], built["fp32"]
    assert int8.path.stat().st_size < fp32.path.stat().st_size
    assert int8.precision == "int8" and fp32.precision == "fp32"
    assert int8.metadata["measured_where"] == "x86 XNNPACK on this host"
    runtime = int8.metadata["runtime"]
    assert runtime["name"] == "executorch" and runtime["min_version"] < runtime["max_version"]
    assert int8.metadata["quantizer"]["weights"] == "int8 symmetric per-channel"


@needs_executorch
def test_a_module_kept_out_of_the_quantizer_makes_the_engine_mixed(built):
    kept = built["kept"]
    assert kept.precision == "mixed" and kept.precision_layers == {"int8": 3, "fp32": 1}
    assert kept.metadata["quantizer"]["modules_kept_float"] == ["depthwise"]
    assert kept.path.read_bytes() != built["int8"].path.read_bytes()


@needs_executorch
def test_every_module_kept_out_of_the_quantizer_computes_fp32(built):
    runner = get_builder("executorch").load(built["all kept"], load_profile("android-arm64-executorch"))
    x = _inputs(3, seed=3)
    with torch.no_grad():
        expected = make_depthwise_net()(torch.from_numpy(x)).numpy()
    assert built["all kept"].precision == "fp32" and built["all kept"].precision_layers == {"fp32": 4}
    assert np.abs(runner.run({"input": x})[0] - expected).max() < 1e-4


def _digits_files(tmp_path, evaluated: int) -> None:
    """calib.npz (16 digits) and eval.npz (`evaluated` other digits) for a tiny-net build."""
    from sklearn.datasets import load_digits

    x = (load_digits().images / 16.0).astype(np.float32)[:, None]
    np.savez(tmp_path / "calib.npz", input=x[:16])
    np.savez(tmp_path / "eval.npz", input=x[100:100 + evaluated])


@needs_executorch
def test_build_for_the_android_executorch_target_judges_the_pte_by_the_budget(tmp_path):
    from edgecompress.core.config import BuildConfig
    from edgecompress.pipeline.pipeline import build

    _digits_files(tmp_path, evaluated=40)
    config = BuildConfig(model="tests.conftest:make_tiny_net", input_shape=["1,1,8,8"], target=["android-arm64-executorch"],
                         calib=tmp_path / "calib.npz", eval_data=tmp_path / "eval.npz", out=tmp_path / "out",
                         bench_runs=10, bench_warmup=1, min_agreement=0.9)
    (report,) = build(config)
    assert report["engine"]["kind"] == "executorch" and report["engine"]["path"].endswith("engine.pte")
    assert report["fidelity"]["met"] and "x86 XNNPACK" in report["fidelity"]["validated_on"]
    assert "x86 XNNPACK on this host" in report["measured_on"]["summary"]
    assert report["measured_on"]["target_arch_matches"] is False
    names = [c["name"] for c in report["quantization"]["precision"]["candidates"]]
    assert names == ["int8", "fp32"] and report["quantization"]["precision"]["chosen"] == "int8"
    assert "XNNPACKQuantizer" in report["quantization"]["recipe"]["reason"]
    assert json.loads((tmp_path / "out" / "android-arm64-executorch" / "report.json").read_text())["engine"]["kind"] == "executorch"
    assert not (tmp_path / "out" / "android-arm64-executorch" / ".candidates").exists()


def _tiny_net_build(tmp_path, target: str, sqnr_budget: str, **options) -> dict:
    """tests.conftest's tiny net built for a phone target, judged by an output-SQNR budget; its report."""
    from edgecompress.core.config import BuildConfig
    from edgecompress.pipeline.pipeline import build

    _digits_files(tmp_path, evaluated=20)
    config = BuildConfig(model="tests.conftest:make_tiny_net", input_shape=["1,1,8,8"], target=[target],
                         calib=tmp_path / "calib.npz", eval_data=tmp_path / "eval.npz", out=tmp_path / "out",
                         bench_runs=10, bench_warmup=1, task=["regress"], fidelity_budget=[sqnr_budget], **options)
    (report,) = build(config)
    return report


@needs_executorch
def test_repair_keeps_modules_out_of_the_quantizer_then_ships_fp32_when_only_fp32_meets_the_budget(tmp_path):
    """An SQNR budget no int8 engine reaches (pooling stays int8 even with every Conv/Linear kept out): repair keeps 1,
    then both compute modules fp32, misses, and the fp32 .pte ships, said plainly, without an error."""
    report = _tiny_net_build(tmp_path, "ios-arm64-executorch", "80")  # int8 reaches 47 dB, fp16 69
    tries = report["quantization"]["tries"]
    assert [sorted(t["nodes_to_exclude"]) for t in tries][:2] == [[], [tries[1]["nodes_to_exclude"][0]]]
    assert sorted(tries[2]["nodes_to_exclude"]) == ["conv", "fc"] and not any(t["met"] for t in tries)
    # ranked by the int8 program's per-module diagnosis, which the report shows as the ONNX route's layer table
    assert {layer["node"] for layer in report["quantization"]["layers"]} == {"conv", "fc"}
    assert report["quantization"]["precision"]["chosen"] == "fp32" and report["engine"]["precision"] == "fp32"
    assert any("shipping fp32, which meets it" in line for line in report["verdict"])
    assert report["fidelity"]["met"]


@needs_executorch
def test_a_repair_candidate_executorch_cannot_lower_is_skipped_and_the_ladder_goes_on(tmp_path, monkeypatch, capsys):
    """ExecuTorch's lowering refuses some int8/float mixes (a pretrained EfficientNet-Lite0 with 4 modules kept out:
    'Weight and Input should both be quantized'). Such a candidate is one try fewer, said in a warning and in the
    repair's stop reason; the build still ends in its verdict (here fp32, the only candidate within the budget)."""
    from edgecompress.core.errors import EngineBuildError
    from edgecompress.pipeline import torch_engine

    lower = torch_engine.TorchTargetModels.build

    def refusing_two(self, request):  # the refusal ExecuTorch gave on Lite0, for the two-module candidate here
        if len(request.keep_float) == 2:
            raise EngineBuildError("ExecuTorch could not lower the model to XNNPACK: Weight and Input should both be "
                                   "quantized", "ops XNNPACK lacks must be replaced in the model")
        return lower(self, request)

    monkeypatch.setattr(torch_engine.TorchTargetModels, "build", refusing_two)
    report = _tiny_net_build(tmp_path, "ios-arm64-executorch", "80")  # int8 reaches 47 dB, fp16 69
    tries = report["quantization"]["tries"]
    assert [len(t["nodes_to_exclude"]) for t in tries] == [0, 1]  # the two-module candidate was never built
    assert "not built: keep 2 module(s) out of the quantizer" in report["quantization"]["repair"]["stop_reason"]
    assert "could not build this candidate" in capsys.readouterr().err
    assert report["quantization"]["precision"]["chosen"] == "fp32" and report["fidelity"]["met"]


@needs_executorch
def test_fp16_pte_is_the_rung_between_int8_and_fp32(tmp_path):
    """A budget int8 misses and float16 meets (output SQNR 60 dB; int8 reaches 47, float16 69): the fp16 .pte
    (XNNPACK float16, float32 at the app's inputs and outputs) is built, judged like the others, and ships labelled."""
    report = _tiny_net_build(tmp_path, "android-arm64-executorch", "60", max_excluded_layers=0)
    candidates = {c["name"]: c for c in report["quantization"]["precision"]["candidates"]}
    assert list(candidates) == ["int8", "fp16", "fp32"] and not candidates["int8"]["within_budget"]
    assert candidates["fp16"]["within_budget"] and report["quantization"]["precision"]["chosen"] == "fp16"
    assert report["engine"]["precision"] == "fp16" and report["fidelity"]["met"]
    assert any("shipping fp16" in line for line in report["verdict"])


@needs_executorch
def test_the_int8_program_is_diagnosed_per_module_against_the_fp32_module():
    """PT2E's converted program run beside the fp32 module: each Conv/Linear module's SQNR at its input and output
    and the noise it adds; a module kept out of the quantizer loses less at its output (its weights stay fp32)."""
    builder, profile = get_builder("executorch"), load_profile("android-arm64-executorch")
    model = _torch_model()
    feeds = [{"input": x[None]} for x in _inputs(8, seed=3)]
    diagnosis = builder.diagnose(model, profile, feeds)
    layers = {layer.node: layer for layer in diagnosis.layers}
    assert set(layers) == {"stem", "depthwise", "pointwise", "fc"} and diagnosis.samples == 8
    assert all(10 < layer.output_sqnr_db < 100 and layer.added_noise is not None and layer.added_noise >= 0
               for layer in layers.values())
    assert layers["stem"].input_sqnr_db > layers["fc"].input_sqnr_db  # error accumulates along the network
    kept = {layer.node: layer for layer in builder.diagnose(model, profile, feeds, TorchEngineRequest("int8", ("depthwise",))).layers}
    assert kept["depthwise"].output_sqnr_db > layers["depthwise"].output_sqnr_db
    assert kept["depthwise"].input_sqnr_db == pytest.approx(layers["depthwise"].input_sqnr_db)  # its input is still int8
