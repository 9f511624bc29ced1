"""`edgecompress build --target jetson-…` on a real YOLO detector, with the defaults, as a new user runs it.

The corpus's YOLOv8s (tests/model_corpus.py: Ultralytics 8.3 export, raw head [1, 6, 8400], 640 px) on
letterboxed real photos (tests/corpus_inputs.py). No Jetson here: every figure is this host's simulation of
TensorRT's numerics (int8: Q/DQ in float; int8+fp16: the float layers rounded to fp16; fp16: an fp16 graph),
which is what the build itself judges kits by.

Part 1: `build` with the defaults for jetson-orin-nano and jetson-agx-orin: shipped precision and label, kit size
vs fp32, detection F1 vs fp32, layers per precision, the ladder's rungs, wall time.
Part 2: Q/DQ placement rules, one at a time (minmax, the recipe's types): F1 and layers left out of int8.
Part 3 (--fp16-demo): a budget int8 cannot meet (F1 >= 0.97, no layers excluded): the kit is fp16, exit 0.
Part 4 (--budget-095): --fidelity-budget 0.95, where the ladder goes on to keep layers out of int8.

    python benchmarks/jetson_detector.py [--calib 16] [--eval 24] [--fp16-demo] [--budget-095] [--workdir DIR]
    # writes benchmarks/jetson_detector.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import corpus_inputs as make  # noqa: E402
from tests.model_corpus import YOLO_DETECTOR  # noqa: E402

TARGETS = ("jetson-orin-nano", "jetson-agx-orin")


def host() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}"


def layers_text(layers: dict[str, int]) -> str:
    return " / ".join(str(layers.get(kind, 0)) for kind in ("int8", "fp16", "fp32"))


def ladder_text(report: dict) -> str:
    rungs = [f"{t['step']}: {next(iter(next(iter(t['fidelity'].values())).values())):.3f}" for t in report["quantization"]["tries"]]
    candidates = {c["name"]: c for c in report["quantization"]["precision"]["candidates"]}
    extra = [f"{name}: {next(iter(next(iter(c['fidelity'].values())).values())):.3f}"
             for name, c in candidates.items() if name in ("int8+fp16", "fp16")]
    return "; ".join(rungs + extra)


def build_targets(model: Path, files: Path, out: Path, targets: tuple[str, ...], **options) -> tuple[int, list[dict], float]:
    from edgecompress.core.config import BuildConfig
    from edgecompress.core.errors import BudgetNotMetError
    from edgecompress.pipeline.pipeline import build

    config = BuildConfig(model=str(model), target=list(targets), calib=files / "calib.npz", eval_data=files / "eval.npz",
                         out=out, **options)
    started = time.perf_counter()
    try:
        reports, code = build(config), 0
    except BudgetNotMetError:
        reports, code = [json.loads((out / t / "report.json").read_text()) for t in targets], 3
    return code, reports, time.perf_counter() - started


def part1(model: Path, files: Path, out: Path) -> list[str]:
    code, reports, seconds = build_targets(model, files, out, TARGETS)
    lines = [(f"`build --target {' --target '.join(TARGETS)}` with the defaults: exit {code}, {seconds:.0f} s for both "
              "(export, calibration and int8 models shared; each target runs its own ladder)."), "",
             "| target | shipped | label | kit vs fp32 | detection F1 vs fp32 (sim) | layers int8 / fp16 / fp32 | ladder (F1 per rung) | target s |",
             "|---|---|---|---|---|---|---|---|"]
    from edgecompress.pipeline.report import precision_text

    for report in reports:
        fidelity = report["fidelity"]
        lines.append(
            f"| {report['target']} | {report['quantization']['precision']['chosen']} | {precision_text(report['engine'])} | "
            f"{report['size_ratio_vs_fp32']:.2f}x smaller | {fidelity['value']:.3f} ({'met' if fidelity['met'] else 'OVER'}) | "
            f"{layers_text(report['engine']['precision_layers'])} | {ladder_text(report)} | {report['build']['seconds']:.0f} |")
    return lines


def part2(model: Path, files: Path, workdir: Path) -> list[str]:
    """Each placement rule on its own: the recipe's types, minmax, judged like the build (Q/DQ in float)."""
    import onnx

    from edgecompress.calib.load import load_calibration_set
    from edgecompress.core.targets import load_profile
    from edgecompress.engines.base import onnx_precision
    from edgecompress.engines.ort_cpu import OrtRunner
    from edgecompress.export.graph import input_dims, model_io, read_onnx
    from edgecompress.source.layout import batch_layout
    from edgecompress.measure.evaluate import EvalSet, evaluate
    from edgecompress.quantize.detect_tail import detector_tail_nodes
    from edgecompress.quantize.isa import recipe_for_target
    from edgecompress.quantize.static import quantize_model

    fp32 = workdir / "model.fp32.onnx"  # the build's prepared fp32 model
    graph = read_onnx(fp32)
    inputs, _ = model_io(graph)
    layout = batch_layout(input_dims(graph))  # batch 1 fixed in this export: calibrated one image at a time
    calibration = load_calibration_set(files / "calib.npz", inputs, layout)
    held_out = load_calibration_set(files / "eval.npz", inputs, layout)
    eval_set = EvalSet(held_out.arrays, None, "held-out photos", held_out.layout)
    reference = OrtRunner(fp32)
    recipe = recipe_for_target(load_profile("jetson-orin-nano"))
    tail = tuple(detector_tail_nodes(fp32))
    ort, trt = recipe.with_options(placement="onnxruntime"), recipe
    rules = [
        ("ONNX Runtime's placement, decode tail in int8", ort, None),
        ("ONNX Runtime's placement, decode tail kept out", ort.with_options(nodes_to_exclude=tail), None),
        ("TensorRT: Q/DQ on Conv/Gemm/MatMul inputs only, tail kept out", trt.with_options(nodes_to_exclude=tail),
         ("Conv", "ConvTranspose", "Gemm", "MatMul")),
        ("TensorRT: + both inputs of each Add, tail in int8", trt, None),
        ("TensorRT: + both inputs of each Add, tail kept out (the default)", trt.with_options(nodes_to_exclude=tail), None),
        ("ONNX Runtime's placement, tail kept out, percentile", ort.with_options(nodes_to_exclude=tail, calibration_method="percentile"), None),
        ("TensorRT default, percentile (what the ladder ships)", trt.with_options(nodes_to_exclude=tail, calibration_method="percentile"), None),
    ]
    lines = ["| Q/DQ placement (minmax unless said) | detection F1 vs fp32 (sim) | compute layers int8 / float | Q/DQ pairs | quantize + eval s |",
             "|---|---|---|---|---|"]
    from edgecompress.pipeline.precision import RememberedOutputs

    reference = RememberedOutputs(reference)  # fp32 runs once for the four variants
    from edgecompress.quantize import recipe as recipe_module

    for name, variant, quantized_ops in rules:
        started = time.perf_counter()
        default_ops = recipe_module.TENSORRT_QUANTIZED_OPS
        recipe_module.TENSORRT_QUANTIZED_OPS = quantized_ops or default_ops  # one rule at a time (this benchmark only)
        try:
            path = quantize_model(fp32, calibration, variant, workdir / f"rule-{len(lines)}.onnx")
        finally:
            recipe_module.TENSORRT_QUANTIZED_OPS = default_ops
        runner = OrtRunner(path, level="disable")
        evaluation = evaluate(runner, reference, eval_set)
        layers = onnx_precision(path).layers
        pairs = sum(n.op_type == "QuantizeLinear" for n in onnx.load(str(path)).graph.node)
        f1 = evaluation.fidelity[0].result.value
        lines.append(f"| {name} | {f1:.3f} | {layers.get('int8', 0)} / {sum(v for k, v in layers.items() if k != 'int8')} | "
                     f"{pairs} | {time.perf_counter() - started:.0f} |")
    return lines


def part3(model: Path, files: Path, out: Path) -> list[str]:
    code, reports, seconds = build_targets(model, files, out, TARGETS[:1], fidelity_budget="0.97", max_excluded_layers=0)
    report = reports[0]
    fidelity = report["fidelity"]
    shipping = next(line for line in report["verdict"] if "hipping" in line)
    return [(f"`--fidelity-budget 0.97 --max-excluded-layers 0` for {TARGETS[0]}: exit {code}, {seconds:.0f} s; shipped "
             f"{report['engine']['precision']} ({report['size_ratio_vs_fp32']:.2f}x smaller than fp32), detection F1 "
             f"{fidelity['value']:.3f} on {fidelity['validated_on']}."), "", f"> {shipping}", "",
            f"Ladder: {ladder_text(report)}."]


def part4(model: Path, files: Path, out: Path) -> list[str]:
    code, reports, seconds = build_targets(model, files, out, TARGETS[:1], fidelity_budget="0.95")
    report = reports[0]
    fidelity = report["fidelity"]
    from edgecompress.pipeline.report import precision_text

    return [(f"`--fidelity-budget 0.95` for {TARGETS[0]}: exit {code}, {seconds:.0f} s; shipped "
             f"{report['quantization']['precision']['chosen']} ({precision_text(report['engine'])}, "
             f"{report['size_ratio_vs_fp32']:.2f}x smaller than fp32), detection F1 {fidelity['value']:.3f}."), "",
            f"Ladder: {ladder_text(report)}; {report['quantization']['repair']['stop_reason']}."]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calib", type=int, default=16, help="calibration photos")
    parser.add_argument("--eval", type=int, default=24, help="held-out photos the F1 is measured on")
    parser.add_argument("--fp16-demo", action="store_true", help="part 3: a budget int8 cannot meet")
    parser.add_argument("--skip-rules", action="store_true", help="skip part 2")
    parser.add_argument("--budget-095", action="store_true", help="part 4: the same build with --fidelity-budget 0.95")
    parser.add_argument("--workdir", type=Path, help="keep the photos and builds here (default: a temporary folder)")
    args = parser.parse_args()
    model = YOLO_DETECTOR.locate()
    with tempfile.TemporaryDirectory(prefix="jetson-detector-") as tmp:
        files = Path(args.workdir or tmp)
        files.mkdir(parents=True, exist_ok=True)
        np.savez(files / "calib.npz", images=make.letterboxed_photos(args.calib, seed=1))
        np.savez(files / "eval.npz", images=make.letterboxed_photos(args.eval, seed=2))
        out = files / "build"
        started = time.perf_counter()
        lines = [f"# Jetson kits for a YOLOv8s detector ({YOLO_DETECTOR.distribution} {YOLO_DETECTOR.version}, 640 px)", "",
                 (f"Host: {host()}. {args.calib} calibration and {args.eval} held-out letterboxed photos. "
                  "F1: detections after NMS vs fp32's (same class, IoU >= 0.5), on this host's simulation."), ""]
        lines += part1(model, files, out) + [""]
        print("\n".join(lines), flush=True)  # part 1's table, before the longer parts
        if not args.skip_rules:
            lines += part2(model, files, out) + [""]
        if args.fp16_demo:
            lines += part3(model, files, out) + [""]  # same folder: the int8 models of part 1 are reused
        if args.budget_095:
            lines += part4(model, files, out) + [""]
        lines.append(f"Total wall time: {time.perf_counter() - started:.0f} s.")
    text = "\n".join(lines) + "\n"
    print(text)
    (ROOT / "benchmarks" / "jetson_detector.md").write_text(text)


if __name__ == "__main__":
    main()
