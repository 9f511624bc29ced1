"""Accuracy-aware int8: naive vs repaired int8, and the per-target precision choice.

Part 1 — models where plain int8 loses clearly: fp32 / naive int8 (ORT's usual u8s8
per-channel, minmax) / repaired int8 (the target's recipe + `repair` within a 1.0-point
budget), top-1, nodes kept fp32, and p50 latency of each measured interleaved in one run.
Goal: repaired within 1.0 pt at >= 80% of naive int8's speed-up over fp32.
Part 2 — the precision each target ships for the built-in example, a ResNet-18-style and a
MobileNetV2-style model (224x224, random weights with BatchNorm statistics re-estimated so
activations have realistic ranges; agreement budget on random inputs).

Run: python benchmarks/quant_repair.py [--quick]   (EDGECOMPRESS_CACHE caches trained models)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edgecompress.measure.bench import benchmark  # noqa: E402
from edgecompress.calib.load import calibration_set_from_arrays  # noqa: E402
from edgecompress.compress.trainer import TrainConfig, fit  # noqa: E402
from edgecompress.source.data import (DIGITS_SIZE, DIGITS_SPEC, DigitsSplits, LabelledArrays, digits_images,  # noqa: E402
                                       digits_split_indices, digits_splits, preprocess_digits)
from edgecompress.engines.ort_cpu import OrtCpuBuilder  # noqa: E402
from edgecompress.measure.evaluate import EvalSet, evaluate  # noqa: E402
from edgecompress.presets.example import example_teacher  # noqa: E402
from edgecompress.core.cache import cache_dir
from edgecompress.export.torch_export import export_torch
from edgecompress.core.config import make_config  # noqa: E402
from edgecompress.quantize.isa import recipe_for_target  # noqa: E402
from edgecompress.pipeline.pipeline import target_recipe  # noqa: E402
from edgecompress.pipeline.precision import PrecisionSettings, TargetModels, quantize_for_target  # noqa: E402
from edgecompress.pipeline.repair import Budget, RepairOptions  # noqa: E402
from edgecompress.quantize.static import quantize_model  # noqa: E402
from edgecompress.quantize.recipe import QuantRecipe
from edgecompress.core.targets import TargetProfile, load_profile  # noqa: E402
from edgecompress.source.zoo import build_model  # noqa: E402

DEFAULT_CONFIG = make_config({}, {})  # the build's defaults: the recipe `edgecompress build` starts from
NAIVE = QuantRecipe(reason="naive: ORT's usual u8s8 per-channel, full range, minmax")


def digits_splits_at(size: int = DIGITS_SIZE) -> DigitsSplits:
    """The digits' train/validation/test split, preprocessed as the example does but resized to size x size."""
    if size == DIGITS_SIZE:
        return digits_splits()
    images, labels = digits_images()
    x = preprocess_digits(images, replace(DIGITS_SPEC, resize=(size, size)))
    split = digits_split_indices()
    return DigitsSplits(*(LabelledArrays(x[i], labels[i]) for i in (split.train, split.val, split.test)))


def trained_mobilenet_digits(zoo_name: str = "mobilenetv2-digits", size: int = DIGITS_SIZE, epochs: int = 6) -> torch.nn.Module:
    """A zoo MobileNetV2 trained on the digits at size x size, cached under the project's cache dir by its config."""
    model = build_model(zoo_name)
    at_size = "" if size == DIGITS_SIZE else f"-s{size}"
    checkpoint = cache_dir() / f"bench-{zoo_name}{at_size}-e{epochs}.pt"
    if checkpoint.is_file():
        model.load_state_dict(torch.load(checkpoint, weights_only=True))
    else:
        splits = digits_splits_at(size)
        fit(model, splits.train, splits.val, TrainConfig(epochs=epochs, lr=4e-3), description=f"training {zoo_name} at {size}x{size}")
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), checkpoint)
    return model.eval()


@torch.no_grad()
def teacher_with_outlier_channel(scale: float = 500.0) -> torch.nn.Module:
    """The example teacher with one channel scaled up and the next conv scaled down (ReLU keeps fp32 exact).

    Inside the first residual block (bn1 -> ReLU -> conv2), where no shortcut carries the scaled channel.
    """
    model = example_teacher()
    block = model.layers[0]
    batchnorm, next_conv = block.bn1, block.conv2
    batchnorm.weight[0] *= scale
    batchnorm.bias[0] *= scale
    next_conv.weight[:, 0] /= scale
    return model.eval()


@torch.no_grad()
def with_estimated_batchnorm(model: torch.nn.Module, batch: torch.Tensor) -> torch.nn.Module:
    """Random weights with BN running statistics of real forward passes (activations stay in range)."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average
    model.train()
    model(batch)
    return model.eval()


def export(model: torch.nn.Module, shape: tuple[int, ...], path: Path) -> Path:
    return export_torch(model, {"input": shape}, path, exporter="torchscript").path


def cpu_models() -> tuple[TargetProfile, TargetModels]:
    profile = load_profile("cpu")
    return profile, TargetModels(OrtCpuBuilder(), profile, Path(tempfile.mkdtemp(prefix="edgecompress-candidates-")))


def repair_case(name: str, fp32: Path, calib: np.ndarray, eval_set: EvalSet, workdir: Path, runs: int, rewrites: bool) -> dict:
    """rewrites=False: the build with --equalize off --bias-correction off (repair can only keep nodes in fp32)."""
    from edgecompress.export.graph import model_io, read_onnx

    inputs, _ = model_io(read_onnx(fp32))
    calibration = calibration_set_from_arrays({"input": calib}, inputs, "digits train")
    naive = quantize_model(fp32, calibration, NAIVE, workdir / f"{name}.naive.onnx")
    profile, models = cpu_models()

    def quantize(recipe: QuantRecipe) -> Path:
        from edgecompress.core.artifacts import sha256_json

        out = workdir / f"{name}.{sha256_json(recipe.cache_key())[:12]}.onnx"
        return out if out.is_file() else quantize_model(fp32, calibration, recipe, out)

    feeds = {"input": eval_set.inputs["input"][:1]}
    options = RepairOptions(latency_runs=0, try_equalize=rewrites, try_bias_correction=rewrites)
    settings = PrecisionSettings(Budget(max_accuracy_drop=1.0), options, precision="int8", bench_runs=20)
    recipe = target_recipe(profile, DEFAULT_CONFIG if rewrites else make_config({}, {"equalize": "off", "bias_correction": "off"}))
    result = quantize_for_target(fp32, eval_set, recipe, quantize, models, feeds, settings)
    repaired = result.repair.best
    runners = {"fp32": models.load(fp32), "naive": models.load(naive), "repaired": models.load(repaired.model_path)}
    stats, _ = benchmark(runners, feeds, runs=runs, warmup=10, max_seconds=60)
    naive_eval = evaluate(runners["naive"], runners["fp32"], eval_set)
    return {
        "model": name,
        "fp32_top1": naive_eval.accuracy_reference,
        "naive_top1": naive_eval.accuracy_engine,
        "repaired_top1": repaired.evaluation.accuracy_engine,
        "fp32_nodes": len(repaired.recipe.nodes_to_exclude),
        "recipe": repaired.recipe.label,
        "tries": len(result.repair.tries),
        "ms": {k: v.p50 for k, v in stats.items()},
    }


def part1_rows(calib: np.ndarray, digits_eval: EvalSet, workdir: Path, runs: int) -> list[dict]:
    cases = {  # name: (model, may the recipe and repair use cross-layer equalization and bias correction)
        "mobilenetv2-digits (trained)": (trained_mobilenet_digits(), True),
        "digits teacher + outlier channel": (teacher_with_outlier_channel(), True),
        "digits teacher + outlier channel, --equalize off --bias-correction off": (teacher_with_outlier_channel(), False),
    }
    rows = []
    for i, (name, (model, rewrites)) in enumerate(cases.items()):
        fp32 = export(model, (1, 1, 32, 32), workdir / f"case{i}.onnx")
        rows.append(repair_case(f"case{i}", fp32, calib, digits_eval, workdir, runs, rewrites) | {"model": name})
    return rows


def print_repair_table(rows: list[dict]) -> None:
    print("\n## Part 1: naive vs repaired int8 (cpu target, batch 1, p50 of interleaved runs)")
    print("| model | fp32 top-1 | naive int8 top-1 | repaired top-1 | recipe | fp32 nodes | tries | fp32 ms | naive ms | repaired ms | naive speed-up | repaired speed-up | repaired/naive speed-up | goal |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ms = r["ms"]
        naive_up, repaired_up = ms["fp32"] / ms["naive"], ms["fp32"] / ms["repaired"]
        within = r["fp32_top1"] - r["repaired_top1"] <= 1.0
        goal = "met" if within and repaired_up >= 0.8 * naive_up else "MISSED"
        print(f"| {r['model']} | {r['fp32_top1']:.2f} | {r['naive_top1']:.2f} | {r['repaired_top1']:.2f} | {r['recipe']} | "
              f"{r['fp32_nodes']} | {r['tries']} | {ms['fp32']:.3f} | {ms['naive']:.3f} | {ms['repaired']:.3f} | "
              f"{naive_up:.2f}x | {repaired_up:.2f}x | {repaired_up / naive_up:.0%} | {goal} |")


def precision_row(name: str, fp32: Path, calib: np.ndarray, eval_set: EvalSet, budget: Budget, workdir: Path) -> list[str]:
    from edgecompress.export.graph import model_io, read_onnx

    inputs, _ = model_io(read_onnx(fp32))
    calibration = calibration_set_from_arrays({"input": calib}, inputs, "calibration")
    profile, models = cpu_models()
    recipe = target_recipe(profile, DEFAULT_CONFIG)
    quantize = lambda r: quantize_model(fp32, calibration, r, workdir / f"{name}.{len(r.nodes_to_exclude)}.{r.calibration_method}.onnx")  # noqa: E731
    settings = PrecisionSettings(budget, RepairOptions(latency_runs=0, max_excluded_layers=4, diagnose_samples=8), bench_runs=30, bench_max_seconds=30)
    result = quantize_for_target(fp32, eval_set, recipe, quantize, models, {"input": eval_set.inputs["input"][:1]}, settings)
    latencies = ", ".join(f"{c.name} {c.latency.p50:.2f} ms{'' if c.within_budget else ' (over budget)'}" for c in result.choice.candidates)
    shipped = result.choice.chosen.name if result.repair.met else f"none: int8 missed the budget ({result.repair.stop_reason}); build exits 3"
    return [name, "cpu (host: " + recipe.reason.split("(")[1].split(")")[0] + ")", budget.describe(), latencies, shipped]


def recipe_only_rows() -> list[list[str]]:
    devices = {
        "x86 with VNNI (isa avx512_vnni)": TargetProfile(name="x86-vnni", engine="ort-cpu", arch="x86_64", isa=("avx2", "avx512_vnni")),
        "ARM with dotprod (isa asimddp)": TargetProfile(name="arm", engine="ort-arm", arch="aarch64", isa=("asimddp",)),
        "TensorRT": TargetProfile(name="trt", engine="tensorrt", arch="aarch64", isa=("asimddp",)),
    }
    return [[label, r.activation_type, r.weight_type, str(r.reduce_range), str(r.symmetric_activations)]
            for label, r in ((label, recipe_for_target(p)) for label, p in devices.items())]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=200, help="timed runs per engine in part 1")
    parser.add_argument("--skip-224", action="store_true", help="leave the 224x224 models out of part 2")
    parser.add_argument("--part", choices=["1", "2", "all"], default="all", help="run only part 1 or part 2")
    args = parser.parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("EDGECOMPRESS_QUIET", "1")
    splits = digits_splits()
    digits_eval = EvalSet({"input": splits.test.x}, splits.test.y, "digits test")
    calib = splits.train.x[:256]
    with tempfile.TemporaryDirectory(prefix="quant-repair-bench-") as tmp:
        workdir = Path(tmp)
        if args.part != "2":
            print_repair_table(part1_rows(calib, digits_eval, workdir, args.runs))
        if args.part == "1":
            return
        table = [precision_row("built-in example (digits teacher)", export(example_teacher(), (1, 1, 32, 32), workdir / "example.onnx"),
                               calib, digits_eval, Budget(max_accuracy_drop=1.0), workdir)]
        if not args.skip_224:
            rng = np.random.default_rng(0)
            images = rng.standard_normal((24, 3, 224, 224)).astype(np.float32)
            big_eval = EvalSet({"input": images[16:]}, None, "random 224x224 inputs")
            for zoo_name in ("resnet18", "mobilenetv2"):
                model = with_estimated_batchnorm(build_model(zoo_name), torch.from_numpy(images[:8]))
                fp32 = export(model, (1, 3, 224, 224), workdir / f"{zoo_name}.onnx")
                table.append(precision_row(f"{zoo_name}-style 224", fp32, images[:16], big_eval, Budget(min_agreement=0.99), workdir))
    print("\n## Part 2: precision shipped per target (cpu measured on this host, interleaved p50, batch 1)")
    print("| model | target | budget | candidates | shipped |")
    print("|---|---|---|---|---|")
    for row in table:
        print("| " + " | ".join(row) + " |")
    print("\nDevices not runnable here get their recipe from the profile's isa (no timing possible on this host):")
    print("| device | activations | weights | reduce_range | symmetric |")
    print("|---|---|---|---|---|")
    for row in recipe_only_rows():
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
