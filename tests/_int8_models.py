"""Tiny real int8 QDQ models for the engine tests: a small CNN on the digits data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import onnx
import torch
from onnx import helper

from edgecompress.data import digits_splits
from edgecompress.zoo import build_model


class _Batches:
    """onnxruntime's CalibrationDataReader shape: one input dict per call, None at the end."""

    def __init__(self, x: np.ndarray) -> None:
        self._feeds = iter({"input": x[i : i + 8]} for i in range(0, len(x), 8))

    def get_next(self):
        return next(self._feeds, None)


def export_fp32(path: Path) -> Path:
    torch.manual_seed(0)
    model = build_model("cnn-tiny").eval()
    torch.onnx.export(
        model, torch.zeros(1, 1, 32, 32), str(path), input_names=["input"], output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False,
    )
    return path


def quantize(fp32: Path, out: Path, symmetric_int8: bool = True) -> Path:
    """Static QDQ; symmetric int8 with float biases is TensorRT's form, else ORT's uint8 defaults."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    quantize_static(
        str(fp32), str(out), _Batches(digits_splits().val.x[:32]), quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QInt8 if symmetric_int8 else QuantType.QUInt8, weight_type=QuantType.QInt8,
        extra_options={"ActivationSymmetric": symmetric_int8, "QuantizeBias": not symmetric_int8},
    )
    return out


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
    """fp32, symmetric-int8 QDQ and uint8 QDQ versions of one tiny CNN (built once per session)."""
    root = tmp_path_factory.mktemp("models")
    fp32 = export_fp32(root / "model.fp32.onnx")
    return {
        "fp32": fp32,
        "int8": quantize(fp32, root / "model.int8.onnx"),
        "uint8": quantize(fp32, root / "model.uint8.onnx", symmetric_int8=False),
    }
