"""Is int8 faster than fp32, and which x86 runtime is fastest? One interleaved run per model.

For each corpus model (tests/model_corpus.py), a ResNet-18-style model and EfficientNet-Lite0 at 224x224, at batch 1
with the cpu profile's 2 threads, all timed round-robin in one loop so that the load of a shared host hits each alike:
- ORT fp32: the fp32 model in ONNX Runtime;
- ORT int8 (defaults): `onnxruntime.quantization.quantize_static` with its defaults, in ONNX Runtime;
- edgecompress before: the shipped recipe without the int8 rewrites of quantize/islands.py (how main quantized);
- edgecompress engine: `edgecompress build --target cpu --precision int8 --max-excluded-layers 0` (the engine it
  writes: every layer int8, repair limited to calibration, equalization and bias correction);
- OpenVINO: the same int8 QDQ file the engine was built from, compiled by OpenVINO's CPU plugin (intel-cpu's settings).
The intel-cpu target ships the faster of the last two within the budget. Fidelity is each task's metric against fp32
(benchmarks/model_corpus.py), the float islands are counted on the ONNX Runtime engine (measure/op_profile.py).

    python benchmarks/fast_int8.py [--only paddle-cls efficientnet-lite0 ...] [--runs 40] [--max-seconds 60]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import fields, replace
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.model_corpus import CASES, Case, _classify, _count, _sample, plain_ort  # noqa: E402

CLASSIFY = "top-1 agreement / cosine"


class ExportedModel:
    """A torch model exported here, standing where a corpus model's verified file stands."""

    def __init__(self, key: str, make_fp32: Callable[[Path], Path]) -> None:
        self.key, self._make_fp32 = key, make_fp32

    def locate(self) -> Path:
        WORK.mkdir(parents=True, exist_ok=True)
        return self._make_fp32(WORK / f"{self.key}.onnx")


def _zoo_case(name: str, make_fp32: Callable[[Path], Path], draw: Callable[[str, int], np.ndarray]) -> Case:
    return Case(ExportedModel(name, make_fp32), lambda: {"input": draw("calib", 32)},  # type: ignore[arg-type]
                lambda: {"input": draw("eval", 16)}, _classify, CLASSIFY, ["input:1,3,224,224"], {"input": 0})


def _resnet18_fp32(path: Path) -> Path:
    import torch

    from benchmarks.quant_repair import export, with_estimated_batchnorm
    from edgecompress.source.zoo import build_model

    images = torch.from_numpy(_gaussian("calib", 8))
    return path if path.is_file() else export(with_estimated_batchnorm(build_model("resnet18"), images), (1, 3, 224, 224), path)


def _gaussian(split: str, count: int) -> np.ndarray:
    return np.random.default_rng({"calib": 0, "eval": 1}[split]).standard_normal((count, 3, 224, 224)).astype(np.float32)


def _lite0_fp32(path: Path) -> Path:
    from benchmarks.qat import _lite0_onnx

    return _lite0_onnx(path.parent)


def _photos(split: str, count: int) -> np.ndarray:
    from benchmarks.qat import _photo_crops

    return _photo_crops("train" if split == "calib" else "held-out", count, {"calib": 0, "eval": 1}[split])


WORK = Path(tempfile.gettempdir()) / "edgecompress-fast-int8"
ZOO = {"resnet18-style": _zoo_case("resnet18-style", _resnet18_fp32, _gaussian),
       "efficientnet-lite0": _zoo_case("efficientnet-lite0", _lite0_fp32, _photos)}
ALL = {**CASES, **ZOO}


def _edgecompress_build(case: Case, source: Path, work: Path, calib: dict, eval_data: dict) -> dict:
    """The cpu target's int8 engine with every layer in int8 (repair tries calibrations, equalization and bias correction,
    and keeps no layer in fp32: `--max-excluded-layers 0`): this compares speed, and the fidelity is printed beside it."""
    from edgecompress.core.config import BuildConfig
    from edgecompress.pipeline.pipeline import build

    np.savez(work / "calib.npz", **calib)
    np.savez(work / "eval.npz", **eval_data)
    config = BuildConfig(model=str(source), input_shape=case.input_shape, calib=work / "calib.npz", eval_data=work / "eval.npz",
                         target=["cpu"], out=work / "build", precision="int8", bench_runs=10, bench_warmup=2,
                         allow_over_budget=True,  # the int8 engine is timed even where it misses the budget (fidelity says so)
                         max_excluded_layers=0)
    return build(config)[0]


def _before(report: dict, work: Path, calib: dict, case: Case) -> Path:
    """The shipped recipe (repair's choices included) without the int8 rewrites, quantized by the same quantizer."""
    from edgecompress.calib.load import calibration_set_from_arrays
    from edgecompress.export.graph import model_io, read_onnx
    from edgecompress.quantize.recipe import QuantRecipe
    from edgecompress.quantize.static import quantize_model
    from edgecompress.source.layout import BatchLayout

    names = {f.name for f in fields(QuantRecipe)}
    recipe = QuantRecipe(**{k: tuple(v) if isinstance(v, list) else v for k, v in report["quantization"]["recipe"].items() if k in names})
    fp32 = Path(report["reference"]["path"])
    layout = BatchLayout(dict(case.layout), fixed_batch=1)
    calibration = calibration_set_from_arrays(calib, model_io(read_onnx(fp32))[0], "benchmark calibration", layout)
    return quantize_model(fp32, calibration, replace(recipe, int8_rewrites=()), work / "before.int8.onnx")


def measure(key: str, case: Case, runs: int, max_seconds: float) -> dict:
    from edgecompress.core.targets import load_profile
    from edgecompress.engines.openvino import OpenVinoRunner, compile_config
    from edgecompress.engines.ort_cpu import OrtRunner
    from edgecompress.measure.op_profile import profile_operators
    from edgecompress.quantize.static import working_directory

    source = case.model.locate()
    calib, eval_data = case.calib(), case.eval_data()
    work = WORK / key
    work.mkdir(parents=True, exist_ok=True)
    with working_directory(work):  # ORT's temporary files
        started = time.perf_counter()
        report = _edgecompress_build(case, source, work, calib, eval_data)
        build_s = time.perf_counter() - started
        qdq = Path(report["quantization"]["model_path"])
        files = {"ORT fp32": source, "ORT int8 (defaults)": plain_ort(source, work / "ort-defaults.onnx", calib, case.layout, False),
                 "edgecompress before": _before(report, work, calib, case), "edgecompress engine": Path(report["engine"]["path"])}
    runners = {name: OrtRunner(path, threads=2) for name, path in files.items()}
    runners["OpenVINO (same QDQ file)"] = OpenVinoRunner(qdq, compile_config(load_profile("intel-cpu")))
    count = _count(eval_data, case.layout)
    outputs: dict[str, list] = {name: [] for name in runners}
    times: dict[str, list] = {name: [] for name in runners}
    began, round_ = time.perf_counter(), 0
    while round_ < max(runs + 3, count) and (round_ < count + 3 or time.perf_counter() - began < max_seconds):
        feed = _sample(eval_data, case.layout, round_ % count)
        order = list(runners) if round_ % 2 == 0 else list(runners)[::-1]  # no variant always runs right after another
        for name in order:
            runner = runners[name]
            tick = time.perf_counter()
            result = runner.run(feed)[0]
            times[name].append(time.perf_counter() - tick)
            if round_ < count:
                outputs[name].append(result)
        round_ += 1
    reference = np.concatenate(outputs["ORT fp32"])
    fp32_ms = float(np.median(times["ORT fp32"][3:]) * 1000)
    first = _sample(eval_data, case.layout, 0)
    islands = {name: profile_operators(files[name], first, threads=2, runs=5, warmup=2).islands
               for name in ("edgecompress before", "edgecompress engine")}
    rows = {}
    for name in runners:
        p50 = float(np.median(times[name][3:]) * 1000)
        rows[name] = {"p50_ms": p50, "speed": fp32_ms / p50, "fidelity": case.fidelity(reference, np.concatenate(outputs[name]))}
    for name, found in islands.items():
        rows[name]["islands"] = f"{found.count} ({found.convert_nodes} Q/DQ, {found.fraction:.0%})"
    return {"rows": rows, "runs": round_ - 3, "build_s": build_s, "shipped_precision": report["engine"]["precision"],
            "recipe": report["quantization"]["recipe"]["label"], "metric": case.metric_name}


def markdown(results: dict[str, dict]) -> str:
    names = ["ORT int8 (defaults)", "edgecompress before", "edgecompress engine", "OpenVINO (same QDQ file)"]
    lines = ["| model | ORT fp32 ms | " + " | ".join(names) + " | intel-cpu ships | float islands before → after | fidelity (engine) |",
             "|---|---|" + "---|" * len(names) + "---|---|---|"]
    for key, result in results.items():
        rows = result["rows"]
        cells = [f"{rows[n]['p50_ms']:.2f} ({rows[n]['speed']:.2f}×)" for n in names]
        engine, openvino = rows["edgecompress engine"], rows["OpenVINO (same QDQ file)"]
        ships = "OpenVINO" if openvino["p50_ms"] < engine["p50_ms"] else "ORT"
        best = min(engine["p50_ms"], openvino["p50_ms"])
        lines.append(f"| {key} | {rows['ORT fp32']['p50_ms']:.2f} | " + " | ".join(cells) +
                     f" | {ships} {rows['ORT fp32']['p50_ms'] / best:.2f}× | {rows['edgecompress before']['islands']} → "
                     f"{engine['islands']} | {result['metric']}: {engine['fidelity']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", default=list(ALL))
    parser.add_argument("--runs", type=int, default=40, help="timed rounds per model (all variants each round)")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="stop a model's timing loop after this long")
    parser.add_argument("--json", type=Path, default=WORK / "results.json", help="results so far (kept across models)")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    results = json.loads(args.json.read_text()) if args.json.is_file() else {}
    for key in args.only:
        started = time.perf_counter()
        try:
            results[key] = measure(key, ALL[key], args.runs, args.max_seconds)
        except Exception as exc:  # a model that cannot be measured here (not installed, a build that fails) is said
            print(f"{key}: not measured: {exc.__class__.__name__}: {' '.join(str(exc).split())[:200]}", flush=True)
            continue
        print(f"{key}: {time.perf_counter() - started:.0f} s, {results[key]['runs']} timed rounds", flush=True)
        args.json.write_text(json.dumps(results, indent=1))
    load = os.getloadavg()
    print(f"\nbatch 1, 2 threads, p50 of interleaved runs; load average at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}\n")
    print(markdown({key: results[key] for key in args.only if key in results}))


if __name__ == "__main__":
    main()
