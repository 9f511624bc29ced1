"""Transformer encoders in int8: the recipe the graph gets, SmoothQuant migration, the attention mask's fill values
kept out of int8, dynamic int8 MatMuls, their diagnosis and repair's grouping by role. Tiny BERT/ViT models built
from a transformers config (tests/transformer_models.py), never downloaded."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgecompress.calib.load import CalibrationSet
from edgecompress.core.targets import load_profile
from edgecompress.pipeline.repair import _by_role, layer_roles
from edgecompress.quantize.diagnose import LayerError, diagnose
from edgecompress.quantize.isa import recipe_for_target
from edgecompress.quantize.recipe import QuantRecipe
from edgecompress.quantize.smoothquant import channel_absmax, migration_scales, smooth_matmuls, weighted_matmuls
from edgecompress.quantize.static import quantize_model, unbounded_tensors
from edgecompress.quantize.transformer import DEFAULT_SMOOTH_ALPHA, is_transformer_encoder, transformer_recipe
from edgecompress.source.layout import BatchLayout
from tests.transformer_models import bert_inputs, tiny_bert_encoder_onnx, tiny_vit_onnx


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> Path:
    return tiny_bert_encoder_onnx(tmp_path_factory.mktemp("bert") / "encoder.onnx")


@pytest.fixture(scope="module")
def calibration() -> CalibrationSet:
    arrays = bert_inputs(batch=24, seed=1)
    return CalibrationSet(arrays, "tiny-bert-calibration", "bert_inputs(seed=1)")


def _run(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def _cosines(reference: np.ndarray, value: np.ndarray) -> np.ndarray:
    return np.sum(reference * value, 1) / (np.linalg.norm(reference, axis=1) * np.linalg.norm(value, axis=1))


def test_bert_and_vit_graphs_are_transformer_encoders_and_a_cnn_is_not(bert, tmp_path, tiny_onnx):
    assert is_transformer_encoder(onnx.load(str(bert)))
    assert is_transformer_encoder(onnx.load(str(tiny_vit_onnx(tmp_path / "vit.onnx"))))
    assert not is_transformer_encoder(onnx.load(str(tiny_onnx)))


def test_a_transformer_gets_int8_matmuls_only_dynamic_on_onnx_runtime_and_static_qdq_on_tensorrt():
    cpu = transformer_recipe(recipe_for_target(load_profile("cpu")), "ort-cpu")
    assert cpu.op_types == ("MatMul", "Gemm") and cpu.activations == "dynamic" and cpu.smooth_alpha == DEFAULT_SMOOTH_ALPHA
    assert cpu.reduce_range == recipe_for_target(load_profile("cpu")).reduce_range  # the host's ISA rule still holds
    assert "dynamic activations" in cpu.label and "SmoothQuant" in cpu.label and "transformer encoder" in cpu.reason
    gpu = transformer_recipe(recipe_for_target(load_profile("jetson")), "tensorrt")
    assert gpu.activations == "static" and gpu.placement == "tensorrt" and gpu.op_types == ("MatMul", "Gemm")


def test_smoothing_moves_outliers_into_the_weights_without_changing_the_fp32_outputs(bert, calibration, tmp_path):
    model = onnx.load(str(bert))
    groups = weighted_matmuls(model)
    # query, key and value share one input: one group of three per block
    assert sorted(len(nodes) for nodes in groups.values()).count(3) == 2
    maxima = channel_absmax(bert, calibration.batches(8), list(groups))
    assert smooth_matmuls(model, maxima, 0.5) == len(groups)
    smoothed = tmp_path / "smoothed.onnx"
    onnx.save(model, str(smoothed))
    feeds = bert_inputs(batch=5, seed=2)
    assert np.allclose(_run(smoothed, feeds), _run(bert, feeds), atol=1e-5)
    # s_j = max|X_j|^a / max|W_j|^(1-a): a channel whose activation is 16x larger is divided by 4x more at a = 0.5
    scales = migration_scales(np.array([1.0, 16.0, 0.0]), [np.ones((3, 2))], 0.5)
    assert np.allclose(scales, [1.0, 4.0, 1.0])  # a silent channel keeps 1


def test_the_attention_masks_fill_values_are_found_and_kept_out_of_static_int8(bert, calibration, tmp_path, capsys):
    found = unbounded_tensors(bert, calibration)
    assert found  # (1 - mask) * finfo(float32).min, and the scores it is added to
    int8 = quantize_model(bert, calibration, QuantRecipe(), tmp_path / "static.int8.onnx")  # ORT's defaults: every op
    assert "hold infinities or fill values" in capsys.readouterr().err
    model = onnx.load(str(int8))
    scales = [onnx.numpy_helper.to_array(t) for t in model.graph.initializer if t.name.endswith("_scale")]
    assert scales and all(np.isfinite(s).all() and (s > 0).all() for s in scales)  # no NaN zero point, no inf scale
    feeds = bert_inputs(batch=4, seed=3)
    assert np.isfinite(_run(int8, feeds)).all()


def test_dynamic_int8_matmuls_keep_layernorm_softmax_and_the_mask_float(bert, calibration, tmp_path):
    recipe = transformer_recipe(recipe_for_target(load_profile("cpu")), "ort-cpu")
    int8 = quantize_model(bert, calibration, recipe, tmp_path / "dynamic.int8.onnx")
    ops = [node.op_type for node in onnx.load(str(int8)).graph.node]
    assert "MatMulInteger" in ops and "DynamicQuantizeLinear" in ops and "QuantizeLinear" not in ops
    assert "LayerNormalization" in ops and "Softmax" in ops
    feeds = bert_inputs(batch=6, seed=4)
    assert _cosines(_run(bert, feeds), _run(int8, feeds)).min() > 0.99


def test_the_diagnosis_of_dynamic_int8_names_each_quantized_matmul_and_the_noise_it_adds(bert, calibration, tmp_path):
    recipe = transformer_recipe(recipe_for_target(load_profile("cpu")), "ort-cpu")
    int8 = quantize_model(bert, calibration, recipe, tmp_path / "dynamic.int8.onnx")
    diagnosis = diagnose(bert, int8, bert_inputs(batch=8, seed=5), max_samples=8, layout=BatchLayout({}))
    matmuls = {n.name for n in onnx.load(str(bert)).graph.node if n.op_type == "MatMul" and n.name}
    assert {layer.node for layer in diagnosis.layers} <= matmuls and len(diagnosis.layers) >= 12
    assert all(layer.added_noise is not None and layer.added_noise >= 0 for layer in diagnosis.layers)
    ranked = [layer.added_noise for layer in diagnosis.ranking()]
    assert ranked == sorted(ranked, reverse=True)


def _layer(node: str, noise: float) -> LayerError:
    return LayerError(node, "MatMul", f"{node}_out", 30.0, 0.99, 40.0, None, 10.0, added_noise=noise)


def test_repair_groups_a_transformers_matmuls_by_their_role_in_the_repeated_block(bert):
    roles = layer_roles(bert)
    weighted = [n for n in onnx.load(str(bert)).graph.node if n.op_type == "MatMul" and "dense" in n.name]
    by_role: dict[str, set[str]] = {}
    for node in weighted:
        by_role.setdefault(roles[node.name], set()).add(re.sub(r"\d+", "#", node.name))  # the name without its block
    # attention output, FFN input and FFN output: one role each across both blocks, whatever the nodes are named
    assert len(by_role) == 3 and all(len(names) == 1 for names in by_role.values())
    ffn_out, key_0, key_1, ffn_out_1 = "/ffn/out/0", "/key/0", "/key/1", "/ffn/out/1"
    ranked = [_layer(key_1, 0.5), _layer(ffn_out, 0.3), _layer(ffn_out_1, 0.3), _layer(key_0, 0.01)]  # the noisiest one ...
    groups = _by_role(ranked, {ffn_out: "FFN out", ffn_out_1: "FFN out", key_0: "key", key_1: "key"})
    assert groups == [(ffn_out, ffn_out_1), (key_1, key_0)]  # ... but an FFN output adds more on average


def _sentence_encoder_folder(tmp_path: Path) -> Path:
    """A tiny BERT saved as a sentence-transformers folder (mean pooling + normalisation, as all-MiniLM ships), with
    calib.npz and eval.npz of token ids beside it."""
    import json

    import torch
    from transformers import BertConfig, BertModel

    folder = tmp_path / "encoder"
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                         max_position_embeddings=64)).save_pretrained(folder)
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    np.savez(tmp_path / "calib.npz", **bert_inputs(batch=32, seed=6))
    np.savez(tmp_path / "eval.npz", **bert_inputs(batch=40, seed=7))
    return folder


def test_a_sentence_encoder_checkpoint_builds_for_cpu_judged_as_an_embedding(tmp_path):
    """From a checkpoint folder (mean pooling + normalisation, as all-MiniLM ships) to a built engine: the mask's
    fill values never reach a calibrator, the output is judged by neighbours and cosine, and the build exits clean."""
    from edgecompress.core.config import BuildConfig
    from edgecompress.pipeline.pipeline import build

    folder = _sentence_encoder_folder(tmp_path)
    config = BuildConfig(model=str(folder), target=["cpu"], calib=tmp_path / "calib.npz", eval_data=tmp_path / "eval.npz",
                         out=tmp_path / "out", input_shape=["input_ids:1,16"], bench_runs=10, bench_warmup=1)
    report, = build(config)
    assert report["fidelity"]["task"] == "embed" and report["fidelity"]["output"] == "sentence_embedding"
    assert {"embedding cosine", "worst cosine"} <= set(report["fidelity"]["outputs"][0]["result"]["details"])
    recipe = report["quantization"]["recipe"]
    assert recipe["activations"] == "dynamic" and recipe["op_types"] == ["MatMul", "Gemm"]
    assert report["fidelity"]["met"]  # whatever precision ships, it is within the embed budget


def test_repair_of_dynamic_int8_tries_8_bit_weights_then_single_matmuls_then_roles(bert, calibration, tmp_path):
    """Where int8 misses the budget, repair tries uint8 weights if the recipe had 7-bit ones, then keeps single MatMuls
    float by the noise each adds, then whole roles, and says so. (Judged against an encoder with perturbed weights,
    which no recipe can match: every rung of the search runs.)"""
    from dataclasses import replace

    from onnx import numpy_helper

    from edgecompress.engines.ort_cpu import OrtRunner
    from edgecompress.measure.evaluate import EvalSet
    from edgecompress.measure.fidelity import Budget
    from edgecompress.pipeline.repair import RepairOptions, RepairSession, repair

    other = onnx.load(str(bert))
    rng = np.random.default_rng(0)
    for tensor in other.graph.initializer:
        if len(tensor.dims) == 2:
            weight = numpy_helper.to_array(tensor)
            tensor.CopyFrom(numpy_helper.from_array(weight + rng.standard_normal(weight.shape).astype(weight.dtype) * weight.std(),
                                                    tensor.name))
    onnx.save(other, tmp_path / "other.onnx")
    recipe = replace(transformer_recipe(recipe_for_target(load_profile("cpu")), "ort-cpu"), weight_type="int8", reduce_range=True)
    quantize = lambda r: quantize_model(bert, calibration, r, tmp_path / f"{abs(hash(r))}.onnx")  # noqa: E731
    load = lambda p: OrtRunner(p, threads=1)  # noqa: E731
    options = RepairOptions(latency_runs=0, diagnose_samples=16, max_excluded_layers=2)
    session = RepairSession(bert, EvalSet(bert_inputs(batch=40, seed=8), None, "other sentences"), quantize, load,
                            load(tmp_path / "other.onnx"), Budget(), options=options)
    result = repair(session, recipe)
    steps = [t.step for t in result.tries]
    assert not result.met and steps[:2] == ["target recipe (minmax)", "uint8 weights (8-bit, no reduce_range)"]
    wide = result.tries[1]
    assert wide.recipe.weight_type == "uint8" and not wide.recipe.reduce_range
    assert [i for i in onnx.load(str(wide.model_path)).graph.initializer
            if i.data_type == onnx.TensorProto.UINT8 and len(i.dims) == 2]  # the engine's MatMul weights are 8-bit unsigned
    exclusions = [t for t in result.tries if t.recipe.nodes_to_exclude]
    assert exclusions[0].step == "exclude top 1" and len(exclusions[0].recipe.nodes_to_exclude) == 1  # one MatMul first
    assert "by role" in result.stop_reason  # single MatMuls did not reach it, so roles were tried
    assert max(len(t.recipe.nodes_to_exclude) for t in exclusions) >= 4  # a role: two MatMuls in each of both blocks


def test_a_sentence_encoder_checkpoint_builds_a_pte_for_phones(tmp_path):
    """transformers builds its own mask with int64 arithmetic that PT2E's prepared graph turns into float32 (torchao
    0.17 / transformers 5); the wrapper passes a finite 4-D additive mask instead, so the encoder quantizes (dynamic
    int8 Linear layers, as on the ONNX route), lowers to XNNPACK and is judged as an embedding on the .pte."""
    from edgecompress.core.config import BuildConfig
    from edgecompress.engines import get_builder
    from edgecompress.pipeline.pipeline import build

    if get_builder("executorch").available() is not None:
        pytest.skip('needs the mobile extra (pip install -e ".[mobile]"): executorch is not installed')
    folder = _sentence_encoder_folder(tmp_path)
    config = BuildConfig(model=str(folder), target=["android-arm64-executorch"], calib=tmp_path / "calib.npz",
                         eval_data=tmp_path / "eval.npz", out=tmp_path / "out", input_shape=["input_ids:1,16"],
                         bench_runs=10, bench_warmup=1, allow_over_budget=True)
    report, = build(config)
    assert report["engine"]["path"].endswith(".pte")
    recipe = report["quantization"]["recipe"]  # Linear layers only, ranges per call: the ONNX route's recipe for encoders
    assert recipe["activations"] == "dynamic" and recipe["op_types"] == ["Linear"]
    assert "dynamic" in report["engine"]["metadata"]["quantizer"]["activations"]
    assert report["fidelity"]["task"] == "embed"
    cosine = report["fidelity"]["outputs"][0]["result"]["details"]["embedding cosine"]
    assert cosine > 0.95, report["fidelity"]
