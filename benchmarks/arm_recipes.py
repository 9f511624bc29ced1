"""Which int8 recipe do ONNX Runtime's aarch64 kernels run exactly? Measured on real aarch64 code.

x86 without VNNI saturates full-range u8s8 (edgecompress/quantize/isa.py); the aarch64 recipe must be
measured on ARM kernels, not assumed. This quantizes trained digits models with each
recipe, converts them to ORT format as the ARM engine does, and runs them with the aarch64
onnxruntime wheel under QEMU user-mode emulation (scripts/arm64-emulated.sh) for three CPU
models, chosen with QEMU_CPU, which sets the instruction-set bits ORT's kernels dispatch on:
cortex-a72 (Raspberry Pi 4: NEON only), cortex-a76 (Raspberry Pi 5: + dot product) and
max (+ i8mm, as in recent phone cores). Each int8 engine is compared with the fp32 engine on
the same emulated CPU: top-1 on the digits test split, top-1 agreement and logit cosine on
all images outside the calibration set. Emulation executes the ARM instructions exactly, so
these agreements are the device's; timings under emulation mean nothing and are not shown.

Needs root and the arm64 root file system: sudo scripts/arm64-emulated.sh setup
Run: python benchmarks/arm_recipes.py [--models mobilenetv2-digits:6,cnn-small:6] [--cpus cortex-a72,cortex-a76,max]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bias_correction import WORK, trained  # noqa: E402  (the same trained checkpoints)

from edgecompress.calib.load import CalibrationSet  # noqa: E402

from edgecompress.calib.manifest import arrays_sha256
from edgecompress.source.data import digits_splits  # noqa: E402
from edgecompress.engines.arm import ArmOptions, convert_to_ort  # noqa: E402
from edgecompress.engines.arm64_emulated import run_emulated, unavailable_reason  # noqa: E402
from edgecompress.export.torch_export import export_torch
from edgecompress.quantize.static import quantize_model  # noqa: E402
from edgecompress.quantize.recipe import QuantRecipe

RECIPES = {
    "s8s8 per-channel (aarch64 recipe)": QuantRecipe("int8", "int8"),
    "s8s8 per-channel + bias correction": QuantRecipe("int8", "int8", bias_correction=True),
    "u8s8 per-channel": QuantRecipe(),
    "u8s8 per-channel reduce_range": QuantRecipe(reduce_range=True),
    "u8u8 per-channel": QuantRecipe(weight_type="uint8"),
    "u8s8 per-tensor": QuantRecipe(per_channel=False),
}


def engines_for(name: str, epochs: int, calibration_samples: int, workdir: Path) -> dict[str, Path]:
    splits = digits_splits()
    fp32 = WORK / f"{name}-e{epochs}.fp32.onnx"
    if not fp32.exists():
        export_torch(trained(name, epochs), {"input": (1, *splits.test.x.shape[1:])}, fp32, exporter="torchscript")
    calib_x = splits.val.x[:calibration_samples]
    calibration = CalibrationSet({"input": calib_x}, arrays_sha256({"input": calib_x}), "digits val")
    models = {"fp32": fp32}
    for i, recipe in enumerate(RECIPES.values()):
        models[f"int8-{i}"] = quantize_model(fp32, calibration, recipe, workdir / f"{name}-{i}.onnx")
    engines = {}
    for label, model in models.items():
        (workdir / label).mkdir()
        engine, _ = convert_to_ort(model, ArmOptions(), workdir / label)
        engines[label] = engine
    return engines


def measure(name: str, epochs: int, cpus: list[str], calibration_samples: int, images: int) -> None:
    splits = digits_splits()
    x = np.concatenate([splits.test.x, splits.train.x, splits.val.x[calibration_samples:]])[:images]
    labels = np.concatenate([splits.test.y, splits.train.y, splits.val.y[calibration_samples:]])[:images]
    tested = min(len(splits.test.y), len(x))
    with tempfile.TemporaryDirectory(prefix="ec-arm-recipes.") as work:
        engines = engines_for(name, epochs, calibration_samples, Path(work))
        print(f"\n## {name} ({epochs} epochs, {calibration_samples} calibration images; top-1 on {tested} test images, "
              f"agreement/cosine on {len(x)} images; vs fp32 on the same emulated CPU)")
        print(f"{'recipe':<36} " + " ".join(f"{cpu + ': top1':>17} {'agree':>6} {'cosine':>7}" for cpu in cpus))
        results = {}
        for cpu in cpus:
            os.environ["QEMU_CPU"] = cpu
            results[cpu] = run_emulated(engines, {"input": x}, repeats=0)
        for i, label in enumerate(["fp32", *RECIPES]):
            cells = []
            for cpu in cpus:
                reference = results[cpu]["fp32"].outputs[0]
                logits = results[cpu]["fp32" if label == "fp32" else f"int8-{i - 1}"].outputs[0]
                top1 = float((logits[:tested].argmax(1) == labels[:tested]).mean() * 100)
                agree = float((logits.argmax(1) == reference.argmax(1)).mean())
                cosine = float(np.mean(np.sum(logits * reference, 1) / (np.linalg.norm(logits, axis=1) * np.linalg.norm(reference, axis=1))))
                cells.append(f"{top1:17.2f} {agree:6.3f} {cosine:7.4f}")
            print(f"{label:<36} " + " ".join(cells))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="mobilenetv2-digits:6,cnn-small:6")
    parser.add_argument("--cpus", default="cortex-a72,cortex-a76,max")
    parser.add_argument("--calibration-samples", type=int, default=128)
    parser.add_argument("--images", type=int, default=1000)
    args = parser.parse_args()
    reason = unavailable_reason()
    if reason:
        sys.exit(f"cannot run on emulated aarch64: {reason}")
    for spec in args.models.split(","):
        model_name, _, model_epochs = spec.partition(":")
        measure(model_name, int(model_epochs or 6), args.cpus.split(","), args.calibration_samples, args.images)
