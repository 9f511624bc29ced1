"""Phones: the same model through ExecuTorch (.pte, XNNPACK) and ONNX Runtime Mobile (.ort), in one run.

For each model — the built-in example's student (distilled, channel-pruned), trained MobileNetV2-style digits
classifiers (inverted residuals with depthwise 3x3 convolutions: width 0.35 at 1x32x32, `mobilenetv2`, and full width at
1x48x48, `mobilenetv2-wide`, through the build's default top-1 budget on the labelled test split) and a full-width MobileNetV2 at
3x224x224 (random weights, BatchNorm statistics re-estimated, random images) — the build runs for
`android-arm64-executorch` and `android-arm64` (the pipeline's own ladder: budget, repair, precision), then:

- engines: ExecuTorch int8 .pte (what the build ships) and fp32 .pte (same torch module, no quantizer);
  ORT .ort int8 (what the build ships, ARM recipe s8s8) and .ort fp32 (ORT's converter on the fp32 ONNX);
- fidelity of each against ORT fp32 on the held-out digits test split (top-1 with labels, agreement, cosine);
- size, and p50 latency of all four interleaved in one run, batch 1, at the profiles' threads capped at
  this host's cores.

Every latency here is x86: ExecuTorch's XNNPACK kernels and ORT's CPU provider on THIS host (PyPI's
onnxruntime has no XNNPACK provider), never a phone's figure.

Run: python benchmarks/phones.py [--runs 300] [--models example,mobilenetv2-wide,mobilenetv2,mobilenetv2-224]  (needs pip install -e ".[mobile]")
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edgecompress.core.cache import module_hash  # noqa: E402
from edgecompress.core.config import make_config  # noqa: E402
from edgecompress.core.targets import load_profile  # noqa: E402
from edgecompress.engines import EngineArtifact, checked_profiles, get_builder  # noqa: E402
from edgecompress.engines.base import TorchEngineRequest  # noqa: E402
from edgecompress.engines.ort_cpu import OrtRunner  # noqa: E402
from edgecompress.measure.bench import benchmark  # noqa: E402
from edgecompress.measure.evaluate import evaluate  # noqa: E402
from edgecompress.measure.measured_on import host_cpu  # noqa: E402
from edgecompress.pipeline.pipeline import BUILD_STEPS, BuildContext, TargetContext, build_target, fidelity_options  # noqa: E402
from edgecompress.pipeline.torch_engine import torch_model  # noqa: E402
from edgecompress.source.data import DIGITS_INPUT_NAME, DIGITS_LABELS, DIGITS_SIZE  # noqa: E402
from edgecompress.source.model import SourceModel  # noqa: E402

PTE_TARGET, ORT_TARGET = "android-arm64-executorch", "android-arm64"


# trained MobileNetV2-style digits models: case name -> (zoo model, input size, training epochs)
TRAINED_DIGITS = {"mobilenetv2": ("mobilenetv2-digits", DIGITS_SIZE, 6), "mobilenetv2-wide": ("mobilenetv2-digits-wide", 48, 8)}


def trained_digits_source(name: str) -> SourceModel:
    from quant_repair import trained_mobilenet_digits  # the same cached trained models as benchmarks/quant_repair.py

    zoo_name, size, epochs = TRAINED_DIGITS[name]
    module = trained_mobilenet_digits(zoo_name, size, epochs)
    return SourceModel(zoo_name, module_hash(module), module=module, input_shapes={DIGITS_INPUT_NAME: (1, 1, size, size)},
                       labels=DIGITS_LABELS)


def labelled_digits_files(name: str, out: Path) -> tuple[Path, Path]:
    """The digits at the case's size as the build takes them: calibration from the train split (inputs), the test
    split held out with its labels `y` (so the build's default budget is the top-1 one)."""
    import numpy as np
    from quant_repair import digits_splits_at

    from edgecompress.pipeline.pipeline import CALIBRATION_COUNT_FROM_DATA

    splits = digits_splits_at(TRAINED_DIGITS[name][1])
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "calib.npz", **{DIGITS_INPUT_NAME: splits.train.x[:CALIBRATION_COUNT_FROM_DATA]})
    np.savez(out / "eval.npz", **{DIGITS_INPUT_NAME: splits.test.x}, y=splits.test.y)
    return out / "calib.npz", out / "eval.npz"


def mobilenetv2_224_source(out: Path) -> tuple[SourceModel, Path, Path]:
    """Full-width MobileNetV2 at 3x224x224, random weights with BatchNorm statistics re-estimated on random images (as
    benchmarks/quant_repair.py part 2): 16 calibration and 32 held-out random images, no labels."""
    import numpy as np
    import torch
    from quant_repair import with_estimated_batchnorm

    from edgecompress.source.zoo import build_model

    torch.manual_seed(0)
    images = np.random.default_rng(0).standard_normal((56, 3, 224, 224)).astype(np.float32)
    module = with_estimated_batchnorm(build_model("mobilenetv2"), torch.from_numpy(images[:8]))
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "calib.npz", input=images[8:24])
    np.savez(out / "eval.npz", input=images[24:])
    source = SourceModel("mobilenetv2-224", module_hash(module), module=module, input_shapes={"input": (1, 3, 224, 224)})
    return source, out / "calib.npz", out / "eval.npz"


def run_build(name: str, out: Path, bench_runs: int) -> tuple[TargetContext, dict[str, dict]]:
    """The build's steps for both phone targets; returns what they share (the student module too) and the reports."""
    if name == "mobilenetv2-224":
        # random weights: top-1 of random logits says little, so the build judges the outputs' SQNR (>= 10 dB) and ships
        # int8 without repair (each .pte build at 224 takes minutes on 2 cores); agreement and cosine are in the table
        source, calib, eval_data = mobilenetv2_224_source(out)
        config = make_config({}, {"target": [PTE_TARGET, ORT_TARGET], "out": out, "calib": calib, "eval_data": eval_data,
                                  "bench_runs": bench_runs, "model": "mobilenetv2-224", "task": ["regress"],
                                  "fidelity_budget": ["10"], "max_excluded_layers": 0, "precision": "int8",
                                  "allow_over_budget": True})
        context = BuildContext(config, source=source)
        steps = BUILD_STEPS[1:]
    elif name == "example":
        config = make_config({}, {"target": [PTE_TARGET, ORT_TARGET], "out": out, "bench_runs": bench_runs})
        context = BuildContext(config)
        steps = BUILD_STEPS
    elif name == "mobilenetv2":  # no compression, calibration from the digits train split, test split held out
        config = make_config({}, {"target": [PTE_TARGET, ORT_TARGET], "out": out, "data": "digits", "bench_runs": bench_runs,
                                  "model": TRAINED_DIGITS[name][0]})
        context = BuildContext(config, source=trained_digits_source(name))
        steps = BUILD_STEPS[1:]
    else:  # a trained MobileNetV2 at another size: the same splits, passed as --calib and --eval-data (with labels)
        calib, eval_data = labelled_digits_files(name, out)
        config = make_config({}, {"target": [PTE_TARGET, ORT_TARGET], "out": out, "calib": calib, "eval_data": eval_data,
                                  "bench_runs": bench_runs, "model": TRAINED_DIGITS[name][0]})
        context = BuildContext(config, source=trained_digits_source(name))
        steps = BUILD_STEPS[1:]
    profiles = checked_profiles(config.target)
    for step in steps:
        context = step.run(context)
    ready = TargetContext.after_steps(context)
    return ready, {profile.name: build_target(ready, profile).to_dict() for profile in profiles}


def shipped(report: dict) -> EngineArtifact:
    engine = report["engine"]
    return EngineArtifact(report["target"], engine["kind"], engine["precision"], Path(engine["path"]),
                          [Path(p) for p in engine["files"]], engine["metadata"])


def engines(ready: TargetContext, reports: dict[str, dict], out: Path) -> dict[str, tuple[EngineArtifact, object]]:
    """The four engines: each route's shipped int8 and its fp32 counterpart, built by the routes' own builders."""
    pte_profile, ort_profile = load_profile(PTE_TARGET), load_profile(ORT_TARGET)
    pte_builder, ort_builder = get_builder("executorch"), get_builder("ort-arm")
    model = torch_model(ready.source.module, [s.name for s in ready.fp32.inputs], [s.name for s in ready.fp32.outputs],
                        ready.calibration, 1)
    pte_fp32 = pte_builder.build(model, TorchEngineRequest("fp32"), pte_profile, out / "bench" / "pte-fp32")
    ort_fp32 = ort_builder.build(ready.fp32.path, ort_profile, out / "bench" / "ort-fp32")
    pte_int8, ort_int8 = shipped(reports[PTE_TARGET]), shipped(reports[ORT_TARGET])
    if pte_int8.precision == "fp32":  # the build shipped fp32: build the int8 candidate for the comparison
        pte_int8 = pte_builder.build(model, TorchEngineRequest("int8"), pte_profile, out / "bench" / "pte-int8")
    if ort_int8.precision == "fp32":
        int8_onnx = Path(reports[ORT_TARGET]["quantization"]["tries"][0]["model_path"])
        ort_int8 = ort_builder.build(int8_onnx, ort_profile, out / "bench" / "ort-int8")
    return {
        "ExecuTorch .pte int8" + _unless_int8(pte_int8): (pte_int8, pte_builder.load(pte_int8, pte_profile)),
        "ExecuTorch .pte fp32": (pte_fp32, pte_builder.load(pte_fp32, pte_profile)),
        "ORT .ort int8" + _unless_int8(ort_int8): (ort_int8, ort_builder.load(ort_int8, ort_profile)),
        "ORT .ort fp32": (ort_fp32, ort_builder.load(ort_fp32, ort_profile)),
    }


def _unless_int8(artifact: EngineArtifact) -> str:
    return "" if artifact.precision == "int8" else f" ({artifact.precision})"


def measure(name: str, runs: int, root: Path) -> list[list[str]]:
    out = root / name
    ready, reports = run_build(name, out, bench_runs=50)
    built = engines(ready, reports, out)
    reference = OrtRunner(ready.fp32.path, threads=load_profile(ORT_TARGET).threads)
    rows = []
    feeds = {key: value[:1] for key, value in ready.eval_set.inputs.items()}
    stats, _ = benchmark({label: runner for label, (_, runner) in built.items()}, feeds, runs=runs, warmup=20, max_seconds=120)
    sizes = {label: artifact.path.stat().st_size for label, (artifact, _) in built.items()}
    for label, (artifact, runner) in built.items():
        evaluation = evaluate(runner, reference, ready.eval_set, fidelity=fidelity_options(ready.config))
        fp32_label = "ExecuTorch .pte fp32" if label.startswith("ExecuTorch") else "ORT .ort fp32"
        report = reports[PTE_TARGET if label.startswith("ExecuTorch") else ORT_TARGET]
        within = report["fidelity"]["met"] if artifact.path == Path(report["engine"]["path"]) else None
        rows.append([
            name, label, f"{sizes[label] / 1024:.1f} KiB", f"{sizes[fp32_label] / sizes[label]:.2f}x",
            "-" if evaluation.accuracy_engine is None else f"{evaluation.accuracy_engine:.2f}",
            f"{evaluation.agreement.top1:.4f}", f"{evaluation.agreement.cosine:.5f}",
            "-" if within is None else ("yes" if within else "NO"),
            f"{stats[label].p50:.3f}", f"{stats[fp32_label].p50 / stats[label].p50:.2f}x",
        ])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=300, help="interleaved timed runs per engine")
    parser.add_argument("--models", default="example,mobilenetv2-wide",
                        help="comma-separated: example, mobilenetv2-wide, mobilenetv2, mobilenetv2-224")
    args = parser.parse_args()
    if get_builder("executorch").available() is not None:
        sys.exit(f"error: {get_builder('executorch').available()}")
    import os

    print(f"host: {host_cpu()}, {os.cpu_count()} cores; every latency is x86 (XNNPACK / ORT CPU provider on this host), "
          "not a phone")
    header = ["model", "engine", "size", "smaller than its fp32", "top-1 %", "agreement vs ORT fp32", "cosine",
              "build's budget met", "p50 ms (x86, this host)", "faster than its fp32"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    with tempfile.TemporaryDirectory(prefix="phones-bench-") as tmp:
        for name in args.models.split(","):
            for row in measure(name, args.runs, Path(tmp)):
                print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
