"""Quantize + ORT CPU engine: real int8 QDQ models that agree with fp32 on real digits."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from edgecompress.calib.load import load_calibration_set
from edgecompress.engines import get_builder
from edgecompress.engines.base import onnx_precision
from edgecompress.engines.ort_cpu import OrtRunner
from edgecompress.errors import QuantizationError, TargetError
from edgecompress.evaluate import EvalSet, evaluate
from edgecompress.export import model_io
from edgecompress.isa import recipe_for_target
from edgecompress.quantize import QuantRecipe, quantize_model
from edgecompress.targets import load_profile


@pytest.fixture(scope="module")
def calibration(tiny_onnx, tiny_calib):
    inputs, _ = model_io(onnx.load(str(tiny_onnx)))
    return load_calibration_set(tiny_calib, inputs)


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
def test_each_calibration_method_makes_a_qdq_model_close_to_fp32(tiny_onnx, calibration, tmp_path, method):
    out = quantize_model(tiny_onnx, calibration, QuantRecipe(calibration_method=method), tmp_path / "q.onnx")
    ops = {node.op_type for node in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert onnx_precision(out).name == "int8"
    data = EvalSet(calibration.arrays, calibration.labels, "calibration")
    result = evaluate(OrtRunner(out), OrtRunner(tiny_onnx), data)
    assert result.agreement.cosine > 0.98


def test_excluded_node_stays_fp32(tiny_onnx, calibration, tmp_path):
    conv = next(n.name for n in onnx.load(str(tiny_onnx)).graph.node if n.op_type == "Conv")
    out = quantize_model(tiny_onnx, calibration, QuantRecipe(nodes_to_exclude=(conv,)), tmp_path / "q.onnx")
    graph = onnx.load(str(out)).graph
    producers = {o: n for n in graph.node for o in n.output}
    conv_node = next(n for n in graph.node if n.op_type == "Conv")
    assert all(producers.get(i) is None or producers[i].op_type != "DequantizeLinear" for i in conv_node.input)


def test_unknown_excluded_node_is_refused(tiny_onnx, calibration, tmp_path):
    with pytest.raises(QuantizationError, match="not in the model: no_such_node"):
        quantize_model(tiny_onnx, calibration, QuantRecipe(nodes_to_exclude=("no_such_node",)), tmp_path / "q.onnx")
    assert not (tmp_path / "q.onnx").exists()


def test_cpu_recipe_follows_the_instruction_set():
    profile = load_profile("cpu")
    no_vnni = recipe_for_target(profile.model_copy(update={"isa": ("avx2",)}))
    vnni = recipe_for_target(profile.model_copy(update={"isa": ("avx2", "avx512_vnni")}))
    assert no_vnni.reduce_range and not vnni.reduce_range
    assert "VNNI" in no_vnni.reason


def test_cpu_engine_builds_loads_and_runs(tiny_onnx, calibration, tmp_path):
    quantized = quantize_model(tiny_onnx, calibration, QuantRecipe(), tmp_path / "q.onnx")
    profile = load_profile("cpu")
    builder = get_builder(profile.engine)
    assert builder.available() is None
    artifact = builder.build(quantized, profile, tmp_path / "cpu")
    assert artifact.path.is_file() and artifact.precision == "int8"
    assert artifact.metadata["onnxruntime"]
    runner = builder.load(artifact, profile)
    outputs = runner.run({"input": calibration.arrays["input"][:3]})
    assert outputs[0].shape == (3, 10) and np.all(np.isfinite(outputs[0]))


def test_unknown_engine_kind_is_refused():
    with pytest.raises(TargetError, match="no engine builder"):
        get_builder("fpga")
