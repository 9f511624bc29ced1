"""The built-in example's goal, measured in one run: `edgecompress build` ships an int8 engine that pays.

1. The first build from nothing (empty teacher cache and build folder: trains the teacher,
   distils, prunes, exports, quantizes, benchmarks) and a cached rebuild, timed as a user
   runs them (`python -m edgecompress build`, wall clock).
2. The shipped engine against the models it came from, on the held-out digits test split:
   top-1, and latency at batch 1 interleaved (medians) — student int8 engine vs the
   student's fp32 ONNX Runtime model, the teacher in ONNX Runtime fp32 and the teacher in
   PyTorch eager fp32 (the model as trained).
The host's 1-minute load average is printed before and after each part: it is shared, and
a busy neighbour slows everything (the ratios, measured interleaved, less so).

    python benchmarks/example.py [--runs 300] [--threads 1] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edgecompress.measure.bench import benchmark  # noqa: E402
from edgecompress.source.data import digits_splits  # noqa: E402
from edgecompress.source.specs import TensorSpec  # noqa: E402
from edgecompress.engines.ort_cpu import OrtRunner  # noqa: E402
from edgecompress.measure.evaluate import run_batched, top1_accuracy  # noqa: E402
from edgecompress.presets.example import EXAMPLE_MODEL, example_teacher  # noqa: E402
from edgecompress.export.torch_export import export_torch  # noqa: E402


class TorchEagerRunner:
    """A PyTorch module behind the `Runner` interface, so eager and engines are timed by one loop."""

    def __init__(self, module: torch.nn.Module, input_name: str) -> None:
        self.module = module.eval()
        self.inputs = [TensorSpec(input_name, (None,))]
        self.outputs = [TensorSpec("logits", (None,))]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        with torch.no_grad():
            return [self.module(torch.from_numpy(feeds[self.inputs[0].name])).numpy()]


def load_average() -> str:
    return f"{os.getloadavg()[0]:.1f}"


def timed_build(out: Path, cache: Path) -> tuple[float, float]:
    """(wall, CPU) seconds of `python -m edgecompress build` as a user runs it (quiet output).

    CPU seconds (user + system, all threads and child processes) barely depend on the
    neighbours: on an idle host the wall time of a build is at most about its CPU time.
    """
    env = dict(os.environ, EDGECOMPRESS_CACHE=str(cache), EDGECOMPRESS_QUIET="1", PYTHONPATH=str(REPO))
    cpu_before, started = _children_cpu_seconds(), time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "edgecompress", "build", "--out", str(out)],
                            capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise SystemExit(f"build failed:\n{result.stderr}")
    return time.perf_counter() - started, _children_cpu_seconds() - cpu_before


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def build_times(work: Path) -> dict:
    print(f"\n## The example's builds (torch threads: {os.environ.get('OMP_NUM_THREADS', 'all cores')}; "
          f"load average {load_average()} before)")
    first = timed_build(work / "build", work / "cache")
    cached = timed_build(work / "build", work / "cache")
    report = json.loads((work / "build" / "cpu" / "report.json").read_text())
    print(f"first build (empty cache) {first[0]:.1f} s wall, {first[1]:.1f} s CPU; cached rebuild {cached[0]:.1f} s wall, "
          f"{cached[1]:.1f} s CPU; load average {load_average()} after")
    print(f"shipped: {report['engine']['kind']} {report['engine']['precision']}; the build's own figures (profile threads): "
          f"engine p50 {report['latency_ms']['p50']:.3f} ms vs student fp32 ORT {report['reference']['latency_ms']['p50']:.3f} ms "
          f"({report['speedup_vs_fp32']:.2f}x)")
    return report


def latency_table(report: dict, work: Path, runs: int, threads: int) -> None:
    torch.set_num_threads(threads)
    test = digits_splits().test
    teacher = example_teacher()
    engine = OrtRunner(Path(report["engine"]["path"]), threads=threads)
    name = engine.inputs[0].name
    export_torch(teacher, {name: (1, *test.x.shape[1:])}, work / "teacher.onnx", exporter="torchscript")
    runners = {
        "student int8 engine (ORT)": engine,
        "student fp32 (ORT)": OrtRunner(Path(report["reference"]["path"]), threads=threads),
        "teacher fp32 (ORT)": OrtRunner(work / "teacher.onnx", threads=threads),
        "teacher fp32 (PyTorch eager)": TorchEagerRunner(teacher, name),
    }
    top1 = {label: top1_accuracy(run_batched(runner, {name: test.x}, 64), test.y) for label, runner in runners.items()}
    before = load_average()
    feeds = {name: test.x[:1]}
    stats, _ = benchmark(runners, feeds, runs=runs, warmup=20, max_seconds=120)
    warm = warm_ms_per_run(runners, feeds, runs)
    engine_p50 = stats["student int8 engine (ORT)"].p50
    stages = {stage["name"]: stage for stage in report["compression"]["stages"]}
    flops = {"student int8 engine (ORT)": stages["pruned"]["flops"], "student fp32 (ORT)": stages["pruned"]["flops"],
             "teacher fp32 (ORT)": stages["teacher"]["flops"], "teacher fp32 (PyTorch eager)": stages["teacher"]["flops"]}
    print(f"\n## {EXAMPLE_MODEL} teacher -> {report['build']['config']['student']} student, digits test split "
          f"({len(test)} images), batch 1, {threads} thread(s), {stats['student int8 engine (ORT)'].runs} interleaved runs, "
          f"load average {before} before / {load_average()} after")
    print("| model | top-1 % | FLOPs | p50 ms, run by run | int8 engine is faster by | ms per run, warm (blocks of 20) "
          "| faster by | CPU ms per run, warm | faster by |")
    print("|---|---|---|---|---|---|---|---|---|")
    engine_warm = warm["student int8 engine (ORT)"]
    for label in runners:
        # other threads' CPU time is not counted by process_time's reading of one run: only with 1 thread
        cpu = f"{warm[label]['cpu']:.3f} | {warm[label]['cpu'] / engine_warm['cpu']:.2f}x" if threads == 1 else "- | -"
        print(f"| {label} | {top1[label]:.2f} | {flops[label] / 1e6:.1f} M | {stats[label].p50:.3f} | "
              f"{stats[label].p50 / engine_p50:.2f}x | {warm[label]['wall']:.3f} | "
              f"{warm[label]['wall'] / engine_warm['wall']:.2f}x | {cpu} |")
    drop = top1["teacher fp32 (PyTorch eager)"] - top1["student int8 engine (ORT)"]
    print(f"int8 engine vs teacher: {drop:+.2f} top-1 points lost")


def warm_ms_per_run(runners: dict, feeds: dict[str, np.ndarray], runs: int) -> dict[str, dict[str, float]]:
    """Median wall and CPU milliseconds of one run, per runner, from interleaved blocks of 20 runs.

    Run by run, interleaving four models evicts each one's weights from the caches between its runs
    (the teacher's are 2.8 MB); blocks of one model's runs keep them warm, as a device running one
    model does. A neighbour that takes the core away lengthens the wall time of a run but not its CPU
    time (1 thread), so on a shared host the CPU time is the closer estimate of a run on an idle core.
    """
    wall: dict[str, list[float]] = {label: [] for label in runners}
    cpu: dict[str, list[float]] = {label: [] for label in runners}
    for _ in range(max(1, runs // 20)):
        for label, runner in runners.items():
            started_wall, started_cpu = time.perf_counter(), time.process_time()
            for _ in range(20):
                runner.run(feeds)
            wall[label].append((time.perf_counter() - started_wall) * 1000 / 20)
            cpu[label].append((time.process_time() - started_cpu) * 1000 / 20)
    return {label: {"wall": float(np.median(wall[label])), "cpu": float(np.median(cpu[label]))} for label in runners}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300, help="interleaved timed runs per model")
    parser.add_argument("--threads", type=int, default=1, help="threads of every runner (ORT intra-op, torch)")
    parser.add_argument("--work", type=Path, help="keep the builds and cache here; with a finished build there, "
                        "only the latency table is measured again")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgecompress-example-bench-") as tmp:
        work = args.work or Path(tmp)
        report_path = work / "build" / "cpu" / "report.json"
        report = json.loads(report_path.read_text()) if report_path.is_file() else build_times(work)
        os.environ["EDGECOMPRESS_CACHE"] = str(work / "cache")  # the teacher the build trained
        latency_table(report, work, args.runs, args.threads)


if __name__ == "__main__":
    main()
