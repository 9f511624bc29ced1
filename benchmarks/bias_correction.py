"""Does bias correction (and cross-layer equalization) help int8, per recipe? Measured, not assumed.

For each trained digits model and each recipe (the x86-without-VNNI recipe, the aarch64 /
VNNI full-range recipes and per-tensor weights), quantize with edgecompress's own quantize
stage with and without CLE / bias correction, and compare with fp32: top-1 on the held-out test
split, and top-1 agreement, logit cosine and mean logit error on every digits image outside
the calibration set. Each int8 model runs twice: on this host's int8 kernels ("kernels":
AVX2 without VNNI saturates full-range u8s8/s8s8, see edgecompress/quantize/isa.py) and with ORT's
graph optimizations off ("simulated": QDQ executed as dequantize + float ops, i.e. exact
int32 accumulation — what VNNI, ARM dot-product and TensorRT kernels compute). Decides
`bias_correction = "auto"` in edgecompress/pipeline/pipeline.py.

Run: python benchmarks/bias_correction.py [--models mobilenetv2-digits,cnn-small]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edgecompress.core.artifacts import sha256_json  # noqa: E402
from edgecompress.calib.load import CalibrationSet  # noqa: E402
from edgecompress.calib.manifest import arrays_sha256
from edgecompress.source.data import digits_splits  # noqa: E402
from edgecompress.engines.ort_cpu import OrtRunner  # noqa: E402
from edgecompress.export.torch_export import export_torch
from edgecompress.quantize.static import quantize_model  # noqa: E402
from edgecompress.quantize.recipe import QuantRecipe
from edgecompress.source.zoo import build_model  # noqa: E402

WORK = Path(os.environ.get("EDGECOMPRESS_CACHE", "/tmp/ec-cache")) / "bias-correction"
RECIPES = {
    "u8s8 per-channel reduce_range (x86, no VNNI)": QuantRecipe(reduce_range=True),
    "u8s8 per-channel (x86 VNNI)": QuantRecipe(),
    "s8s8 per-channel (aarch64)": QuantRecipe("int8", "int8"),
    "u8s8 per-tensor": QuantRecipe(per_channel=False),
    "u8s8 per-tensor reduce_range": QuantRecipe(per_channel=False, reduce_range=True),
}
OPTIONS = {"plain": {}, "BC": {"bias_correction": True}, "CLE": {"equalize": True}, "CLE+BC": {"equalize": True, "bias_correction": True}}


def trained(name: str, epochs: int) -> torch.nn.Module:
    from edgecompress.compress.trainer import TrainConfig, fit

    model = build_model(name)
    checkpoint = WORK / f"{name}-e{epochs}.pt"
    if checkpoint.exists():
        model.load_state_dict(torch.load(checkpoint, weights_only=True))
        return model.eval()
    splits = digits_splits()
    result = fit(model, splits.train, splits.val, TrainConfig(epochs=epochs, lr=4e-3))
    print(f"trained {name}: val {result.best_val_accuracy:.1f}%")
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), checkpoint)
    return model.eval()


def scores(logits: np.ndarray, reference: np.ndarray, labels: np.ndarray) -> tuple[float, float, float, float]:
    top1 = float((logits.argmax(1) == labels).mean() * 100)
    agree = float((logits.argmax(1) == reference.argmax(1)).mean())
    cosine = float(np.mean(np.sum(logits * reference, 1) / (np.linalg.norm(logits, axis=1) * np.linalg.norm(reference, axis=1))))
    error = float(np.abs(logits - reference).mean() / np.abs(reference).mean())
    return top1, agree, cosine, error


def measure(name: str, epochs: int, calibration_samples: int) -> list[tuple]:
    torch.set_num_threads(2)
    splits = digits_splits()
    model = trained(name, epochs)
    fp32 = WORK / f"{name}-e{epochs}.fp32.onnx"
    if not fp32.exists():
        export_torch(model, {"input": (1, *splits.test.x.shape[1:])}, fp32, exporter="torchscript")
    calib_x = splits.val.x[:calibration_samples]
    calibration = CalibrationSet({"input": calib_x}, arrays_sha256({"input": calib_x}), "digits val")
    x = np.concatenate([splits.test.x, splits.train.x, splits.val.x[calibration_samples:]])
    labels = np.concatenate([splits.test.y, splits.train.y, splits.val.y[calibration_samples:]])
    tested = len(splits.test.y)
    reference = OrtRunner(fp32).run({"input": x})[0]
    fp32_top1 = float((reference[:tested].argmax(1) == splits.test.y).mean() * 100)
    rows = []
    print(f"\n## {name} ({epochs} epochs; fp32 test top-1 {fp32_top1:.2f}%; {calibration_samples} calibration images; "
          f"top-1 on {tested} test images, the rest on {len(x)} images)")
    print(f"{'recipe':<46} {'option':<7} {'kernels: top1':>13} {'agree':>6} {'err':>6} | "
          f"{'simulated: top1':>15} {'agree':>6} {'cosine':>7} {'err':>6}")
    for label, recipe in RECIPES.items():
        for option, changes in OPTIONS.items():
            out = WORK / f"{name}-e{epochs}.{sha256_json([label, option])[:10]}.onnx"
            quantize_model(fp32, calibration, recipe.with_options(**changes), out)
            row = [name, label, option]
            for level in ("all", "disable"):
                logits = OrtRunner(out, level=level).run({"input": x})[0]
                top1 = float((logits[:tested].argmax(1) == splits.test.y).mean() * 100)
                row += [top1, *scores(logits, reference, labels)[1:]]
            rows.append(tuple(row))
            k_top1, k_agree, _, k_err, s_top1, s_agree, s_cos, s_err = row[3:]
            print(f"{label:<46} {option:<7} {k_top1:13.2f} {k_agree:6.3f} {k_err:6.3f} | "
                  f"{s_top1:15.2f} {s_agree:6.3f} {s_cos:7.4f} {s_err:6.3f}")
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="mobilenetv2-digits:6,cnn-small:6,digits-teacher:4")
    parser.add_argument("--calibration-samples", type=int, default=128)
    args = parser.parse_args()
    for spec in args.models.split(","):
        model_name, _, model_epochs = spec.partition(":")
        measure(model_name, int(model_epochs or 6), args.calibration_samples)
