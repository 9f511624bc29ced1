"""Calibration layouts for multi-input and stateful models: each input is held as the model takes it at
batch N, N on the axis the model marks as batch (a dim_param shared across inputs, or --batch-axis), and
a 0-d input is one value used for every sample."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from edgecompress.source.layout import BatchLayout, batch_layout, parse_batch_axes
from edgecompress.calib.load import calibration_set_from_arrays, load_calibration_set
from edgecompress.engines.ort_cpu import OrtRunner
from edgecompress.core.errors import CalibrationError, InputShapeError
from edgecompress.measure.evaluate import EvalSet, evaluate
from edgecompress.export.graph import input_dims, model_io, prepare_onnx
from edgecompress.quantize.static import quantize_model
from edgecompress.quantize.recipe import QuantRecipe
from edgecompress.quantize.recipe_exclusions import control_flow_and_recurrent_nodes
from tests.onnx_graphs import stateful_model


def _stream(count: int, seed: int) -> dict[str, np.ndarray]:
    """A smooth signal cut in windows, with the state each window met: realistic for a recurrent step."""
    rng = np.random.default_rng(seed)
    t = np.arange(count * 16, dtype=np.float32) / 50.0
    signal = np.sin(t) + 0.3 * np.sin(3.1 * t) + rng.normal(0, 0.05, t.shape).astype(np.float32)
    state = np.tanh(rng.normal(0, 0.5, (2, count, 8))).astype(np.float32)
    return {"x": signal.reshape(count, 16).astype(np.float32), "state": state, "sr": np.array(16000, np.int64)}


def test_a_dim_param_shared_across_inputs_marks_the_batch_axis_of_each():
    layout = batch_layout({"x": ["batch", 16], "state": [2, "batch", 8], "sr": []})
    assert layout.axes == {"x": 0, "state": 1, "sr": None}


def test_without_a_shared_name_the_batch_is_axis_0_unless_batch_axis_says_otherwise():
    dims = {"x": [None, 16], "state": [2, None, 8], "sr": []}
    assert batch_layout(dims).axes == {"x": 0, "state": 0, "sr": None}
    assert batch_layout(dims, parse_batch_axes(["state:1"])).axes == {"x": 0, "state": 1, "sr": None}


@pytest.mark.parametrize("spec, message", [(["state"], "NAME:AXIS"), (["nope:1"], "does not have"), (["state:3"], "outside its rank")])
def test_a_batch_axis_that_cannot_be_right_is_refused(spec, message):
    with pytest.raises(InputShapeError, match=message):
        batch_layout({"x": [None, 16], "state": [2, None, 8]}, parse_batch_axes(spec))


def test_layout_slices_each_input_on_its_own_axis_and_repeats_scalars():
    layout = BatchLayout({"x": 0, "state": 1, "sr": None})
    arrays = _stream(10, 0)
    first = layout.take(arrays, 0, 4)
    assert first["x"].shape == (4, 16) and first["state"].shape == (2, 4, 8) and first["sr"].shape == ()
    assert layout.count(arrays) == 10
    assert [feed["state"].shape[1] for feed in layout.batches(arrays, 4)] == [4, 4, 2]
    assert layout.repeated(arrays, 25)["state"].shape == (2, 25, 8)


def test_unnamed_batch_dims_prepare_with_batch_axis_and_stay_dynamic(tmp_path):
    model = stateful_model(tmp_path / "unnamed.onnx", batch=None)
    with pytest.raises(InputShapeError, match="open dimensions on axis 1"):
        prepare_onnx(model, tmp_path / "out.onnx", {})  # state's batch looks like an open feature dim
    info = prepare_onnx(model, tmp_path / "out.onnx", {}, {"state": 1})
    assert input_dims(onnx.load(str(info.path))) == {"x": ["batch", 16], "state": [2, "batch", 8], "sr": []}


def test_a_stateful_model_calibrates_quantizes_and_evaluates_at_batch_n(tmp_path):
    info = prepare_onnx(stateful_model(tmp_path / "m.onnx"), tmp_path / "fp32.onnx", {})
    layout = batch_layout(input_dims(onnx.load(str(info.path))))
    np.savez(tmp_path / "calib.npz", **_stream(48, 1))
    calibration = load_calibration_set(tmp_path / "calib.npz", info.inputs, layout)
    assert len(calibration) == 48
    int8 = quantize_model(info.path, calibration, QuantRecipe(), tmp_path / "int8.onnx")
    held_out = _stream(20, 2)
    result = evaluate(OrtRunner(int8), OrtRunner(info.path), EvalSet(held_out, None, "stream", layout), batch_size=8)
    assert result.agreement.samples == 20 and result.agreement.cosine > 0.99
    tasks = {item.output: (item.task, item.why) for item in result.fidelity}
    assert tasks["out"][0] == "classify"  # [N, 8]: batch-first, read by its shape
    # [2, N, 8] carries the batch on axis 1: a recurrent state, compared by value (not as a [N, T, C] sequence)
    assert tasks["new_state"] == ("regress", "[2, N, 8]: batch on axis 1 (a recurrent state): values")


def test_a_set_with_the_batch_on_the_wrong_axis_says_where_it_belongs(tmp_path):
    info = prepare_onnx(stateful_model(tmp_path / "m.onnx"), tmp_path / "fp32.onnx", {})
    layout = batch_layout(input_dims(onnx.load(str(info.path))))
    arrays = _stream(12, 0)
    arrays["state"] = np.ascontiguousarray(arrays["state"].transpose(1, 0, 2))  # [N, 2, 8]: batch-first by habit
    with pytest.raises(CalibrationError, match="size 2 on axis 1|different sample counts|size 12 on axis 0"):
        calibration_set_from_arrays(arrays, info.inputs, "set", layout)


def test_control_flow_and_recurrent_nodes_are_named_for_fp32():
    from onnx import TensorProto, helper

    then_branch = helper.make_graph([helper.make_node("Identity", ["x"], ["y_then"])], "then", [], [helper.make_tensor_value_info("y_then", TensorProto.FLOAT, [1])])
    else_branch = helper.make_graph([helper.make_node("Neg", ["x"], ["y_else"])], "else", [], [helper.make_tensor_value_info("y_else", TensorProto.FLOAT, [1])])
    graph = helper.make_graph(
        [helper.make_node("If", ["flag"], ["y"], name="branch", then_branch=then_branch, else_branch=else_branch),
         helper.make_node("Relu", ["y"], ["z"], name="relu")],
        "g", [helper.make_tensor_value_info("flag", TensorProto.BOOL, []), helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1])],
    )
    assert control_flow_and_recurrent_nodes(helper.make_model(graph)) == ["branch"]


def test_a_set_made_for_the_model_records_its_layout_in_the_manifest(tmp_path):
    from edgecompress.calib.generate import fit_to_model
    from edgecompress.calib.load import CalibrationSet
    from edgecompress.source.model import SourceModel

    model = SourceModel("stateful", "hash", onnx_path=stateful_model(tmp_path / "m.onnx"))
    fitted = fit_to_model(CalibrationSet(_stream(12, 0), "unset", "stream"), model)
    assert fitted.manifest["batch_axis"] == {"x": 0, "state": 1, "sr": None}
    assert fitted.manifest["count"] == 12 and len(fitted) == 12


def test_a_model_that_fixes_its_batch_is_fed_that_many_samples_at_a_time():
    layout = batch_layout({"images": [1, 3, 64, 64]})
    assert layout.fixed_batch == 1
    arrays = {"images": np.zeros((5, 3, 64, 64), np.float32)}
    assert [feed["images"].shape[0] for feed in layout.batches(arrays, 16)] == [1, 1, 1, 1, 1]


def test_a_recurrent_cell_stays_fp32_and_the_recipe_says_which_and_why(tmp_path):
    from onnx import TensorProto, helper, numpy_helper

    from edgecompress.quantize.recipe_exclusions import with_structural_exclusions

    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.normal(0, 0.3, shape).astype(np.float32), name)
               for name, shape in (("conv_w", (4, 4, 1)), ("lstm_w", (1, 32, 4)), ("lstm_r", (1, 32, 8)))]
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "conv_w"], ["features"], name="frontend"),
         helper.make_node("Transpose", ["features"], ["steps"], name="to_steps", perm=[2, 0, 1]),
         helper.make_node("LSTM", ["steps", "lstm_w", "lstm_r"], ["", "hidden"], name="rnn", hidden_size=8)],
        "lstm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, 10])],
        [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, [1, "batch", 8])], weights,
    )
    path = tmp_path / "lstm.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    recipe = with_structural_exclusions(QuantRecipe(reason="x86 recipe"), path)
    assert recipe.nodes_to_exclude == ("rnn",)
    assert recipe.reason.startswith("x86 recipe; kept in fp32: 1 nodes, control flow / recurrent cells") and "rnn" in recipe.reason
    arrays = {"x": rng.normal(0, 1, (8, 4, 10)).astype(np.float32)}
    inputs, _ = model_io(onnx.load(str(path)))
    int8 = quantize_model(path, calibration_set_from_arrays(arrays, inputs, "noise"), recipe, tmp_path / "int8.onnx")
    assert {n.op_type for n in onnx.load(str(int8)).graph.node} >= {"LSTM", "QuantizeLinear", "DequantizeLinear"}
