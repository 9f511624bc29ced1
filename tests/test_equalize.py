"""Cross-layer equalization keeps the fp32 function of Conv→ReLU→Conv and evens out channel ranges."""

import numpy as np
import onnx
from onnx import numpy_helper

from edgecompress.engines.ort_cpu import OrtRunner
from edgecompress.quantize.equalize import equalize
from tests.quant_models import digits_case  # noqa: F401  (fixture)


def conv1_channel_ranges(model: onnx.ModelProto) -> np.ndarray:
    weight = next(numpy_helper.to_array(i) for i in model.graph.initializer if i.name == "conv1.weight")
    return np.abs(weight).reshape(weight.shape[0], -1).max(1)


def test_equalization_keeps_outputs_and_removes_the_outlier_channel(digits_case, tmp_path) -> None:
    model = onnx.load(str(digits_case.fragile))
    before = conv1_channel_ranges(model)
    assert equalize(model) == 1
    after = conv1_channel_ranges(model)
    assert before.max() / np.median(before) > 100 and after.max() / np.median(after) < 10
    onnx.save(model, str(tmp_path / "equalized.onnx"))
    x = {"input": digits_case.eval_set.inputs["input"][:64]}
    original, equalized = OrtRunner(digits_case.fragile).run(x)[0], OrtRunner(tmp_path / "equalized.onnx").run(x)[0]
    np.testing.assert_allclose(equalized, original, rtol=1e-3, atol=1e-3 * np.abs(original).max())
