"""The model corpus (tests/model_corpus.py): plain onnxruntime.quantization vs edgecompress, in one run.

For each real model, on the same realistic inputs, against ONNX Runtime fp32 on the original file:
- ORT `quantize_static` with its defaults (QDQ, per-tensor, MinMax);
- the same after `quant_pre_process`;
- `edgecompress build --target cpu --precision int8` (the engine it writes).
Fidelity is each task's metric (tests/task_metrics.py), size is the file's bytes, latency is p50 at batch 1
with all four sessions interleaved sample by sample so that load on this shared machine hits each alike.

    python benchmarks/model_corpus.py [--only KEY ...] [--runs 30]    # writes benchmarks/model_corpus.md
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import corpus_inputs as make  # noqa: E402
from tests import task_metrics as metric  # noqa: E402
from tests.model_corpus import (  # noqa: E402
    CTC_RECOGNIZER, PADDLE_CLASSIFIER, TEXT_DETECTOR, VOICE_ACTIVITY, YOLO_DETECTOR, CorpusModel,
)


@dataclass
class Case:
    model: CorpusModel
    calib: Callable[[], dict]
    eval_data: Callable[[], dict]
    fidelity: Callable[[np.ndarray, np.ndarray], float]  # fp32 outputs, candidate outputs (first output, all samples)
    metric_name: str
    input_shape: list[str]
    layout: dict  # batch axis per input for slicing samples (None: scalar)


def _classify(reference, other):
    return f"{metric.top1_agreement(reference, other):.3f} / {metric.cosine(reference, other):.4f}"


CASES = {
    "paddle-cls": Case(PADDLE_CLASSIFIER, lambda: {"x": make.text_lines(32, width=192, seed=1, flip_every=2)},
                       lambda: {"x": make.text_lines(48, width=192, seed=2, flip_every=2)}, _classify,
                       "top-1 agreement / cosine", ["x:1,3,48,192"], {"x": 0}),
    "ppocr-det": Case(TEXT_DETECTOR, lambda: {"x": make.text_scenes(16, seed=1)}, lambda: {"x": make.text_scenes(12, seed=2)},
                      lambda r, o: f"{metric.map_iou(r, o):.3f}", "map IoU (p > 0.3)", ["x:1,3,256,256"], {"x": 0}),
    "ppocr-rec": Case(CTC_RECOGNIZER, lambda: {"x": make.text_lines(32, seed=1)}, lambda: {"x": make.text_lines(24, seed=2)},
                      lambda r, o: f"{metric.character_error_rate(r, o):.3f}", "CER vs fp32 (lower is better)", ["x:1,3,48,320"], {"x": 0}),
    "yolov8s-fall": Case(YOLO_DETECTOR, lambda: {"images": make.letterboxed_photos(16, seed=1)},
                         lambda: {"images": make.letterboxed_photos(10, seed=2)},
                         lambda r, o: f"{metric.detection_f1(r, o):.3f}",
                         "F1 of detections after NMS", [], {"images": 0}),
    "silero-vad": Case(VOICE_ACTIVITY, lambda: make.vad_stream_inputs(VOICE_ACTIVITY.locate(), make.speech_audio(seed=1), every=2),
                       lambda: make.vad_stream_inputs(VOICE_ACTIVITY.locate(), make.speech_audio(seed=2)),
                       lambda r, o: f"{metric.max_abs_difference(r, o):.4f}", "max |Δ speech probability|", ["input:1,576"],
                       {"input": 0, "state": 1, "sr": None}),
}


def _sample(arrays: dict, layout: dict, index: int) -> dict:
    return {name: a if layout[name] is None else np.take(a, [index], axis=layout[name]) for name, a in arrays.items()}


def _count(arrays: dict, layout: dict) -> int:
    return next(a.shape[layout[name]] for name, a in arrays.items() if layout[name] is not None)


class _Reader:
    """ORT CalibrationDataReader, one sample at a time."""

    def __init__(self, arrays: dict, layout: dict) -> None:
        self._feeds = iter([_sample(arrays, layout, i) for i in range(_count(arrays, layout))])

    def get_next(self):
        return next(self._feeds, None)


def plain_ort(source: Path, out: Path, calib: dict, layout: dict, pre_process: bool) -> Path:
    from onnxruntime.quantization import quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model = source
    if pre_process:
        model = out.with_suffix(".pre.onnx")
        quant_pre_process(str(source), str(model))
    quantize_static(str(model), str(out), _Reader(calib, layout))
    return out


def edgecompress_engine(case: Case, source: Path, work: Path, calib: dict, eval_data: dict) -> Path:
    from edgecompress.core.config import BuildConfig
    from edgecompress.pipeline.pipeline import build

    np.savez(work / "calib.npz", **calib)
    np.savez(work / "eval.npz", **eval_data)
    config = BuildConfig(model=str(source), input_shape=case.input_shape, calib=work / "calib.npz", eval_data=work / "eval.npz",
                         target=["cpu"], out=work / "build", precision="int8", bench_runs=10)
    return Path(build(config)[0]["engine"]["path"])


def measure(case: Case, runs: int) -> dict:
    import onnxruntime as ort

    source = case.model.locate()
    calib, eval_data = case.calib(), case.eval_data()
    from edgecompress.quantize.static import working_directory

    with tempfile.TemporaryDirectory(prefix="corpus-bench-") as folder, working_directory(Path(folder)):  # ORT's temp files
        work = Path(folder)
        makers = {
            "ORT quantize_static": lambda: plain_ort(source, work / "ort.onnx", calib, case.layout, pre_process=False),
            "ORT quant_pre_process + quantize_static": lambda: plain_ort(source, work / "ort-pre.onnx", calib, case.layout, pre_process=True),
            "edgecompress": lambda: edgecompress_engine(case, source, work, calib, eval_data),
        }
        candidates, failures = {"ORT fp32": source}, {}
        for name, make_model in makers.items():
            try:  # a way of quantizing that fails on a real model is a result too
                candidates[name] = make_model()
            except Exception as exc:
                failures[name] = f"fails: {exc.__class__.__name__} {' '.join(str(exc).split())[:80]}".strip()
        options = ort.SessionOptions()
        options.intra_op_num_threads = 2
        sessions = {name: ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]) for name, path in candidates.items()}
        count = _count(eval_data, case.layout)
        outputs = {name: [] for name in sessions}
        times = {name: [] for name in sessions}
        for round_ in range(max(runs, count)):
            feed = _sample(eval_data, case.layout, round_ % count)
            for name, session in sessions.items():
                started = time.perf_counter()
                result = session.run(None, feed)[0]
                times[name].append(time.perf_counter() - started)
                if round_ < count:
                    outputs[name].append(result)
        reference = np.concatenate(outputs["ORT fp32"])
        fp32_ms = float(np.median(times["ORT fp32"]) * 1000)
        rows = {name: {"failed": reason} for name, reason in failures.items()}
        for name, path in candidates.items():
            p50 = float(np.median(times[name]) * 1000)
            rows[name] = {"fidelity": case.fidelity(reference, np.concatenate(outputs[name])), "size": path.stat().st_size,
                          "p50_ms": p50, "speed": fp32_ms / p50}
    return rows


def markdown(results: dict[str, dict]) -> str:
    lines = ["| model | task metric (int8 vs fp32) | method | fidelity | size | size vs fp32 | p50 ms | speed vs ORT fp32 |",
             "|---|---|---|---|---|---|---|---|"]
    for key, rows in results.items():
        fp32_size = rows["ORT fp32"]["size"]
        for name, row in rows.items():
            if name == "ORT fp32":
                continue
            if "failed" in row:
                lines.append(f"| {key} | {CASES[key].metric_name} | {name} | {row['failed']} | | | | |")
                continue
            lines.append(f"| {key} | {CASES[key].metric_name} | {name} | {row['fidelity']} | {row['size'] / 1e6:.2f} MB | "
                         f"{fp32_size / row['size']:.2f}x smaller | {row['p50_ms']:.2f} (fp32 {rows['ORT fp32']['p50_ms']:.2f}) | {row['speed']:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", default=list(CASES))
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("model_corpus.md"))
    args = parser.parse_args()
    results = {}
    for key in args.only:
        started = time.perf_counter()
        results[key] = measure(CASES[key], args.runs)
        print(f"{key}: measured in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        print(markdown({key: results[key]}), flush=True)
    table = markdown(results)
    args.out.write_text(f"# Model corpus: plain ORT quantization vs edgecompress\n\nMade by `python benchmarks/model_corpus.py`.\n\n{table}\n")
    print(table)


if __name__ == "__main__":
    main()
