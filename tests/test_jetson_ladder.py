"""Device kits (TensorRT on a Jetson) run the same accuracy ladder as engines built here, judged on this host's
simulation of the device's numerics: repair when int8 misses, int8+fp16 for the layers int8 leaves out, fp16
when int8 cannot meet the budget; the kit's label and its trtexec / build_engine.py flags follow the graph."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from edgecompress.calib.load import calibration_set_from_arrays
from edgecompress.core.targets import load_profile
from edgecompress.engines.base import onnx_precision
from edgecompress.engines.ort_cpu import OrtRunner
from edgecompress.export.graph import model_io
from edgecompress.quantize.float16 import fp16_rounded, mark_float_layers
from edgecompress.quantize.isa import recipe_for_target
from edgecompress.quantize.static import quantize_model
from edgecompress.source.data import digits_splits
from tests.cli_support import run_cli

TRT_PROFILES = {  # TensorRT 10 (JetPack 6.1+) as shipped, and a JetPack 6.0 board: TensorRT 8.6
    "trt10": "jetson-orin-nano",
    "trt8": 'alias_of = "jetson-orin-nano"\ndescription = "Orin Nano on JetPack 6.0"\n[options]\ntensorrt_major = 8\n',
}


class ResidualDetector(nn.Module):
    """A YOLOv8-shaped detector on 8×8 digits: a stem, a residual block (Conv-SiLU-Conv + Add), per-cell box and
    class convs concatenated to [N, 6, 64], then the decode tail: a DFL-like 1x1 conv on the box rows, boxes in
    pixels and sigmoid scores. Its boxes are large and its scores high, so every image has detections to match."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.SiLU(), nn.Conv2d(8, 8, 3, padding=1))
        self.box = nn.Conv2d(8, 4, 1)
        self.cls = nn.Conv2d(8, 2, 1)
        self.dfl = nn.Conv2d(4, 4, 1)  # 2D: TensorRT 8 convolves 2D or 3D only
        with torch.no_grad():
            self.cls.bias.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = torch.nn.functional.silu(self.stem(x))
        features = features + self.block(features)
        head = torch.cat([self.box(features), self.cls(features)], 1).reshape(-1, 6, 64)
        boxes, scores = head.split([4, 2], dim=1)
        boxes = torch.sigmoid(self.dfl(boxes.reshape(-1, 4, 1, 64)).reshape(-1, 4, 64)) * 64.0
        return torch.cat([boxes, torch.sigmoid(scores)], 1)


def export(path: Path) -> Path:
    sample = torch.from_numpy(digits_splits().val.x[:1])
    torch.onnx.export(ResidualDetector().eval(), sample, str(path), input_names=["input"], output_names=["detections"],
                      dynamic_axes={"input": {0: "n"}, "detections": {0: "n"}}, dynamo=False)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("jetson-ladder")
    splits = digits_splits()
    np.savez(folder / "calib.npz", input=splits.train.x[:48])
    np.savez(folder / "eval.npz", input=splits.test.x[:48])
    export(folder / "detector.onnx")
    (folder / "orin-trt8.toml").write_text(TRT_PROFILES["trt8"])
    return folder


def target_of(files: Path, trt: str) -> str:
    return str(files / "orin-trt8.toml") if trt == "trt8" else TRT_PROFILES[trt]


def build(monkeypatch, files: Path, out: Path, target: str, *extra) -> tuple[int, dict]:
    code = run_cli(monkeypatch, "build", "-m", files / "detector.onnx", "--calib", files / "calib.npz",
                   "--eval-data", files / "eval.npz", "--out", out, "--target", target, "--equalize", "off", *extra)
    name = Path(target).stem if target.endswith(".toml") else target
    return code, json.loads((out / name / "report.json").read_text())


@pytest.fixture(scope="module")
def mixed_kits(files, tmp_path_factory):
    """The detector built with the defaults for both TensorRT majors: the decode tail's DFL conv stays out of int8."""
    monkeypatch = pytest.MonkeyPatch()
    try:
        return {trt: build(monkeypatch, files, tmp_path_factory.mktemp(trt), target_of(files, trt)) for trt in TRT_PROFILES}
    finally:
        monkeypatch.undo()


@pytest.mark.parametrize("trt", TRT_PROFILES)
def test_kit_runs_the_layers_int8_leaves_out_in_fp16_and_says_int8_fp16(mixed_kits, trt):
    code, report = mixed_kits[trt]
    assert code == 0
    engine = report["engine"]
    assert engine["precision"] == "mixed" and engine["precision_layers"] == {"int8": 5, "fp16": 1}  # the DFL conv
    assert engine["metadata"]["build_settings"]["label"] == "mixed"
    assert report["quantization"]["precision"]["chosen"] == "int8+fp16"
    assert any("Shipping int8+fp16" in line for line in report["verdict"])
    assert any(line.startswith("int8+fp16: 1 compute layer(s)") and "/dfl/Conv" in line for line in report["verdict"])
    assert "rounded to fp16" in report["fidelity"]["validated_on"] and report["fidelity"]["met"]
    summary = (Path(report["engine"]["files"][0]).parent.parent / "report.md").read_text()
    assert "int8+fp16 (1 fp16 of 6 compute layers)" in summary


@pytest.mark.parametrize("trt", TRT_PROFILES)
def test_mixed_kit_is_built_with_int8_and_fp16_flags_in_trtexec_and_build_engine_py(mixed_kits, trt):
    _, report = mixed_kits[trt]
    kit = Path(report["engine"]["files"][0]).parent
    settings = json.loads((kit / "build_settings.json").read_text())
    assert settings["precisions"] == ["int8", "fp16"]  # what build_engine.py sets as builder flags
    script = (kit / "build_engine.sh").read_text()
    assert "--int8 --fp16 --noTF32" in script
    assert json.loads((kit / "preflight.json").read_text())["tensorrt_major"] == (8 if trt == "trt8" else 10)
    assert onnx_precision(kit / "model.int8.onnx").layers == {"int8": 5, "fp16": 1}  # the graph says the same


def test_kit_candidates_are_judged_on_the_simulation_and_not_timed(mixed_kits):
    _, report = mixed_kits["trt10"]
    candidates = {c["name"]: c for c in report["quantization"]["precision"]["candidates"]}
    assert {"int8", "int8+fp16", "fp16", "fp32"} <= set(candidates)
    assert all(c["latency_ms_p50"] is None for c in candidates.values())  # this host cannot time a Jetson
    assert candidates["int8+fp16"]["label"].startswith("int8+fp16 (")


def test_kit_places_qdq_as_tensorrt_wants_both_inputs_of_the_residual_add(mixed_kits):
    _, report = mixed_kits["trt10"]
    model = onnx.load(str(Path(report["engine"]["files"][0]).parent / "model.int8.onnx"))
    producers = {output: node.op_type for node in model.graph.node for output in node.output}
    adds = [node for node in model.graph.node if node.op_type == "Add"]
    assert adds and all(producers.get(name) == "DequantizeLinear" for node in adds for name in node.input)
    node_of = {output: node for node in model.graph.node for output in node.output}
    add_inputs = {node_of[node_of[name].input[0]].input[0] for node in adds for name in node.input}  # before Q -> DQ
    conv_outputs = {node.output[0] for node in model.graph.node if node.op_type == "Conv"}
    quantized = {node.input[0] for node in model.graph.node if node.op_type == "QuantizeLinear"}
    # no Q/DQ on a weighted layer's output (TensorRT fuses Conv + SiLU and places the next Q itself), except
    # where it is a residual Add's input: quantized there so the Add fuses into the convolution
    assert conv_outputs & quantized and not conv_outputs & quantized - add_inputs
    assert "Q/DQ on the inputs of Conv/Gemm/MatMul and both inputs of Add" in report["quantization"]["recipe"]["reason"]


def test_kit_ladder_repairs_when_the_first_int8_misses(monkeypatch, files, tmp_path):
    """A budget the recipe's int8 just misses (61.4 dB here): the kit's ladder tries other calibrations and layers
    in fp32, as a build here does, and ships the rung that meets it."""
    code, report = build(monkeypatch, files, tmp_path, "jetson-orin-nano", "--task", "regress",
                         "--fidelity-budget", "61.6", "--max-excluded-layers", "1")
    tries = report["quantization"]["tries"]
    assert tries[0]["met"] is False and len(tries) >= 3
    assert any(t["step"].startswith("calibration ") for t in tries)
    assert code == 0 and report["fidelity"]["met"]  # some rung of the ladder met it, and that is what ships


@pytest.mark.parametrize("target", ["jetson-orin-nano", "jetson-agx-orin"])  # the GPU, and DLA core 0
def test_kit_is_fp16_when_int8_cannot_meet_the_budget_and_says_so(monkeypatch, files, tmp_path, target):
    code, report = build(monkeypatch, files, tmp_path, target, "--task", "regress",
                         "--fidelity-budget", "70", "--max-excluded-layers", "1", "--qat", "off")
    assert code == 0
    assert report["engine"]["precision"] == "fp16" and report["quantization"]["precision"]["chosen"] == "fp16"
    assert report["fidelity"]["met"] and "fp16 model" in report["fidelity"]["validated_on"]
    assert any("int8 misses the budget" in line and "shipping fp16" in line for line in report["verdict"])
    kit = Path(report["engine"]["files"][0]).parent
    assert json.loads((kit / "build_settings.json").read_text())["precisions"] == ["fp16"]
    assert "--fp16" in (kit / "build_engine.sh").read_text() and "--int8" not in (kit / "build_engine.sh").read_text()
    assert "int8_model_check" not in report  # no int8 in this kit


def test_kit_exits_3_only_when_no_listed_precision_meets_the_budget(monkeypatch, files, tmp_path):
    code, report = build(monkeypatch, files, tmp_path, "jetson-orin-nano", "--task", "regress",
                         "--fidelity-budget", "150", "--max-excluded-layers", "1", "--qat", "off")
    assert code == 3 and not report["fidelity"]["met"]
    assert report["engine"]["precision"] in ("int8", "mixed")  # the best int8 is kept for inspection


def test_fp16_rounding_simulation_rounds_float_layers_and_keeps_qdq_exact(files, tmp_path):
    fp32 = files / "detector.onnx"
    inputs, _ = model_io(onnx.load(str(fp32)))
    calibration = calibration_set_from_arrays({"input": digits_splits().train.x[:16]}, inputs, "digits")
    int8 = quantize_model(fp32, calibration, recipe_for_target(load_profile("jetson")), tmp_path / "int8.onnx")
    rounded = fp16_rounded(onnx.load(str(int8)))
    casts = [node for node in rounded.graph.node if node.op_type == "Cast"]
    qdq_outputs = {o for node in rounded.graph.node if node.op_type in ("QuantizeLinear", "DequantizeLinear") for o in node.output}
    assert casts and not any(node.input[0] in qdq_outputs for node in casts)  # Q/DQ keep their exact int8 grid
    onnx.save(rounded, str(tmp_path / "rounded.onnx"))
    feeds = {"input": digits_splits().test.x[:8]}
    exact = OrtRunner(int8, level="disable").run(feeds)[0]
    simulated = OrtRunner(tmp_path / "rounded.onnx", level="disable").run(feeds)[0]
    # fp16 rounding of every float layer: boxes in pixels (0..64) move by well under a pixel, scores by < 1%
    assert 0 < np.abs(simulated - exact)[:, :4].max() <= 0.5 and np.abs(simulated - exact)[:, 4:].max() <= 0.01


def test_marked_model_is_labelled_int8_fp16_and_unmarked_one_int8_fp32(files, tmp_path):
    fp32 = files / "detector.onnx"
    inputs, _ = model_io(onnx.load(str(fp32)))
    calibration = calibration_set_from_arrays({"input": digits_splits().train.x[:16]}, inputs, "digits")
    recipe = recipe_for_target(load_profile("jetson"))
    dfl = next(n.name for n in onnx.load(str(fp32)).graph.node if n.op_type == "Conv" and "dfl" in n.name)
    int8 = quantize_model(fp32, calibration, recipe.with_options(nodes_to_exclude=(dfl,)), tmp_path / "int8.onnx")
    marked = mark_float_layers(int8, tmp_path / "int8.fp16-layers.onnx")
    assert str(onnx_precision(int8)) == "mixed (1 fp32 of 6 compute layers)"
    assert onnx_precision(int8).builder_flags == ("int8",)
    assert str(onnx_precision(marked)) == "int8+fp16 (1 fp16 of 6 compute layers)"
    assert onnx_precision(marked).builder_flags == ("int8", "fp16")
