"""ONNX graphs as torch modules: the same outputs as ONNX Runtime, and BatchNorm statistics data-free can match."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from edgecompress.calib.datafree import (
    DataFreeConfig,
    batchnorm_loss,
    make_data_free_set,
    record_batchnorm_inputs,
    synthesize,
)
from edgecompress.calib.onnx_torch import onnx_graph_module
from edgecompress.core.errors import DataFreeError
from tests.calib_fixtures import bn_training_data, tiny_bn_model

FAST = DataFreeConfig(steps=30, full_steps=10, batch_size=16)


def write_unfolded_onnx(path, fold_batchnorm: bool = False):
    """The tiny BN model as an ONNX graph that keeps BatchNormalization (as Paddle and Keras exports do),
    or with it folded into the convolution (as torch exports in eval mode do)."""
    model = tiny_bn_model()
    conv, bn, linear = model[0], model[1], model[5]
    weight = conv.weight.detach().numpy()
    scale = (bn.weight / (bn.running_var + bn.eps).sqrt()).detach().numpy()
    tensors = {"fc_w": linear.weight.detach().numpy().T, "fc_b": linear.bias.detach().numpy()}
    if fold_batchnorm:
        tensors["conv_w"] = weight * scale[:, None, None, None]
        tensors["conv_b"] = (bn.bias - bn.running_mean * torch.from_numpy(scale)).detach().numpy()
        nodes = [helper.make_node("Conv", ["input", "conv_w", "conv_b"], ["bn_out"], pads=[1, 1, 1, 1])]
    else:
        tensors.update(conv_w=weight, **{f"bn_{k}": getattr(bn, k).detach().numpy() for k in ("weight", "bias", "running_mean", "running_var")})
        nodes = [
            helper.make_node("Conv", ["input", "conv_w"], ["conv_out"], pads=[1, 1, 1, 1]),
            helper.make_node("BatchNormalization", ["conv_out", "bn_weight", "bn_bias", "bn_running_mean", "bn_running_var"],
                             ["bn_out"], epsilon=bn.eps),
        ]
    nodes += [
        helper.make_node("Relu", ["bn_out"], ["relu_out"]),
        helper.make_node("GlobalAveragePool", ["relu_out"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 1, 8, 8])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["n", 3])],
        [numpy_helper.from_array(np.ascontiguousarray(v, np.float32), k) for k, v in tensors.items()],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_graph_module_computes_what_onnx_runtime_computes(tmp_path):
    path = write_unfolded_onnx(tmp_path / "tiny.onnx")
    x = bn_training_data()[:8]
    expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    with torch.no_grad():
        got = onnx_graph_module(path)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_batchnormalization_nodes_keep_their_statistics_for_synthesis(tmp_path):
    module = onnx_graph_module(write_unfolded_onnx(tmp_path / "tiny.onnx"))
    synthetic, summary = synthesize(module, (1, 1, 8, 8), 16, FAST)
    noise = np.random.default_rng(0).standard_normal((16, 1, 8, 8)).astype(np.float32)

    def loss(inputs):
        with torch.no_grad(), record_batchnorm_inputs(module) as records:
            module(torch.from_numpy(inputs))
        return float(batchnorm_loss(records))

    assert summary["method"] == "batchnorm-statistics"
    assert loss(synthetic) < 0.2 * loss(noise)


def test_folded_onnx_graph_falls_back_to_range_only_and_the_manifest_says_so(tmp_path):
    from edgecompress.source.model import load_source_model

    source = load_source_model(str(write_unfolded_onnx(tmp_path / "folded.onnx", fold_batchnorm=True)), None, [])
    made = make_data_free_set(source, (1, 1, 8, 8), 8, tmp_path / "synth.npz", FAST, input_name="input")
    assert made.manifest["source"]["method"] == "range-only"
    assert "no BatchNorm statistics" in made.manifest["source"]["note"]


def test_onnx_op_the_runner_lacks_is_named_with_the_alternatives(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Hardmax", ["x"], ["y"])], "hardmax",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    path = tmp_path / "hardmax.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(DataFreeError, match="Hardmax") as caught:
        onnx_graph_module(path)
    assert "--from" in caught.value.fix
