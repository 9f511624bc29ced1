"""Quantization-aware fine-tuning: fake quantization mirrors the QDQ model, gradients pass straight through,
the trained weights go back into the same graph, and the engine computes what the fine-tuning saw."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
import pytest
import torch

from edgecompress.core.targets import load_profile
from edgecompress.engines.ort_cpu import OrtRunner
from edgecompress.quantize.isa import host_isa, recipe_for_target
from edgecompress.quantize.qat import (
    ActivationQuant, FakeQuantGraph, QatOptions, WeightQuant, distillation_targets, finetune, quantize_fine_tuned,
    read_quant_plan, weight_scale, write_weights,
)
from edgecompress.quantize.recipe import QuantRecipe
from edgecompress.quantize.static import prepare_model, quantize_model
from edgecompress.source.layout import BatchLayout
from tests.quant_models import digits_case  # noqa: F401 - fixture

# "cpu" is what a build for the cpu target uses on this host: full-range u8s8 with VNNI, reduce_range without it (the
# fused u8s8 kernels of AVX2 hosts saturate full-range weights, so the engine would differ from the fake quantization)
RECIPES = {"cpu": recipe_for_target(load_profile("cpu")),
           "arm / TensorRT": QuantRecipe(activation_type="int8", symmetric_activations=True)}


@pytest.fixture(scope="module", params=list(RECIPES))
def quantized(request, digits_case, tmp_path_factory):  # noqa: F811
    recipe = RECIPES[request.param]
    root = tmp_path_factory.mktemp("qat")
    prepared = prepare_model(digits_case.clean, digits_case.calibration, recipe, root / "prepared.onnx")
    qdq = quantize_model(digits_case.clean, digits_case.calibration, recipe, root / "ptq.onnx")
    return recipe, prepared, qdq, root


def _simulated(path, inputs: np.ndarray) -> np.ndarray:
    """The QDQ model with Q/DQ computed in float (no fused int8 kernels): what fake quantization mirrors."""
    return OrtRunner(path, threads=1, level="disable").run({"input": inputs})[0]


def test_the_plan_is_read_from_the_qdq_model(quantized):
    recipe, _, qdq, _ = quantized
    plan = read_quant_plan(onnx.load(str(qdq)), recipe)
    assert set(plan.weights) == {"conv1.weight", "conv2.weight", "head.weight"}
    symmetric_max = 64 if recipe.reduce_range else 127
    assert all(q.axis == 0 and q.symmetric_max == symmetric_max and q.dtype == "int8" for q in plan.weights.values())
    assert {"input", "logits"} <= set(plan.activations)  # the graph output too, by its own name
    assert {q.dtype for q in plan.activations.values()} == {recipe.activation_type}


def test_fake_quantization_computes_what_the_qdq_model_computes(quantized, digits_case):  # noqa: F811
    recipe, prepared, qdq, _ = quantized
    graph = FakeQuantGraph(onnx.load(str(prepared)), read_quant_plan(onnx.load(str(qdq)), recipe))
    x = digits_case.eval_set.inputs["input"][:200]
    with torch.no_grad():
        fake = graph.run({"input": torch.from_numpy(x)})[0].numpy()
    simulated = _simulated(qdq, x)
    output_step = read_quant_plan(onnx.load(str(qdq)), recipe).activations["logits"].scale
    # Stated tolerance: torch's and ORT's float convolutions round differently in the last bit, which can move a
    # value across a rounding boundary: at most 2 output steps anywhere, and the same top-1 for 99% of samples.
    assert np.abs(fake - simulated).max() <= 2 * output_step + 1e-6
    assert np.mean(fake.argmax(1) == simulated.argmax(1)) >= 0.99


def test_gradients_pass_straight_through_inside_the_range_and_stop_outside():
    quant = ActivationQuant(scale=0.1, zero_point=0, dtype="uint8")  # represents [0, 25.5]
    from edgecompress.quantize.qat import _fake_quant_activation

    x = torch.tensor([-1.0, 0.04, 3.33, 30.0], requires_grad=True)
    y = _fake_quant_activation(quant)(x)
    y.sum().backward()
    assert torch.allclose(y.detach(), torch.tensor([0.0, 0.0, 3.3, 25.5]))
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 0.0]


def test_weight_scale_is_the_quantizers_per_channel_max_over_127():
    weight = torch.tensor([[0.5, -1.27], [0.0, 0.0], [2.54, 1.0]])
    scale = weight_scale(weight, WeightQuant(axis=0, symmetric_max=127, dtype="int8"))
    assert torch.allclose(scale, torch.tensor([0.01, 1.0, 0.02]))  # an all-zero channel gets scale 1, as in ORT
    assert torch.allclose(weight_scale(weight, WeightQuant(None, 64, "int8")), torch.tensor([2.54 / 64]))


def test_the_logits_before_a_softmax_output_are_what_is_distilled(tmp_path):
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["scores"]), helper.make_node("Softmax", ["scores"], ["probabilities"], axis=-1)],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [1, 4]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 4])],
    )
    assert distillation_targets(helper.make_model(graph)) == ["scores", "scores"]


@pytest.fixture(scope="module", params=[False, True], ids=["calibrated ranges", "learned ranges"])
def fine_tuned(request, quantized, digits_case):  # noqa: F811
    recipe, prepared, qdq, root = quantized
    train = {"input": digits_case.calibration.arrays["input"]}
    options = QatOptions(steps=12, batch_size=16, lr=1e-3, validate_every=4, learn_ranges=request.param, range_lr=1e-2)
    tag = "lsq" if request.param else "fixed"
    result = finetune(prepared, qdq, train, BatchLayout({}), recipe, options, root / f"qat.{tag}.onnx")
    requantized = quantize_fine_tuned(result.model_path, digits_case.calibration, recipe, result.plan.activation_ranges(),
                                      root / f"qat.{tag}.int8.onnx")
    return recipe, prepared, result, requantized


def test_trained_weights_go_back_into_the_same_graph(quantized, tmp_path):
    recipe, prepared, qdq, _ = quantized
    graph = FakeQuantGraph(onnx.load(str(prepared)), read_quant_plan(onnx.load(str(qdq)), recipe))
    with torch.no_grad():
        graph.module.weight("conv1.weight").add_(0.01)  # what a training step does
    written = write_weights(onnx.load(str(prepared)), graph.module, tmp_path / "trained.onnx")
    before, after = onnx.load(str(prepared)), onnx.load(str(written))
    assert [(n.op_type, list(n.input), list(n.output)) for n in before.graph.node] == \
        [(n.op_type, list(n.input), list(n.output)) for n in after.graph.node]
    weights_before = {t.name: onnx.numpy_helper.to_array(t) for t in before.graph.initializer}
    weights_after = {t.name: onnx.numpy_helper.to_array(t) for t in after.graph.initializer}
    assert weights_before.keys() == weights_after.keys()
    assert all(weights_before[k].shape == weights_after[k].shape for k in weights_before)
    assert np.allclose(weights_after["conv1.weight"], weights_before["conv1.weight"] + 0.01)  # new values
    assert all(np.array_equal(weights_before[k], weights_after[k]) for k in weights_before if k != "conv1.weight")


def test_the_requantized_model_uses_the_ranges_and_weight_scales_the_training_used(fine_tuned):
    recipe, _, result, requantized = fine_tuned
    plan = read_quant_plan(onnx.load(str(requantized)), recipe)
    assert plan.activations == result.plan.activations  # the very scales and zero points the fine-tuning saw
    trained = FakeQuantGraph(onnx.load(str(result.model_path)), result.plan).module
    for name, quant in plan.weights.items():
        expected = weight_scale(trained.weight(name), quant).numpy()
        stored = next(onnx.numpy_helper.to_array(t) for t in onnx.load(str(requantized)).graph.initializer
                      if t.name == f"{name}_scale")
        assert np.allclose(stored, expected, rtol=1e-6), name


def test_the_engine_computes_what_the_fine_tuning_saw(fine_tuned, digits_case):  # noqa: F811
    recipe, _, result, requantized = fine_tuned
    graph = FakeQuantGraph(onnx.load(str(result.model_path)), result.plan)
    x = digits_case.eval_set.inputs["input"][:200]
    with torch.no_grad():
        fake = graph.run({"input": torch.from_numpy(x)})[0].numpy()
    # the optimized int8 engine itself where this host's kernels run the recipe exactly; a full-range recipe on an
    # x86 host without VNNI would run on saturating VPMADDUBSW kernels that are not its target's (ARM's and TensorRT's
    # accumulate in int32), so there the QDQ graph runs as ONNX defines it: each op in float between its DQ and Q
    _assert_engine_matches_fake_quant(requantized, recipe, result, x, fake)


def _assert_engine_matches_fake_quant(requantized, recipe: QuantRecipe, result, x: np.ndarray, fake: np.ndarray) -> None:
    exact_here = not (host_isa().saturates_u8s8 and not recipe.reduce_range)
    engine = OrtRunner(requantized, threads=1, level="all" if exact_here else "disable").run({"input": x})[0]
    step = result.plan.activations["logits"].scale
    # Stated tolerance, as for the QDQ model: 2 output steps, top-1 the same for 99% of samples
    assert np.abs(fake - engine).max() <= 2 * step + 1e-6
    assert np.mean(fake.argmax(1) == engine.argmax(1)) >= 0.99


STARTS = {"minmax": {}, "entropy": {"calibration_method": "entropy"}, "percentile": {"calibration_method": "percentile"},
          "bias correction": {"bias_correction": True}, "equalization": {"equalize": True},
          "excluded nodes": {"nodes_to_exclude": ("/conv2/Conv",)},
          "percentile, equalization, bias correction, excluded nodes": {
              "calibration_method": "percentile", "equalize": True, "bias_correction": True, "nodes_to_exclude": ("/conv2/Conv",)}}


@pytest.mark.parametrize("start", list(STARTS))
def test_from_every_start_the_ladder_can_pick_the_engine_computes_what_the_fine_tuning_saw(start, digits_case, tmp_path):  # noqa: F811
    """The QAT rung starts from repair's best try, whatever it is: the prepared graph of that recipe is fine-tuned under
    the fake quantization read from that try's QDQ model, and the re-quantized engine must compute the same."""
    recipe = replace(RECIPES["cpu"], **STARTS[start])
    prepared = prepare_model(digits_case.clean, digits_case.calibration, recipe, tmp_path / "prepared.onnx")
    qdq = quantize_model(digits_case.clean, digits_case.calibration, recipe, tmp_path / "ptq.onnx")
    train = {"input": digits_case.calibration.arrays["input"]}
    result = finetune(prepared, qdq, train, BatchLayout({}), recipe, QatOptions(steps=4, batch_size=16, validate_every=4),
                      tmp_path / "qat.onnx")
    requantized = quantize_fine_tuned(result.model_path, digits_case.calibration, recipe, result.plan.activation_ranges(),
                                      tmp_path / "qat.int8.onnx")
    plan = read_quant_plan(onnx.load(str(requantized)), recipe)
    assert plan.activations == result.plan.activations and plan.weights.keys() == result.plan.weights.keys()
    if recipe.nodes_to_exclude:  # the excluded convolution keeps its float weight after the write-back too
        graph = onnx.load(str(requantized)).graph
        conv2 = next(n for n in graph.node if n.name == "/conv2/Conv")
        weight = next(t for t in graph.initializer if t.name == conv2.input[1])
        assert weight.data_type == onnx.TensorProto.FLOAT
    x = digits_case.eval_set.inputs["input"][:200]
    with torch.no_grad():
        fake = FakeQuantGraph(onnx.load(str(result.model_path)), result.plan).run({"input": torch.from_numpy(x)})[0].numpy()
    _assert_engine_matches_fake_quant(requantized, recipe, result, x, fake)


def test_fine_tuning_keeps_its_best_weights_and_records_its_curve(fine_tuned):
    _, _, result, _ = fine_tuned
    assert result.steps == 12 and result.stopped == "12 steps" and result.samples > 0
    assert result.augmented  # the digits are 1x32x32 images: trained on random views of them
    assert result.validation_loss_after <= result.validation_loss_before
    assert [entry["step"] for entry in result.curve if "validation_loss" in entry] == [0, 4, 8, 12]
    # the task metric beside the loss: top-1 agreement with fp32 on the held-back inputs
    validated = [entry for entry in result.curve if "validation_loss" in entry]
    assert all(0 <= entry["validation_agreement"] <= 1 for entry in validated)
    assert validated[0]["validation_agreement"] >= 0.9  # post-training int8 of this model agrees with fp32


def test_batchnorm_left_in_the_graph_keeps_its_statistics(tmp_path):
    from tests.calib_fixtures import bn_training_data, export_tiny_onnx
    from edgecompress.calib.load import calibration_set_from_arrays
    from edgecompress.export.graph import model_io, read_onnx

    path = export_tiny_onnx(tmp_path / "bn.onnx")  # the torchscript export keeps BatchNormalization
    graph = FakeQuantGraph(onnx.load(str(path)), read_quant_plan(onnx.load(str(path)), QuantRecipe()))
    before = {k: v.clone() for k, v in graph.module.batchnorms.state_dict().items()}
    x = torch.from_numpy(bn_training_data())
    with torch.enable_grad():
        graph.module.train()  # even asked to train, the graph's BatchNorm stays in inference mode
        graph.run({"input": x})[0].sum().backward()
    assert all(torch.equal(before[k], v) for k, v in graph.module.batchnorms.state_dict().items())
    inputs, _ = model_io(read_onnx(path))
    calibration_set_from_arrays({"input": bn_training_data()}, inputs, "bn")  # the fixture's data fits the model


def test_bad_options_are_refused_with_the_fix():
    from edgecompress.core.errors import ConfigError

    with pytest.raises(ConfigError, match="steps"):
        QatOptions(steps=0)
    with pytest.raises(ConfigError, match="lr"):
        QatOptions(lr=2.0)




def test_the_ladder_runs_the_qat_rung_for_an_engine_built_here_and_for_a_kit(digits_case, tmp_path):  # noqa: F811
    from edgecompress.core.config import BuildConfig
    from edgecompress.pipeline.pipeline import build

    np.savez(tmp_path / "calib.npz", input=digits_case.calibration.arrays["input"])
    np.savez(tmp_path / "eval.npz", input=digits_case.eval_set.inputs["input"][:128])
    config = BuildConfig(model=str(digits_case.clean), target=["cpu", "jetson"], calib=tmp_path / "calib.npz",
                         eval_data=tmp_path / "eval.npz", out=tmp_path / "out", bench_runs=10, bench_warmup=1,
                         qat="on", qat_steps=6, qat_lr=1e-4, diagnose=False)
    for report in build(config):
        qat = report["quantization"]["qat"]
        assert qat["ran"] and qat["steps"] == 6 and qat["training_inputs"] > 0 and "calibration set" in qat["data"]
        assert [entry["step"] for entry in qat["curve"]][:2] == [0, 1] and qat["validation_loss_after"] <= qat["validation_loss_before"]
        assert qat["before"].startswith("top-1") and qat["after"].startswith("top-1") and isinstance(qat["met"], bool)
        assert any(line.startswith("Quantization-aware training (6 steps") for line in report["verdict"])
        names = [c["name"] for c in report["quantization"]["precision"]["candidates"]]
        assert "int8 QAT" in names and qat["shipped"] == (report["quantization"]["precision"]["chosen"] == "int8 QAT")
        # the report's ladder: what each rung cost and what it bought, and one line of it in the verdict
        ladder = report["quantization"]["ladder"]
        assert [rung["rung"] for rung in ladder] == ["repair", "quantization-aware training", "precision choice"]
        assert all(rung["seconds"] >= 0 for rung in ladder) and ladder[1]["seconds"] >= qat["seconds"]
        assert qat["after"] in ladder[1]["outcome"] and "tries" in ladder[0]["outcome"]
        assert any(line.startswith("Ladder: repair ") for line in report["verdict"])
        assert all(t["seconds"] >= 0 for t in report["quantization"]["tries"])  # rounded to 0.1 s: a kit's tries are fast
        assert sum(t["seconds"] for t in report["quantization"]["tries"]) <= ladder[0]["seconds"] + 0.5
    assert (tmp_path / "out" / "qat").is_dir() and list((tmp_path / "out" / "int8").glob("model.int8.qat.*.onnx"))


def test_learned_ranges_train_the_scales_and_leave_the_zero_points(quantized, digits_case):  # noqa: F811
    recipe, prepared, qdq, _ = quantized
    plan = read_quant_plan(onnx.load(str(qdq)), recipe)
    graph = FakeQuantGraph(onnx.load(str(prepared)), plan, learn_ranges=True)
    assert set(graph.scales) == set(plan.activations)
    x = torch.from_numpy(digits_case.eval_set.inputs["input"][:8])
    graph.run({"input": x})[0].pow(2).sum().backward()
    moved = [name for name, scale in graph.scales.items() if scale.grad is not None and float(scale.grad.abs()) > 0]
    assert len(moved) >= len(plan.activations) // 2  # the LSQ gradient reaches the scales
    with torch.no_grad():
        for scale in graph.scales.values():
            scale.mul_(1.5)
    trained = graph.trained_plan()
    for name, quant in plan.activations.items():
        assert trained.activations[name].scale == pytest.approx(quant.scale * 1.5, rel=1e-6)
        assert (trained.activations[name].zero_point, trained.activations[name].dtype) == (quant.zero_point, quant.dtype)


def test_the_report_plot_shows_the_qat_loss_curve_beside_the_latencies(tmp_path):
    from PIL import Image

    from edgecompress.pipeline.report import plot_latency

    samples = {"engine": [1.0, 1.2, 1.1], "fp32": [2.0, 2.1, 2.2]}
    curve = [{"step": 0, "validation_loss": 0.5}, {"step": 1, "loss": 0.6}, {"step": 2, "loss": 0.4, "validation_loss": 0.3}]
    alone = plot_latency(samples, tmp_path / "alone.png", "latency")
    beside = plot_latency(samples, tmp_path / "beside.png", "latency", curve)
    with Image.open(alone) as a, Image.open(beside) as b:
        assert b.height == a.height and b.width > 1.5 * a.width  # a second panel, the loss curve
        assert b.convert("L").getextrema()[0] < 128  # something is drawn


def test_by_default_qat_runs_only_where_repair_missed_the_budget(digits_case, tmp_path):  # noqa: F811
    from PIL import Image

    from edgecompress.core.config import BuildConfig
    from edgecompress.pipeline.pipeline import build

    np.savez(tmp_path / "calib.npz", input=digits_case.calibration.arrays["input"])
    np.savez(tmp_path / "eval.npz", input=digits_case.eval_set.inputs["input"][:128])
    common = dict(target=["cpu"], calib=tmp_path / "calib.npz", eval_data=tmp_path / "eval.npz", bench_runs=10,
                  bench_warmup=1, qat_steps=4, diagnose=False, equalize="off", bias_correction="off")
    assert BuildConfig(model="x.onnx").qat == "auto"
    missed = build(BuildConfig(model=str(digits_case.fragile), out=tmp_path / "missed", max_excluded_layers=0, **common))[0]
    assert missed["quantization"]["repair"]["met"] is False
    assert missed["quantization"]["qat"]["ran"] and missed["quantization"]["qat"]["steps"] == 4
    with Image.open(tmp_path / "missed" / "cpu" / "latency.png") as plot:
        assert plot.width > plot.height * 2.5  # latencies and the loss curve side by side
    met = build(BuildConfig(model=str(digits_case.clean), out=tmp_path / "met", **common))[0]
    assert met["quantization"]["repair"]["met"] is True and met["quantization"]["qat"] is None


def test_qat_trains_on_the_data_train_and_validation_splits_never_the_test_split(digits_case):  # noqa: F811
    from edgecompress.core.config import BuildConfig
    from edgecompress.pipeline.qat_stage import QatSources, training_inputs
    from edgecompress.source.data import digits_splits

    splits = digits_splits()
    sources = QatSources(BuildConfig(model="m.onnx", data="digits"), digits_case.clean, ["input"], digits_case.calibration, splits)
    arrays, _, described = training_inputs(sources)
    x = arrays["input"]
    assert len(x) == len(splits.train.x) + len(splits.val.x) and "train and validation" in described
    seen = {row.tobytes() for row in x}
    assert not any(row.tobytes() in seen for row in splits.test.x)


def test_fine_tuning_stops_when_the_validation_loss_stops_falling(quantized, digits_case):  # noqa: F811
    """A plateau ends the rung early (the ladder's time is better spent on the next rung), and says so."""
    recipe, prepared, qdq, root = quantized
    options = QatOptions(steps=50, batch_size=16, lr=1e-12, validate_every=2, patience=2, augment=False)
    result = finetune(prepared, qdq, {"input": digits_case.calibration.arrays["input"]}, BatchLayout({}), recipe, options,
                      root / "qat.plateau.onnx")
    assert result.steps == 4 and result.stopped == "validation loss flat for 2 checks after 4 steps"
    assert result.seconds_per_step == pytest.approx(result.seconds / 4)


@pytest.mark.slow  # two torchrun processes fine-tune
def test_two_torchrun_processes_fine_tune_what_one_process_does(digits_case, tmp_path):  # noqa: F811
    """Each process trains on its share of every global batch (the views one process would draw), the gradients are
    averaged: the same weights as one process within float noise (atol 1e-4), and the same ranges to quantize with."""
    from edgecompress.quantize.qat_ddp import run_job, write_job

    recipe = RECIPES["cpu"]
    # the model with an outlier channel: its post-training int8 is poor, so the fine-tuning has something to learn
    prepared = prepare_model(digits_case.fragile, digits_case.calibration, recipe, tmp_path / "prepared.onnx")
    qdq = quantize_model(digits_case.fragile, digits_case.calibration, recipe, tmp_path / "ptq.onnx")
    train = {"input": digits_case.calibration.arrays["input"]}
    options = QatOptions(steps=8, batch_size=16, lr=1e-3, validate_every=4, validation_fraction=0.3)
    one = finetune(prepared, qdq, train, BatchLayout({}), recipe, options, tmp_path / "one.onnx")
    job = write_job(tmp_path / "job", prepared, qdq, train, BatchLayout({}), recipe, options, tmp_path / "two.onnx")
    two = run_job(job, processes=2, timeout=300)
    assert one.augmented and two.augmented and two.steps == one.steps == 8 and two.plan.activations == one.plan.activations
    weights = {name: {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}
               for name, path in (("before", prepared), ("one", one.model_path), ("two", two.model_path))}
    assert any(not np.array_equal(weights["before"][k], weights["one"][k]) for k in weights["one"]), one.curve  # it trained
    for name, value in weights["one"].items():
        np.testing.assert_allclose(weights["two"][name], value, atol=1e-4, rtol=1e-3, err_msg=name)


@pytest.mark.slow  # a build whose QAT rung runs in two torchrun processes
def test_a_build_runs_its_qat_rung_in_two_processes(digits_case, tmp_path):  # noqa: F811
    from edgecompress.core.config import BuildConfig
    from edgecompress.pipeline.pipeline import build

    np.savez(tmp_path / "calib.npz", input=digits_case.calibration.arrays["input"])
    np.savez(tmp_path / "eval.npz", input=digits_case.eval_set.inputs["input"][:128])
    config = BuildConfig(model=str(digits_case.fragile), target=["cpu"], calib=tmp_path / "calib.npz",
                         eval_data=tmp_path / "eval.npz", out=tmp_path / "out", bench_runs=10, bench_warmup=1,
                         qat="on", qat_steps=4, qat_processes=2, diagnose=False)
    report, = build(config)
    qat = report["quantization"]["qat"]
    assert qat["ran"] and qat["processes"] == 2 and qat["steps"] == 4 and qat["seconds_per_step"] > 0
    assert "int8 QAT" in [c["name"] for c in report["quantization"]["precision"]["candidates"]]


def test_a_model_that_fixes_its_batch_is_refused_before_any_step_with_the_fix(tmp_path):
    """A graph whose Reshape fixes batch 1 (as YOLO exports do) cannot train on batches: a typed error the ladder
    passes over (it goes on to fp16/fp32), not an ONNX Runtime failure mid-training."""
    from onnx import TensorProto, helper, numpy_helper

    from edgecompress.calib.load import calibration_set_from_arrays
    from edgecompress.core.errors import QuantizationError
    from edgecompress.export.graph import model_io, read_onnx

    weight = np.random.default_rng(0).normal(size=(4, 6)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
         helper.make_node("Reshape", ["h", "shape"], ["y"], name="fixed")],
        "fixed-batch", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(np.array([1, 6], np.int64), "shape")])
    fp32 = tmp_path / "fixed.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(fp32))
    x = np.random.default_rng(1).normal(size=(32, 4)).astype(np.float32)
    inputs, _ = model_io(read_onnx(fp32))
    calibration = calibration_set_from_arrays({"x": x}, inputs, "fixed", BatchLayout({}, fixed_batch=1))
    recipe = QuantRecipe()
    prepared = prepare_model(fp32, calibration, recipe, tmp_path / "prepared.onnx")
    qdq = quantize_model(fp32, calibration, recipe, tmp_path / "ptq.onnx")
    for layout in (BatchLayout({}, fixed_batch=1), BatchLayout({})):  # declared by the layout, or found by running it
        with pytest.raises(QuantizationError, match="batch") as raised:
            finetune(prepared, qdq, {"x": x}, layout, recipe, QatOptions(steps=2), tmp_path / "qat.onnx")
        assert "dynamic batch axis" in raised.value.fix and "--qat off" in raised.value.fix
