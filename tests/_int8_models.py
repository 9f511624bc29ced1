"""Tiny real int8 QDQ models for the engine tests: a small CNN, quantized on the digits data.

Built with the pipeline's own export and quantize stages, with the recipes the targets use.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch
from onnx import helper

from edgecompress.calib.load import calibration_set_from_arrays
from edgecompress.source.data import digits_splits
from edgecompress.export.torch_export import export_torch
from edgecompress.quantize.isa import recipe_for_target
from edgecompress.quantize.static import quantize_model
from edgecompress.quantize.recipe import QuantRecipe
from edgecompress.core.targets import load_profile
from edgecompress.source.zoo import build_model


def export_fp32(path: Path):
    torch.manual_seed(0)
    # the TorchScript exporter: 3 s instead of 15 s here, same graph for these tests
    return export_torch(build_model("cnn-tiny").eval(), {"input": (1, 1, 32, 32)}, path, exporter="torchscript")


def quantize(fp32, out: Path, recipe: QuantRecipe) -> Path:
    calibration = calibration_set_from_arrays({"input": digits_splits().val.x[:32]}, fp32.inputs, "digits val")
    return quantize_model(fp32.path, calibration, recipe, out)


def with_extra_node(model_path: Path, out: Path, op_type: str, node_name: str, domain: str = "") -> Path:
    """Append one `op_type` node after the model's output (a model some runtime rejects)."""
    model = onnx.load(str(model_path))
    graph = model.graph
    graph.node.append(helper.make_node(op_type, [graph.output[0].name], ["extra_out"], name=node_name, domain=domain))
    graph.output[0].name = "extra_out"
    if domain:
        model.opset_import.append(helper.make_opsetid(domain, 1))
    onnx.save(model, str(out))
    return out


@pytest.fixture(scope="session")
def qdq_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """fp32, the TensorRT recipe's int8 (s8s8, float biases, Q/DQ on weighted layers' inputs only), the ARM
    recipe's (s8s8 with ORT's placement, which ORT fuses into QLinearConv) and onnxruntime's default u8s8."""
    root = tmp_path_factory.mktemp("models")
    fp32 = export_fp32(root / "model.fp32.onnx")
    return {
        "fp32": fp32.path,
        "int8": quantize(fp32, root / "model.int8.onnx", recipe_for_target(load_profile("jetson"))),
        "arm": quantize(fp32, root / "model.arm.onnx", recipe_for_target(load_profile("raspberry-pi-5"))),
        "uint8": quantize(fp32, root / "model.uint8.onnx", QuantRecipe()),  # onnxruntime's defaults
    }
