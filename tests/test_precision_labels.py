"""Precision labels tell the truth: int8, mixed (with its float layers), fp16 or fp32, read from the graph,
and a GPU candidate is built with exactly the flags of its label."""

from __future__ import annotations

import onnx
import pytest

from edgecompress.engines.base import onnx_precision
from edgecompress.engines.ort_cpu import OrtCpuBuilder
from edgecompress.engines.tensorrt import write_build_kit
from edgecompress.quantize.isa import recipe_for_target
from edgecompress.pipeline.precision import fp16_model
from edgecompress.core.targets import load_profile
from tests._int8_models import export_fp32, qdq_models, quantize  # noqa: F401 - fixture


@pytest.fixture(scope="module")
def models(qdq_models, tmp_path_factory) -> dict:
    """The fp32 and int8 models, an fp16 one (fp32 inputs/outputs kept), and int8 with one Conv kept in fp32."""
    root = tmp_path_factory.mktemp("labels")
    fp32 = export_fp32(root / "model.fp32.onnx")
    first_conv = next(n.name for n in onnx.load(str(fp32.path)).graph.node if n.op_type == "Conv")
    recipe = recipe_for_target(load_profile("jetson")).with_options(nodes_to_exclude=(first_conv,))
    return {**qdq_models, "fp16": fp16_model(fp32.path, root / "model.fp16.onnx"),
            "mixed": quantize(fp32, root / "model.mixed.onnx", recipe)}


def compute_layers(path) -> int:
    return sum(n.op_type in ("Conv", "Gemm", "MatMul") for n in onnx.load(str(path)).graph.node)


def test_fully_quantized_graph_is_int8(models) -> None:
    label = onnx_precision(models["int8"])
    assert label.name == "int8" and label.layers == {"int8": compute_layers(models["fp32"])}


def test_graph_with_a_layer_kept_in_fp32_is_mixed_and_counts_it(models) -> None:
    label = onnx_precision(models["mixed"])
    total = compute_layers(models["fp32"])
    assert label.name == "mixed" and label.layers == {"int8": total - 1, "fp32": 1}
    assert str(label) == f"mixed (1 fp32 of {total} compute layers)"


def test_fp16_graph_with_fp32_inputs_is_fp16(models) -> None:
    assert onnx.load(str(models["fp16"])).graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert onnx_precision(models["fp16"]).name == "fp16"
    assert onnx_precision(models["fp32"]).name == "fp32"


def test_engine_artifact_carries_the_label_and_its_layer_counts(models, tmp_path) -> None:
    artifact = OrtCpuBuilder().build(models["mixed"], load_profile("cpu"), tmp_path)
    assert artifact.precision == "mixed" and artifact.precision_layers["fp32"] == 1
    assert artifact.to_dict()["precision_layers"] == artifact.precision_layers


@pytest.mark.parametrize("model, flags", [
    ("fp32", []), ("fp16", ["--fp16"]), ("int8", ["--int8"]), ("mixed", ["--int8"]),
])
def test_gpu_candidate_is_built_with_exactly_the_flags_of_its_label(models, tmp_path, model, flags) -> None:
    artifact = write_build_kit(models[model], load_profile("gpu"), tmp_path)
    command = artifact.metadata["trtexec"].split()
    assert [arg for arg in command if arg in ("--int8", "--fp16")] == flags and "--noTF32" in command
    assert artifact.metadata["build_settings"]["precisions"] == [flag.removeprefix("--") for flag in flags]
    assert artifact.precision == onnx_precision(models[model]).name
