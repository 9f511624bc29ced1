"""Float islands restated in ops with int8 kernels: exact in float, and no float op left between int8 ops."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from edgecompress.calib.load import calibration_set_from_arrays
from edgecompress.export.graph import model_io, read_onnx
from edgecompress.measure.op_profile import profile_operators
from edgecompress.quantize.islands import REWRITES, rewrite_for_int8
from edgecompress.quantize.recipe import QuantRecipe
from edgecompress.quantize.static import quantize_model
from tests.quant_models import export_onnx


class MobileNetV3Block(nn.Module):
    """Conv -> HardSwish written as Paddle exports it (x * clip(x + 3, 0, 6) / 6) -> squeeze-excite with HardSigmoid."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.reduce, self.expand = nn.Conv2d(16, 4, 1), nn.Conv2d(4, 16, 1)
        self.head = nn.Conv2d(16, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        y = y * torch.clamp(y + 3.0, 0.0, 6.0) / 6.0
        gate = nn.functional.hardsigmoid(self.expand(torch.relu(self.reduce(nn.functional.adaptive_avg_pool2d(y, 1)))))
        return self.head(y * gate).mean(dim=(2, 3))


@pytest.fixture(scope="module")
def block(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("block")
    sample = np.random.default_rng(0).normal(size=(32, 3, 16, 16)).astype(np.float32)
    fp32 = export_onnx(MobileNetV3Block().eval(), folder / "block.onnx", sample)
    calibration = calibration_set_from_arrays({"input": sample}, model_io(read_onnx(fp32))[0], "random")
    return folder, fp32, calibration, sample


def _run(path, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


def test_rewritten_float_graph_computes_the_same(block) -> None:
    folder, fp32, _, sample = block
    model = onnx.load(str(fp32))
    counts = rewrite_for_int8(model, REWRITES)
    assert counts == {"div-by-constant": 1, "hardsigmoid": 1}
    assert not {n.op_type for n in model.graph.node} & {"Div", "HardSigmoid"}
    onnx.save(model, str(folder / "rewritten.onnx"))
    np.testing.assert_allclose(_run(folder / "rewritten.onnx", sample), _run(fp32, sample), rtol=1e-5, atol=1e-5)


def test_quantizing_with_the_rewrites_leaves_no_float_island(block) -> None:
    folder, fp32, calibration, sample = block
    plain = quantize_model(fp32, calibration, QuantRecipe(), folder / "plain.int8.onnx")
    rewritten = quantize_model(fp32, calibration, QuantRecipe(int8_rewrites=REWRITES), folder / "rewritten.int8.onnx")
    feeds = {"input": sample[:1]}
    before = profile_operators(plain, feeds, threads=1, runs=3, warmup=1).islands
    after = profile_operators(rewritten, feeds, threads=1, runs=3, warmup=1).islands
    assert before.count == 2 and set(before.float_ops) == {"Div", "HardSigmoid"}
    assert after.count == 0 and after.convert_nodes == 0
    reference = _run(fp32, sample)
    error = np.abs(_run(rewritten, sample) - reference).max() / np.abs(reference).max()
    assert error < 0.1  # still a faithful int8 model of the same function


def test_an_unknown_rewrite_is_refused_with_the_known_ones(block) -> None:
    with pytest.raises(ValueError, match="div-by-constant"):
        rewrite_for_int8(onnx.load(str(block[1])), ["hardswish"])
