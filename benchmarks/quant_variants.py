"""Measure QDQ quantization variants on this host: latency vs fp32 and agreement with fp32.

Decides the per-ISA recipe in edgecompress/quantize/isa.py. Interleaved reps, medians, 2 threads.
Run: python benchmarks/quant_variants.py [--models mobilenetv2,resnet18,mobilenetv2-digits]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edgecompress.engines.ort_cpu import OrtRunner  # noqa: E402
from edgecompress.source.zoo import build_model  # noqa: E402

WORK = Path(os.environ.get("EDGECOMPRESS_CACHE", "/tmp/ec-cache")) / "quant-variants"
VARIANTS = {
    "u8s8-pc": dict(activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True),
    "u8s8-pc-rr": dict(activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True, reduce_range=True),
    "s8s8-pc": dict(activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True),
    "u8u8-pc": dict(activation_type=QuantType.QUInt8, weight_type=QuantType.QUInt8, per_channel=True),
    "u8s8-pt": dict(activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=False),
    "ort-default": dict(),
}


class Reader(CalibrationDataReader):
    def __init__(self, name: str, batches: np.ndarray) -> None:
        self.items = iter([{name: b[None]} for b in batches])

    def get_next(self):
        return next(self.items, None)


def trained_digits_model(name: str) -> torch.nn.Module:
    from edgecompress.compress.trainer import TrainConfig, fit
    from edgecompress.source.data import digits_splits

    model = build_model(name)
    ckpt = WORK.parent / "bench-mobilenetv2-digits-e6.pt"  # shared with quant_repair.py
    if ckpt.exists():
        model.load_state_dict(torch.load(ckpt, weights_only=True))
        return model.eval()
    splits = digits_splits()
    result = fit(model, splits.train, splits.val, TrainConfig(epochs=6, lr=4e-3))
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    print(f"trained {name}: val {result.best_val_accuracy:.1f}%")
    torch.save(model.state_dict(), ckpt)
    return model.eval()


def session(path: Path) -> OrtRunner:
    return OrtRunner(path, threads=2)  # the engine's own session options (no thread spinning)


def run_all(sess: OrtRunner, x: np.ndarray) -> np.ndarray:
    name = sess.inputs[0].name
    return np.concatenate([sess.run({name: x[i : i + 1]})[0] for i in range(len(x))])


def measure(name: str, reps: int, rounds: int) -> None:
    torch.set_num_threads(1)
    digits = name.endswith("digits")
    model = trained_digits_model(name) if digits else build_model(name).eval()
    if digits:
        from edgecompress.source.data import digits_splits

        splits = digits_splits()
        calib, evalx, evaly = splits.val.x[:100], splits.test.x, splits.test.y
    else:
        rng = np.random.default_rng(0)
        calib = rng.standard_normal((16, 3, 224, 224)).astype(np.float32)
        evalx, evaly = rng.standard_normal((16, 3, 224, 224)).astype(np.float32), None
    WORK.mkdir(parents=True, exist_ok=True)
    fp32 = WORK / f"{name}.fp32.onnx"
    torch.onnx.export(model, torch.from_numpy(calib[:1]), fp32, input_names=["input"], output_names=["logits"], dynamo=False)
    pre = WORK / f"{name}.pre.onnx"
    quant_pre_process(str(fp32), str(pre))
    paths = {"fp32": fp32}
    for variant, kwargs in VARIANTS.items():
        out = WORK / f"{name}.{variant}.onnx"
        quantize_static(str(pre), str(out), Reader("input", calib), quant_format=QuantFormat.QDQ, **kwargs)
        paths[variant] = out
    sessions = {k: session(p) for k, p in paths.items()}
    ref = run_all(sessions["fp32"], evalx)
    quality = {}
    for k, s in sessions.items():
        out = run_all(s, evalx)
        agree = float((out.argmax(1) == ref.argmax(1)).mean())
        cos = float(np.mean(np.sum(out * ref, 1) / (np.linalg.norm(out, axis=1) * np.linalg.norm(ref, axis=1))))
        top1 = float((out.argmax(1) == evaly).mean() * 100) if evaly is not None else float("nan")
        quality[k] = (agree, cos, top1)
    feed = {"input": evalx[:1]}
    times = {k: [] for k in sessions}
    for s in sessions.values():
        for _ in range(3):
            s.run(feed)
    for _ in range(rounds):
        for k, s in sessions.items():
            t0 = time.perf_counter()
            for _ in range(reps):
                s.run(feed)
            times[k].append((time.perf_counter() - t0) / reps * 1000)
    base = np.median(times["fp32"])
    print(f"\n## {name} (batch 1, 2 threads, median of {rounds} interleaved rounds x {reps})")
    print(f"{'variant':<12} {'ms':>8} {'speedup':>8} {'agree':>7} {'cosine':>7} {'top1':>6}")
    for k in sessions:
        ms = np.median(times[k])
        a, c, t = quality[k]
        print(f"{k:<12} {ms:8.2f} {base / ms:8.2f} {a:7.3f} {c:7.4f} {t:6.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="mobilenetv2-digits,mobilenetv2,resnet18")
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    for model_name in args.models.split(","):
        measure(model_name, args.reps, args.rounds)
