"""The graph runner's ONNX ops, one tiny model per op and attribute form, against ONNX Runtime; then whole transformer
encoders (BERT-family text, ViT) as torch.onnx.export writes them."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper, numpy_helper

from edgecompress.calib.onnx_torch import OnnxGraphModule
from tests.transformer_models import bert_inputs, tiny_bert_encoder_onnx, tiny_vit_onnx, vit_inputs

RNG = np.random.default_rng(0)
INT64_MIN, INT64_MAX = np.iinfo(np.int64).min, np.iinfo(np.int64).max


def f32(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def i64(*values) -> np.ndarray:
    return np.array(values, np.int64)


def boolean(*shape: int) -> np.ndarray:
    return RNG.random(shape) < 0.5


@dataclass(frozen=True)
class OpCase:
    """One node: `inputs` in the node's order (None: an optional input left out), fed as graph inputs."""

    name: str
    op: str
    inputs: tuple
    attrs: dict = field(default_factory=dict)
    opset: int = 17
    outputs: int = 1


def case(name: str, op: str, *inputs, opset: int = 17, outputs: int = 1, **attrs) -> OpCase:
    return OpCase(name, op, inputs, attrs, opset, outputs)


SPLIT_INPUT = f32(2, 6)
CASES = [
    # comparisons and logic (masks)
    case("Equal-int64-broadcast", "Equal", i64([1, 2, 3], [3, 2, 1]), i64(1, 2, 1)),
    case("Equal-float", "Equal", np.array([0.5, 1.0, -2.0], np.float32), np.array([0.5, 0.0, -2.0], np.float32)),
    case("Less", "Less", f32(2, 3), f32(3)),
    case("Greater", "Greater", f32(2, 3), np.float32(0.0)),
    case("LessOrEqual", "LessOrEqual", i64([1, 5, 3]), i64(3)),
    case("GreaterOrEqual", "GreaterOrEqual", i64([[1, 5, 3]]), i64([[3], [1]])),
    case("Not", "Not", boolean(2, 3)),
    case("And", "And", boolean(2, 3), boolean(3)),
    case("Or", "Or", boolean(2, 3), boolean(2, 1)),
    case("Xor", "Xor", boolean(4), boolean(4)),
    case("IsNaN", "IsNaN", np.array([1.0, np.nan, -np.inf], np.float32)),
    case("IsInf-positive-only", "IsInf", np.array([1.0, np.inf, -np.inf, np.nan], np.float32), detect_negative=0),
    case("Where-broadcast", "Where", boolean(2, 1, 3), f32(2, 4, 3), np.float32(-1e4)),
    case("Where-int64", "Where", boolean(3), i64(1, 2, 3), i64(0)),
    # shape glue: int64 stays int64
    case("Shape", "Shape", f32(2, 3, 4)),
    case("Shape-start", "Shape", f32(2, 3, 4), start=1),
    case("Shape-negative-end", "Shape", f32(2, 3, 4), end=-1),
    case("Shape-negative-start", "Shape", f32(2, 3, 4, 5), start=-2, end=10),
    case("Size", "Size", f32(2, 3)),
    case("Concat-int64-shapes", "Concat", i64(2), i64(-1, 4), i64(8), axis=0),
    case("Concat-float-negative-axis", "Concat", f32(2, 3), f32(2, 1), axis=-1),
    case("Reshape-copies-zero-dims", "Reshape", f32(2, 3, 4), i64(0, -1)),
    case("Reshape-allowzero", "Reshape", f32(0, 3), i64(3, 0), allowzero=1),
    case("Expand-int64", "Expand", i64([1], [2], [3]), i64(2, 3, 4)),
    case("Expand-both-ways", "Expand", f32(2, 3), i64(3, 1, 1)),
    case("Expand-ones-keep-dims", "Expand", f32(2, 1), i64(1, 5)),
    case("Tile", "Tile", f32(2, 3), i64(2, 1)),
    case("Tile-int64", "Tile", i64([1, 2]), i64(3, 2)),
    case("Range-int64", "Range", np.int64(0), np.int64(10), np.int64(3)),
    case("Range-negative-delta", "Range", np.int64(5), np.int64(-2), np.int64(-2)),
    case("Range-float", "Range", np.float32(1.0), np.float32(2.0), np.float32(0.25)),
    case("ConstantOfShape-default", "ConstantOfShape", i64(2, 3)),
    case("ConstantOfShape-int64", "ConstantOfShape", i64(4), value=numpy_helper.from_array(i64(7))),
    case("ConstantOfShape-float", "ConstantOfShape", i64(1, 2), value=numpy_helper.from_array(np.array([-1.5], np.float32))),
    case("Squeeze-axes-input", "Squeeze", f32(1, 3, 1, 2), i64(0, -2)),
    case("Squeeze-all", "Squeeze", f32(1, 3, 1)),
    case("Unsqueeze-negative-axes", "Unsqueeze", f32(2, 3), i64(0, -1)),
    case("Unsqueeze-int64-scalar", "Unsqueeze", np.int64(7), i64(0)),
    case("Slice-steps", "Slice", f32(6, 5), i64(0, 1), i64(6, 5), i64(0, 1), i64(2, 2)),
    case("Slice-negative-axis", "Slice", f32(2, 8), i64(-3), i64(INT64_MAX), i64(-1)),
    case("Slice-reversed", "Slice", f32(3, 5), i64(-1), i64(INT64_MIN), i64(1), i64(-1)),
    case("Slice-negative-step", "Slice", f32(7), i64(5), i64(1), i64(0), i64(-2)),
    case("Slice-default-axes", "Slice", f32(4, 4), i64(1, -10), i64(100, 3)),
    case("Cast-float-to-bool", "Cast", np.array([0.0, 0.5, -2.0], np.float32), to=onnx.TensorProto.BOOL),
    case("Cast-float-to-int64", "Cast", np.array([1.7, -1.7, 3.0], np.float32), to=onnx.TensorProto.INT64),
    case("Cast-int64-to-float", "Cast", i64(3, -4), to=onnx.TensorProto.FLOAT),
    case("Cast-bool-to-float", "Cast", boolean(5), to=onnx.TensorProto.FLOAT),
    case("CastLike", "CastLike", boolean(4), f32(1)),
    # embeddings and indexing
    case("Gather-embedding", "Gather", f32(10, 4), i64([1, 9, -1], [0, -10, 3])),
    case("Gather-scalar-negative-axis", "Gather", f32(2, 3, 4), np.int64(-1), axis=-1),
    case("Gather-int64-shape", "Gather", i64(2, 16, 32), np.int64(1)),
    case("GatherElements", "GatherElements", f32(3, 4), i64([0, -1], [2, 3], [1, 0]), axis=1),
    case("GatherND", "GatherND", f32(3, 4, 2), i64([0, 1], [2, -1])),
    case("GatherND-batch-dims", "GatherND", f32(2, 3, 4), i64([[1], [0]], [[2], [2]]), batch_dims=1),
    case("ScatterND", "ScatterND", f32(4, 3), i64([1], [3]), f32(2, 3)),
    case("ScatterND-add", "ScatterND", f32(5), i64([1], [1], [4]), f32(3), reduction="add", opset=18),
    # arithmetic
    case("Div-int64-truncates", "Div", i64(7, -7, 6), i64(2, 2, -4)),
    case("Div-float", "Div", f32(2, 3), f32(3)),
    case("Mod-int64", "Mod", i64(7, -7, 5, -5), i64(3, 3, -3, -3)),
    case("Mod-fmod-float", "Mod", np.array([7.5, -7.5], np.float32), np.array([2.0, 2.0], np.float32), fmod=1),
    case("Pow", "Pow", np.abs(f32(2, 3)), f32(3)),
    case("Pow-int64-exponent", "Pow", f32(2, 3), i64(2)),
    case("Pow-int64-base", "Pow", i64(2, 3, -4), np.float32(2.0)),
    case("Sqrt", "Sqrt", np.abs(f32(2, 3))),
    case("Neg-int64", "Neg", i64(1, -2)),
    case("Floor", "Floor", f32(5)),
    case("Ceil", "Ceil", f32(5)),
    case("Round-half-to-even", "Round", np.array([0.5, 1.5, 2.5, -0.5, 1.2], np.float32)),
    case("Sign", "Sign", np.array([-2.0, 0.0, 3.0], np.float32)),
    case("Sin", "Sin", f32(4)),
    case("Cos", "Cos", f32(4)),
    case("Tanh", "Tanh", f32(2, 3)),
    case("Erf", "Erf", f32(2, 3)),
    case("Gelu", "Gelu", f32(2, 5), opset=20),
    case("Gelu-tanh", "Gelu", f32(2, 5), approximate="tanh", opset=20),
    case("Clip-min-max-inputs", "Clip", f32(2, 5), np.float32(-0.5), np.float32(0.5)),
    case("Clip-min-only", "Clip", f32(2, 5), np.float32(0.0)),
    case("Clip-max-only", "Clip", f32(2, 5), None, np.float32(0.1)),
    case("Clip-int64", "Clip", i64(-5, 0, 5, 9), np.int64(-1), np.int64(6)),
    case("Max-broadcast", "Max", f32(2, 3), f32(3), f32(2, 1)),
    case("Min-int64", "Min", i64(1, 5, 3), i64(4)),
    case("MatMul-batch-broadcast", "MatMul", f32(2, 1, 3, 4), f32(5, 4, 2)),
    case("MatMul-vector", "MatMul", f32(4), f32(2, 4, 3)),
    case("Einsum-attention", "Einsum", f32(2, 2, 5, 4), f32(2, 2, 6, 4), equation="bhqd,bhkd->bhqk"),
    case("Einsum-transpose", "Einsum", f32(3, 4), equation="ij->ji"),
    case("CumSum", "CumSum", f32(2, 4), np.int64(1)),
    case("CumSum-exclusive-reverse", "CumSum", f32(2, 4), np.int64(-1), exclusive=1, reverse=1),
    case("CumSum-exclusive-int64", "CumSum", i64([1, 2, 3], [4, 5, 6]), np.int64(0), exclusive=1),
    case("Trilu-upper", "Trilu", f32(2, 3, 4)),
    case("Trilu-lower-k", "Trilu", f32(4, 4), np.int64(-1), upper=0),
    case("Trilu-upper-k", "Trilu", f32(3, 5), np.int64(2)),
    # normalizations and reductions
    case("LayerNormalization", "LayerNormalization", f32(2, 3, 8), f32(8), f32(8), epsilon=1e-12),
    case("LayerNormalization-axis-no-bias", "LayerNormalization", f32(2, 3, 4), f32(3, 4), axis=1, epsilon=1e-3),
    case("LayerNormalization-broadcast-scale", "LayerNormalization", f32(2, 3, 4), f32(1), f32(1), axis=-2),
    case("Softmax", "Softmax", f32(2, 3, 4)),
    case("Softmax-axis", "Softmax", f32(2, 3, 4), axis=1),
    case("LogSoftmax", "LogSoftmax", f32(2, 3), axis=0),
    case("ReduceMean-axes-attribute", "ReduceMean", f32(2, 3, 4), axes=[1, -1], keepdims=0),
    case("ReduceMean-axes-input", "ReduceMean", f32(2, 3, 4), i64(-1), opset=18),
    case("ReduceSum-axes-input", "ReduceSum", f32(2, 3, 4), i64(0, 2)),
    case("ReduceSum-all", "ReduceSum", f32(2, 3), keepdims=0),
    case("ReduceSum-empty-axes", "ReduceSum", f32(2, 3), np.zeros(0, np.int64)),
    case("ReduceSum-noop-with-empty-axes", "ReduceSum", f32(2, 3), noop_with_empty_axes=1),
    case("ReduceSum-int64", "ReduceSum", i64([1, 2], [3, 4]), i64(1), keepdims=0),
    case("ReduceMax-axes-attribute", "ReduceMax", f32(2, 3, 4), axes=[1]),
    case("ReduceMax-axes-input", "ReduceMax", f32(2, 3, 4), i64(0, 1), keepdims=0, opset=18),
    case("ReduceMin", "ReduceMin", f32(2, 3), i64(1), opset=18),
    case("ReduceProd", "ReduceProd", f32(2, 3, 2), i64(0, 2), keepdims=0, opset=18),
    case("ReduceL1", "ReduceL1", f32(2, 3), i64(1), opset=18),
    case("ReduceL2", "ReduceL2", f32(2, 3), i64(-1), opset=18),
    case("ReduceSumSquare", "ReduceSumSquare", f32(2, 3), i64(0), opset=18),
    case("ReduceLogSumExp", "ReduceLogSumExp", f32(2, 3), i64(1), opset=18),
    case("Split-sizes-input", "Split", SPLIT_INPUT, i64(2, 4), axis=1, outputs=2),
    case("Split-equal-by-outputs", "Split", SPLIT_INPUT, axis=-1, outputs=3),
    case("Split-num-outputs", "Split", SPLIT_INPUT, axis=1, num_outputs=2, outputs=2, opset=18),
]


def op_model(op_case: OpCase) -> onnx.ModelProto:
    names = [f"in{k}" if value is not None else "" for k, value in enumerate(op_case.inputs)]
    outputs = [f"out{k}" for k in range(op_case.outputs)]
    graph = helper.make_graph(
        [helper.make_node(op_case.op, names, outputs, **op_case.attrs)], op_case.name,
        [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(np.asarray(value).dtype), np.shape(value))
         for name, value in zip(names, op_case.inputs) if value is not None],
        [onnx.ValueInfoProto(name=name) for name in outputs],  # untyped: ONNX Runtime infers what each output is
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", op_case.opset)])


def assert_same_outputs(got: list[torch.Tensor], expected: list[np.ndarray], atol: float) -> None:
    assert len(got) == len(expected)
    for tensor, reference in zip(got, expected):
        value = tensor.detach().numpy()
        assert value.dtype == reference.dtype
        assert value.shape == reference.shape
        np.testing.assert_allclose(value, reference, atol=atol, rtol=0)


@pytest.mark.parametrize("op_case", CASES, ids=[c.name for c in CASES])
def test_op_computes_what_onnx_runtime_computes(op_case):
    model = op_model(op_case)
    feed = [np.asarray(value) for value in op_case.inputs if value is not None]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = session.run(None, {i.name: value for i, value in zip(session.get_inputs(), feed)})
    with torch.no_grad():
        got = OnnxGraphModule(model).run(*(torch.from_numpy(value) for value in feed))
    assert_same_outputs(got, expected, atol=1e-5)


def test_constant_nodes_in_every_attribute_form_feed_the_graph():
    """The dynamo exporter writes shapes as value_ints and scalars as value_float, not as tensors."""
    nodes = [
        helper.make_node("Constant", [], ["shape"], value_ints=[2, -1]),
        helper.make_node("Constant", [], ["gain"], value_float=0.5),
        helper.make_node("Constant", [], ["offsets"], value_floats=[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
        helper.make_node("Constant", [], ["axis"], value_int=1),
        helper.make_node("Reshape", ["x", "shape"], ["flat"]),
        helper.make_node("Mul", ["flat", "gain"], ["scaled"]),
        helper.make_node("Add", ["scaled", "offsets"], ["shifted"]),
        helper.make_node("CumSum", ["shifted", "axis"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "constants", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3, 2])],
                              [onnx.ValueInfoProto(name="y")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = f32(2, 3, 2)
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    assert_same_outputs(OnnxGraphModule(model).run(torch.from_numpy(x)), expected, atol=1e-5)


@pytest.fixture(scope="module")
def bert_onnx(tmp_path_factory):
    return tiny_bert_encoder_onnx(tmp_path_factory.mktemp("bert") / "bert.onnx")


@pytest.fixture(scope="module")
def vit_onnx(tmp_path_factory):
    return tiny_vit_onnx(tmp_path_factory.mktemp("vit") / "vit.onnx")


def runner_and_onnx_runtime(path, feed: dict[str, np.ndarray]) -> tuple[list[torch.Tensor], list[np.ndarray]]:
    expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)
    module = OnnxGraphModule(onnx.load(str(path))).eval()
    with torch.no_grad():
        return module.run(*(torch.from_numpy(feed[name]) for name in module.input_names)), expected


def test_bert_sentence_encoder_export_runs_as_onnx_runtime_runs_it_at_another_batch(bert_onnx):
    """Padding masked out of attention and pooling; batch 3 where the export saw 2 (the shape glue is live)."""
    got, expected = runner_and_onnx_runtime(bert_onnx, bert_inputs(batch=3))
    assert_same_outputs(got, expected, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(got[0].numpy(), axis=1), 1.0, atol=1e-5)


def test_vit_export_runs_as_onnx_runtime_runs_it_at_another_batch(vit_onnx):
    got, expected = runner_and_onnx_runtime(vit_onnx, vit_inputs(batch=3))
    assert_same_outputs(got, expected, atol=1e-4)


def test_trainable_bert_trains_its_float_weights_and_keeps_shape_tensors_int64(bert_onnx):
    module = OnnxGraphModule(onnx.load(str(bert_onnx)), trainable=True)
    feed = bert_inputs()
    assert len(module.weights) > 0
    assert all(p.dtype == torch.float32 for p in module.parameters())
    assert any(c.dtype == torch.int64 for c in module.constants.values())
    embedding = module.run(*(torch.from_numpy(feed[name]) for name in module.input_names))[0]
    embedding.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in module.weights.values())
