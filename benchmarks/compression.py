"""Compression benchmarks, measured in one run on this machine (ratios, interleaved reps, medians).

1. Distillation on the digits data (real, held-out test split): the teacher, a student
   trained alone, and the same student distilled, same epochs, averaged over seeds.
2. Pruning on a ResNet-18-style model: ONNX Runtime fp32 latency at batch 1 of the dense
   model, 50% unstructured zeros and 50% structured channels (the engine only gets faster
   when channels are really gone).
(End to end, the built-in example's teacher vs its shipped int8 engine: benchmarks/example.py.)

    python benchmarks/compression.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgecompress.measure.bench import benchmark  # noqa: E402
from edgecompress.compress.channels import prune_channels  # noqa: E402
from edgecompress.compress.distill import DistillConfig, distill  # noqa: E402
from edgecompress.compress.prune import make_permanent, prune_unstructured  # noqa: E402
from edgecompress.compress.trainer import TrainConfig, accuracy, fit  # noqa: E402
from edgecompress.source.data import digits_splits  # noqa: E402
from edgecompress.engines.ort_cpu import OrtRunner  # noqa: E402
from edgecompress.presets.example import EXAMPLE_MODEL, example_teacher  # noqa: E402
from edgecompress.export.torch_export import export_torch
from edgecompress.source.zoo import build_model  # noqa: E402


def distillation_table(seeds: list[int], epochs: int, student_name: str) -> None:
    splits = digits_splits()
    teacher = example_teacher()
    config = TrainConfig(epochs=epochs, batch_size=32, lr=1e-2, patience=epochs)
    alone, distilled = [], []
    for seed in seeds:
        torch.manual_seed(seed)
        student = build_model(student_name)
        fit(student, splits.train, splits.val, TrainConfig(**{**config.__dict__, "seed": seed}))
        alone.append(accuracy(student, splits.test))
        torch.manual_seed(seed)
        student = build_model(student_name)
        distill(student, teacher, splits.train, splits.val, TrainConfig(**{**config.__dict__, "seed": seed}),
                DistillConfig(alpha=0.5, temperature=4.0))
        distilled.append(accuracy(student, splits.test))
    print(f"\n## Distillation (digits test split, {student_name}, {epochs} epochs, seeds {seeds})")
    print("| model | top-1 % (mean) | per seed |\n|---|---|---|")
    print(f"| teacher ({EXAMPLE_MODEL}) | {accuracy(teacher, splits.test):.2f} | |")
    print(f"| student trained alone | {statistics.mean(alone):.2f} | {', '.join(f'{a:.2f}' for a in alone)} |")
    print(f"| student distilled | {statistics.mean(distilled):.2f} | {', '.join(f'{a:.2f}' for a in distilled)} |")


def _onnx_runner(module: torch.nn.Module, shape: tuple[int, ...], path: Path) -> OrtRunner:
    export_torch(module.eval(), {"input": shape}, path, exporter="torchscript")
    return OrtRunner(path, threads=1)


def pruning_table(runs: int, size: int) -> None:
    shape = (1, 3, size, size)
    example = torch.randn(*shape)
    dense = build_model("resnet18").eval()
    unstructured = build_model("resnet18")
    unstructured.load_state_dict(dense.state_dict())
    make_permanent(prune_unstructured(unstructured, 0.5, "magnitude", "global"))
    structured = build_model("resnet18")
    structured.load_state_dict(dense.state_dict())
    result = prune_channels(structured, example, 0.5)
    with tempfile.TemporaryDirectory() as tmp:
        runners = {name: _onnx_runner(model, shape, Path(tmp) / f"{name}.onnx")
                   for name, model in (("dense", dense), ("unstructured", unstructured), ("structured", structured))}
        sizes = {name: (Path(tmp) / f"{name}.onnx").stat().st_size for name in runners}
        stats, _ = benchmark(runners, {"input": example.numpy()}, runs=runs, warmup=3, max_seconds=120)
    print(f"\n## Pruning (resnet18, ORT fp32 CPU, 1 thread, batch 1, {size}x{size}, {stats['dense'].runs} interleaved runs)")
    print("| model | params | ONNX size | p50 ms | speed-up vs dense |\n|---|---|---|---|---|")
    params = {"dense": result.params_before, "unstructured": result.params_before, "structured": result.params_after}
    for name in runners:
        label = name if name == "dense" else f"{name} 50%"
        print(f"| {label} | {params[name]:,} | {sizes[name] / 2**20:.1f} MiB | {stats[name].p50:.2f} | "
              f"{stats['dense'].p50 / stats[name].p50:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer seeds, runs and a smaller input")
    args = parser.parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("EDGECOMPRESS_QUIET", "1")
    distillation_table([0, 1] if args.quick else [0, 1, 2], 3 if args.quick else 4, "cnn-tiny")
    pruning_table(15 if args.quick else 40, 160 if args.quick else 224)


if __name__ == "__main__":
    main()
