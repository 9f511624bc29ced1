"""How much the calibration data matters: int8 top-1 on held-out digits for each kind of set.

For each model (default: the built-in digits teacher and a MobileNetV2-style student, both
with BatchNorm) this exports fp32 ONNX once, then quantizes it with the `cpu` target's
recipe using
  - real data (`edgecompress calib --from digits`, training split) with minmax / entropy / percentile,
  - data-free synthetic inputs (`--data-free`, BatchNorm-statistics matching),
  - plain random noise (N(0, 1), what one gets by calibrating on torch.randn),
and reports top-1 on the held-out test split with the mean |int8 logit - fp32 logit|
(which still separates the sets when top-1 saturates); then the same against set size
(real, minmax), over three draws. Accuracy is deterministic: nothing is timed here except
how long data-free synthesis took (its result is cached, so reruns are quick).

    EDGECOMPRESS_CACHE=/tmp/ec-cache python benchmarks/calibration.py [--models a,b] [--count 128]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from edgecompress.artifacts import atomic_path, sha256_json
from edgecompress.calib.datafree import DataFreeConfig, synthesize
from edgecompress.calib.generate import CalibRecipe, generate
from edgecompress.calib.load import calibration_set_from_arrays
from edgecompress.compress.trainer import TrainConfig, fit
from edgecompress.data import DIGITS_INPUT_NAME, DIGITS_SPEC, digits_splits
from edgecompress.engines.ort_cpu import OrtRunner
from edgecompress.evaluate import compare_outputs, run_batched, top1_accuracy
from edgecompress.example import cache_dir, example_teacher
from edgecompress.export import export_torch, model_io, read_onnx
from edgecompress.isa import recipe_for_target
from edgecompress.quantize import quantize_model
from edgecompress.targets import load_profiles
from edgecompress.zoo import build_model

METHODS = ("minmax", "entropy", "percentile")
SIZES = (8, 32, 128, 512)
SIZE_SEEDS = (0, 1, 2)
STUDENT_TRAINING = TrainConfig(epochs=8, batch_size=64, lr=4e-3, seed=0, patience=3)


def trained(name: str) -> torch.nn.Module:
    """The example teacher, or a zoo model trained on the digits once and cached."""
    if name == "digits-teacher":
        return example_teacher()
    checkpoint = cache_dir() / f"bench-{name}-{sha256_json({'m': name, 't': STUDENT_TRAINING.__dict__})[:12]}.pt"
    model = build_model(name)
    if checkpoint.is_file():
        model.load_state_dict(torch.load(checkpoint, weights_only=True))
        return model.eval()
    splits = digits_splits()
    fit(model, splits.train, splits.val, STUDENT_TRAINING, description=f"training {name}")
    with atomic_path(checkpoint) as tmp:
        torch.save(model.state_dict(), tmp)
    return model.eval()


class Quantizer:
    """One fp32 export of a model; quantizes it with any set and scores the int8 model on the test split."""

    def __init__(self, model: torch.nn.Module, workdir: Path) -> None:
        self.workdir = workdir
        self.fp32 = export_torch(model, {DIGITS_INPUT_NAME: (1, 1, 32, 32)}, workdir / "fp32.onnx", exporter="torchscript").path
        self.inputs, _ = model_io(read_onnx(self.fp32))
        self.recipe = recipe_for_target(load_profiles(["cpu"])[0])
        self.test = digits_splits().test
        self.runs = 0
        self.fp32_logits = self.logits(self.fp32)

    def logits(self, path: Path) -> np.ndarray:
        return run_batched(OrtRunner(path, threads=1), {DIGITS_INPUT_NAME: self.test.x}, 128)

    def int8_score(self, x: np.ndarray, method: str = "minmax") -> tuple[float, float]:
        """(top-1 %, mean |logit - fp32 logit|) of the int8 model calibrated on `x`."""
        calibration = calibration_set_from_arrays({DIGITS_INPUT_NAME: x}, self.inputs, "benchmark")
        self.runs += 1
        out = self.workdir / f"int8-{self.runs}.onnx"
        quantize_model(self.fp32, calibration, self.recipe.with_options(calibration_method=method), out)
        logits = self.logits(out)
        return top1_accuracy(logits, self.test.y), compare_outputs(self.fp32_logits, logits).mean_abs_diff


def real_set(count: int, seed: int = 0) -> np.ndarray:
    return generate(CalibRecipe(source="digits", count=count, seed=seed)).arrays["x"]


def data_free_set(name: str, model: torch.nn.Module, count: int, steps: int) -> tuple[np.ndarray, str]:
    """Synthesized once per model and settings, then reused from the cache (it is the slow part)."""
    config = DataFreeConfig(steps=steps)
    path = cache_dir() / f"bench-datafree-{sha256_json({'m': name, 'n': count, 'c': config.to_dict()})[:12]}.npz"
    if path.is_file():
        with np.load(path) as archive:
            return archive["x"], f"{float(archive['seconds']):.0f} s"
    started = time.perf_counter()
    synthetic, _ = synthesize(model, (1, 1, 32, 32), count, config, DIGITS_SPEC)
    seconds = time.perf_counter() - started
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, x=synthetic, seconds=seconds)
    return synthetic, f"{seconds:.0f} s"


def cell(score: tuple[float, float]) -> str:
    return f"{score[0]:.2f} ({score[1]:.3f})"


def benchmark_model(name: str, count: int, steps: int) -> tuple[list[str], list[str]]:
    model = trained(name)
    with tempfile.TemporaryDirectory(prefix="ec-bench-calib-") as workdir:
        quantizer = Quantizer(model, Path(workdir))
        synthetic, took = data_free_set(name, model, count, steps)
        sets = {
            f"real digits ({count})": real_set(count),
            f"data-free ({count}, {steps} steps, {took})": synthetic,
            f"random noise N(0,1) ({count})": np.random.default_rng(0).standard_normal(synthetic.shape).astype(np.float32),
        }
        fp32 = top1_accuracy(quantizer.fp32_logits, quantizer.test.y)
        rows = [f"| {name} | fp32 reference | {fp32:.2f} | {fp32:.2f} | {fp32:.2f} |"]
        for label, x in sets.items():
            rows.append(f"| {name} | {label} | " + " | ".join(cell(quantizer.int8_score(x, m)) for m in METHODS) + " |")
        size_row = []
        for size in SIZES:
            scores = np.array([quantizer.int8_score(real_set(size, seed)) for seed in SIZE_SEEDS])
            size_row.append(f"{scores[:, 0].mean():.2f} (min {scores[:, 0].min():.2f}; {scores[:, 1].mean():.3f})")
        sizes = [f"| {name} | {fp32:.2f} | " + " | ".join(size_row) + " |"]
    return rows, sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="digits-teacher,mobilenetv2-digits")
    parser.add_argument("--count", type=int, default=128, help="samples per calibration set")
    parser.add_argument("--steps", type=int, default=DataFreeConfig.steps, help="data-free optimization steps")
    args = parser.parse_args()
    torch.set_num_threads(1)
    method_rows, size_rows = [], []
    for name in args.models.split(","):
        rows, sizes = benchmark_model(name, args.count, args.steps)
        method_rows += rows
        size_rows += sizes
    print("\nint8 top-1 % (mean |logit - fp32 logit|) on the held-out digits test split (360 images), cpu recipe\n")
    print("| model | calibration data | minmax | entropy | percentile (99.999) |\n|---|---|---|---|---|")
    print("\n".join(method_rows))
    print(f"\nint8 top-1 % vs real-set size (minmax): mean of seeds {SIZE_SEEDS} (worst draw; mean |logit diff|)\n")
    print("| model | fp32 | " + " | ".join(str(s) for s in SIZES) + " |\n|---|---|" + "---|" * len(SIZES))
    print("\n".join(size_rows))


if __name__ == "__main__":
    main()
