"""Per-target engine figures: size, agreement with fp32, latency — one run, interleaved reps.

    python benchmarks/targets.py                                   # cpu, raspberry-pi-5, jetson, arm64
    python benchmarks/targets.py --targets arm64 --models digits   # one target, one model

Models: the built-in digits example (trained teacher, 1×32×32) and a ResNet-18-style
network (3×224×224, seeded weights, real photos from scikit-image). Each target gets the
int8 model of its own quantization recipe and its own engine builder.

Rows are labelled by where they were measured:
  host x86      the engine on this machine (an ARM `.ort` runs here on the CPU provider)
  emulated      aarch64 onnxruntime under QEMU user-mode emulation (scripts/arm64-emulated.sh):
                proves the aarch64 build runs and agrees; its latency is NOT device speed
  device build  TensorRT without a GPU here: kit size, and agreement of simulated int8 (the QDQ
                model with Q/DQ in float, as TensorRT computes it); the plan's latency needs the device
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a fresh clone without installing

from edgecompress.core.artifacts import sha256_json
from edgecompress.measure.bench import benchmark
from edgecompress.calib.load import calibration_set_from_arrays
from edgecompress.engines import get_builder
from edgecompress.engines.ort_cpu import OrtRunner
from edgecompress.measure.evaluate import EvalSet, compare_outputs, evaluate
from edgecompress.export.graph import OnnxModelInfo
from edgecompress.export.torch_export import export_torch
from edgecompress.quantize.isa import recipe_for_target
from edgecompress.quantize.static import quantize_model
from edgecompress.core.targets import TargetProfile, load_profile


@dataclass
class Workload:
    name: str
    fp32: OnnxModelInfo
    calibration: dict[str, np.ndarray]
    eval_set: EvalSet


def digits_workload(work: Path) -> Workload:
    from edgecompress.source.data import digits_splits
    from edgecompress.presets.example import example_teacher

    splits = digits_splits()
    fp32 = export_torch(example_teacher(), {"input": (1, 1, 32, 32)}, work / "digits.fp32.onnx", exporter="torchscript")
    eval_set = EvalSet({"input": splits.test.x}, splits.test.y, "digits test split")
    return Workload("digits", fp32, {"input": splits.train.x[:256]}, eval_set)


def photo_batch() -> np.ndarray:
    """Real photos from scikit-image, ImageNet preprocessing, with mirrored copies (24 images)."""
    from PIL import Image
    from skimage import data

    from edgecompress.device.preprocess import PreprocessSpec

    spec = PreprocessSpec(resize=256, center_crop=224, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    names = ["astronaut", "coffee", "chelsea", "rocket", "cat", "hubble_deep_field", "immunohistochemistry",
             "colorwheel", "retina", "coins", "logo", "camera"]
    images = [Image.fromarray(np.asarray(getattr(data, n)())).convert("RGB") for n in names]
    images += [img.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for img in images]
    return spec.images_to_batch(images)


def resnet_workload(work: Path) -> Workload:
    from edgecompress.source.zoo import build_model

    torch.manual_seed(0)
    fp32 = export_torch(build_model("resnet18").eval(), {"input": (1, 3, 224, 224)}, work / "resnet18.fp32.onnx",
                        exporter="torchscript")
    photos = photo_batch()
    return Workload("resnet18", fp32, {"input": photos[::2]},
                    EvalSet({"input": photos[1::2]}, None, "12 held-out photos (agreement only)"))


def int8_for(workload: Workload, profile: TargetProfile, work: Path) -> Path:
    recipe = recipe_for_target(profile)
    out = work / f"{workload.name}.int8.{sha256_json(recipe.cache_key())[:12]}.onnx"  # labels can coincide
    if not out.exists():
        calibration = calibration_set_from_arrays(workload.calibration, workload.fp32.inputs, "benchmark")
        quantize_model(workload.fp32.path, calibration, recipe, out)
    return out


def host_row(workload: Workload, profile: TargetProfile, work: Path, runs: int) -> dict:
    builder = get_builder(profile.engine)
    artifact = builder.build(int8_for(workload, profile, work), profile, work / f"{workload.name}-{profile.name}")
    reference = OrtRunner(workload.fp32.path, threads=profile.threads)  # same threads as the engine
    row = {"model": workload.name, "target": profile.name, "precision": artifact.precision,
           "engine_bytes": artifact.path.stat().st_size if artifact.path else _kit_model_bytes(artifact)}
    if not artifact.runnable_here:
        int8 = OrtRunner(int8_for(workload, profile, work), threads=profile.threads, level="disable")
        proxy = evaluate(int8, reference, workload.eval_set)
        return row | {"where": "device build", "agreement_top1": proxy.agreement.top1, "latency_ms": None,
                      "note": "agreement of simulated int8 (Q/DQ in float); plan latency needs the device"}
    engine = builder.load(artifact, profile)
    agreement = evaluate(engine, reference, workload.eval_set).agreement.top1
    feeds = {"input": next(iter(workload.eval_set.inputs.values()))[:1]}
    stats, _ = benchmark({"engine": engine, "fp32": reference}, feeds, runs=runs, warmup=3, max_seconds=60)
    return row | {"where": "host x86", "agreement_top1": agreement, "latency_ms": stats["engine"].to_dict(),
                  "fp32_latency_ms": stats["fp32"].to_dict(), "speedup_vs_fp32": stats["fp32"].p50 / stats["engine"].p50}


def _kit_model_bytes(artifact) -> int:
    return next(p.stat().st_size for p in artifact.files if p.name.endswith(".onnx"))


def emulated_row(workload: Workload, profile: TargetProfile, work: Path, runs: int) -> dict:
    """int8 and fp32 `.ort` engines on aarch64 under QEMU: agreement, and latency labelled emulated."""
    from edgecompress.engines.arm64_emulated import run_emulated

    builder = get_builder(profile.engine)
    int8 = builder.build(int8_for(workload, profile, work), profile, work / f"{workload.name}-{profile.name}")
    fp32 = builder.build(workload.fp32.path, profile, work / f"{workload.name}-{profile.name}-fp32")
    engines = {"int8": int8.path, "fp32": fp32.path}
    outputs = run_emulated(engines, workload.eval_set.inputs, repeats=0)
    x86 = builder.load(int8, profile).run(workload.eval_set.inputs)[0]
    timed = run_emulated(engines, {"input": next(iter(workload.eval_set.inputs.values()))[:1]}, repeats=runs)
    int8_ms, fp32_ms = (np.percentile(timed[k].latency_ms, [50, 90, 99]) for k in ("int8", "fp32"))
    return {"model": workload.name, "target": profile.name, "precision": int8.precision, "where": timed["int8"].label,
            "engine_bytes": int8.path.stat().st_size,
            "agreement_top1": compare_outputs(outputs["fp32"].outputs[0], outputs["int8"].outputs[0]).top1,
            "aarch64_vs_x86_top1": compare_outputs(x86, outputs["int8"].outputs[0]).top1,
            "aarch64_vs_x86_max_abs_diff": float(np.abs(x86 - outputs["int8"].outputs[0]).max()),
            "latency_ms": dict(zip(("p50", "p90", "p99"), map(float, int8_ms))),
            "fp32_latency_ms": dict(zip(("p50", "p90", "p99"), map(float, fp32_ms))),
            "speedup_vs_fp32": float(fp32_ms[0] / int8_ms[0]), "machine": timed["int8"].machine}


def print_rows(rows: list[dict]) -> None:
    print(f"{'model':9} {'target':15} {'where':13} {'engine KiB':>10} {'agree':>7} {'p50 ms':>9} {'p90 ms':>9} "
          f"{'p99 ms':>9} {'vs fp32':>8}")
    for row in rows:
        latency = row.get("latency_ms") or {}
        cells = [f"{latency[k]:9.3f}" if k in latency else f"{'n/a':>9}" for k in ("p50", "p90", "p99")]
        speedup = f"{row['speedup_vs_fp32']:7.2f}x" if row.get("speedup_vs_fp32") else f"{'n/a':>8}"
        where = "emulated" if row["where"].startswith("emulated") else row["where"]
        print(f"{row['model']:9} {row['target']:15} {where:13} {row['engine_bytes'] / 1024:10.1f} "
              f"{100 * row['agreement_top1']:6.1f}% {' '.join(cells)} {speedup}")
        if "aarch64_vs_x86_top1" in row:
            print(f"{'':39}aarch64 vs x86 int8: top-1 {100 * row['aarch64_vs_x86_top1']:.1f}%, "
                  f"max |diff| {row['aarch64_vs_x86_max_abs_diff']:.3g} (latency EMULATED, not device speed)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", default="cpu,raspberry-pi-5,jetson,arm64")
    parser.add_argument("--models", default="digits,resnet18")
    parser.add_argument("--runs", type=int, default=50, help="timed runs per engine on this host")
    parser.add_argument("--emulated-runs", type=int, default=5, help="timed runs per engine under QEMU")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from edgecompress.engines.arm64_emulated import unavailable_reason

    workloads = {"digits": digits_workload, "resnet18": resnet_workload}
    rows = []
    with tempfile.TemporaryDirectory(prefix="ec-bench-targets.") as tmp:
        work = Path(tmp)
        for model in args.models.split(","):
            workload = workloads[model](work)
            for name in args.targets.split(","):
                profile = load_profile(name)
                if name == "arm64":
                    reason = unavailable_reason()
                    if reason:
                        print(f"skipping arm64 (emulated): {reason}")
                        continue
                    rows.append(emulated_row(workload, profile, work, args.emulated_runs))
                else:
                    rows.append(host_row(workload, profile, work, args.runs))
    print_rows(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
