"""A valid ONNX graph whose nodes have no names (hand-built graphs, some exporters) or repeat one: every node is
named once, when the model is prepared, so every step that finds nodes by name works on it."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgecompress.core.config import BuildConfig
from edgecompress.export.graph import name_nodes
from edgecompress.pipeline.pipeline import build
from edgecompress.source.data import digits_splits


def _digits_graph(names: list[str]) -> onnx.ModelProto:
    """Conv -> Relu -> Conv -> Relu -> Flatten -> Gemm over 1x8x8 digits, its nodes named `names`."""
    rng = np.random.default_rng(0)
    weights = {
        "w1": rng.normal(0, 0.5, (8, 1, 3, 3)), "b1": rng.normal(0, 0.1, 8),
        "w2": rng.normal(0, 0.3, (8, 8, 3, 3)), "b2": rng.normal(0, 0.1, 8),
        "w3": rng.normal(0, 0.1, (10, 8 * 8 * 8)), "b3": np.zeros(10),
    }
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("Flatten", ["r2"], ["f"]),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["logits"], transB=1),
    ]
    for node, name in zip(nodes, names):
        node.name = name
    graph = helper.make_graph(
        nodes, "digits", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 10])],
        [numpy_helper.from_array(value.astype(np.float32), name) for name, value in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def test_unnamed_and_repeated_names_become_unique_and_given_names_stay():
    model = _digits_graph(["", "", "conv", "conv", "", "head"])  # the second "conv" (a Relu) is renamed
    assert name_nodes(model) == 4
    assert [node.name for node in model.graph.node] == ["Conv_0", "Relu_1", "conv", "Relu_3", "Flatten_4", "head"]
    assert name_nodes(model) == 0  # once: a named graph keeps its names


@pytest.mark.parametrize("names", [[""] * 6, ["same"] * 6], ids=["unnamed", "one-name-for-all"])
def test_a_graph_without_node_names_builds_for_cpu_and_the_arm_recipe(tmp_path, names):
    """The ARM recipe's bias correction matched weights by node name and crashed on '' (issue #24, point 7)."""
    path = tmp_path / "unnamed.onnx"
    onnx.save(_digits_graph(names), str(path))
    splits = digits_splits()
    x = splits.val.x[:, :, ::4, ::4].copy()  # 8x8: the digits at their own resolution
    np.savez(tmp_path / "calib.npz", input=x[:32])
    np.savez(tmp_path / "eval.npz", input=splits.test.x[:64, :, ::4, ::4].copy())
    config = BuildConfig(model=str(path), target=["cpu", "raspberry-pi-5"], calib=tmp_path / "calib.npz",
                         eval_data=tmp_path / "eval.npz", out=tmp_path / "out", bench_runs=10, bench_warmup=1,
                         bias_correction="on", precision="int8", allow_over_budget=True)
    reports = {report["target"]: report for report in build(config)}
    assert set(reports) == {"cpu", "raspberry-pi-5"}
    for target in reports:
        recipe = json.loads((tmp_path / "out" / target / "report.json").read_text())["quantization"]["recipe"]
        assert recipe["bias_correction"] is True
    fp32 = onnx.load(str(tmp_path / "out" / "model.fp32.onnx"))
    assert all(node.name for node in fp32.graph.node) and len({n.name for n in fp32.graph.node}) == len(fp32.graph.node)
