"""Spine benchmark: PyTorch eager fp32 vs ONNX Runtime fp32 vs the edgecompress int8 engine.

ResNet-18-style and MobileNetV2-style models (own code, random init: speed only) at
3×224×224, batch 1, 2 threads, measured in one run with interleaved repetitions; prints
medians and ratios. Calibration uses scikit-image's real sample photos.

    python benchmarks/spine.py [--runs 60]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from edgecompress.measure.bench import benchmark
from edgecompress.calib.load import calibration_set_from_arrays
from edgecompress.engines import get_builder
from edgecompress.engines.ort_cpu import OrtRunner
from edgecompress.export.torch_export import export_torch
from edgecompress.pipeline.pipeline import target_recipe
from edgecompress.core.config import BuildConfig
from edgecompress.device.preprocess import PreprocessSpec
from edgecompress.quantize.static import quantize_model
from edgecompress.core.targets import load_profile
from edgecompress.source.zoo import build_model

IMAGENET = PreprocessSpec(resize=256, center_crop=224, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def sample_photos(count: int = 32) -> np.ndarray:
    """Real photos from scikit-image, cropped at several offsets to make `count` inputs."""
    from PIL import Image
    from skimage import data

    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), data.retina(), data.cat()]
    images = []
    for index in range(count):
        photo = photos[index % len(photos)]
        height, width = photo.shape[:2]
        top, left = (index * 37) % max(1, height // 4), (index * 53) % max(1, width // 4)
        images.append(Image.fromarray(photo[top:, left:]))
    return IMAGENET.images_to_batch(images)


class TorchRunner:
    def __init__(self, module):
        self.module = module

    def run(self, feeds):
        with torch.no_grad():
            return [self.module(torch.from_numpy(feeds["input"])).numpy()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=60)
    args = parser.parse_args()
    torch.set_num_threads(2)
    profile = load_profile("cpu")
    recipe = target_recipe(profile, BuildConfig())
    photos = sample_photos()
    print(f"recipe: {recipe.label} ({recipe.reason})")
    print(f"{'model':<12} {'eager ms':>9} {'ORT fp32':>9} {'int8':>8} {'int8/fp32':>10} {'int8/eager':>11} {'size x':>7} {'agree':>6}")
    for name in ("resnet18", "mobilenetv2"):
        module = build_model(name).eval()
        with tempfile.TemporaryDirectory() as scratch:
            fp32 = export_torch(module, {"input": (1, 3, 224, 224)}, Path(scratch) / "fp32.onnx", exporter="torchscript")
            calibration = calibration_set_from_arrays({"input": photos}, fp32.inputs, "skimage photos")
            int8 = quantize_model(fp32.path, calibration, recipe, Path(scratch) / "int8.onnx")
            builder = get_builder(profile.engine)
            artifact = builder.build(int8, profile, Path(scratch) / "cpu")
            runners = {"eager": TorchRunner(module), "fp32": OrtRunner(fp32.path, threads=2), "int8": builder.load(artifact, profile)}
            feeds = {"input": photos[:1]}
            stats, _ = benchmark(runners, feeds, runs=args.runs, warmup=5, max_seconds=120)
            ref = runners["fp32"].run({"input": photos})[0].argmax(1)
            got = runners["int8"].run({"input": photos})[0].argmax(1)
            size_ratio = fp32.path.stat().st_size / artifact.path.stat().st_size
            print(
                f"{name:<12} {stats['eager'].p50:9.2f} {stats['fp32'].p50:9.2f} {stats['int8'].p50:8.2f} "
                f"{stats['fp32'].p50 / stats['int8'].p50:9.2f}x {stats['eager'].p50 / stats['int8'].p50:10.2f}x "
                f"{size_ratio:6.2f}x {np.mean(ref == got):6.2f}"
            )


if __name__ == "__main__":
    started = time.time()
    main()
    print(f"({time.time() - started:.0f} s)")
