"""The compress stage of `edgecompress build`: teacher -> distilled student -> pruned student.

It runs before export and only for PyTorch models. Distillation and the pruning gate are
each cached on the content hashes of what went in (teacher weights, data, options), so a
second build, e.g. for another target, reuses the student instead of retraining it.
The stages' figures (accuracy on the held-out split, parameters, FLOPs, size, eager
latency) become report.json's `compression.stages`; the engine is appended per target.
"""

from __future__ import annotations

import copy
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgecompress.core.artifacts import atomic_path
from edgecompress.core.cache import cached_artifact, module_hash
from edgecompress.compress.distill import DistillConfig, distill, predict, teacher_labels
from edgecompress.compress.channels import load_resized
from edgecompress.compress.gate import GateConfig, PruneMethod, compress_with_gate
from edgecompress.compress.measure import model_stats
from edgecompress.compress.sources import Splits, has_labels, load_labelled_data, load_model, parse_feature_pairs
from edgecompress.compress.trainer import TrainConfig, accuracy
from edgecompress.core.config import BuildConfig
from edgecompress.core.errors import ConfigError, DistillationError
from edgecompress.source.model import SourceModel
from edgecompress.device.preprocess import PreprocessSpec
from edgecompress.core.progress import info

STAGE_VERSION = "compress-v2"  # v2: students saved as state_dicts (weights_only=True)


@dataclass
class Compression:
    """What the compress stage hands on: the module to export, the data it used and its record."""

    module: nn.Module
    splits: Splits
    record: dict[str, Any]


def resolved_choices(config: BuildConfig) -> tuple[str | None, PruneMethod]:
    """(student spec or None, prune method): unset means none (the built-in example sets both, as a preset)."""
    student = None if config.student in (None, "none") else config.student
    return student, config.prune or "none"


def splits_hash(splits: Splits) -> str:
    digest = hashlib.sha256()
    for part in (splits.train, splits.val, splits.test):
        digest.update(part.x.tobytes())
        digest.update(part.y.tobytes())
    return digest.hexdigest()


def eager_latency_ms(model: nn.Module, example: torch.Tensor, runs: int = 30) -> float:
    """Median PyTorch eager latency at batch 1, one thread (the 'before' of the end-to-end comparison).

    One thread because torch's intra-op pool spins badly on a shared or busy host, which
    would make the eager figure a measure of the neighbours rather than of the model.
    """
    model.eval()
    threads, times = torch.get_num_threads(), []
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            for index in range(runs + 5):
                started = time.perf_counter()
                model(example)
                if index >= 5:
                    times.append((time.perf_counter() - started) * 1000)
    finally:
        torch.set_num_threads(threads)
    return sorted(times)[len(times) // 2]


def stage_entry(name: str, module: nn.Module, splits: Splits, **extra: Any) -> dict[str, Any]:
    example = torch.from_numpy(splits.test.x[:1])
    stats = model_stats(module, example)
    return {"name": name, "accuracy": accuracy(module, splits.test), **stats.to_dict(),
            "latency_ms": round(eager_latency_ms(module, example), 4), "runtime": "pytorch eager fp32, 1 thread", **extra}


def _data_source(config: BuildConfig, source: SourceModel) -> Splits:
    if config.data is None:
        raise ConfigError("compression needs labelled training data", "add --data digits|DIR|FILE.npz")
    return load_labelled_data(config.data, data_preprocess(source), config.seed)


def data_preprocess(source: SourceModel) -> PreprocessSpec | None:
    """How image folders become this model's inputs: resized to its input size, RGB for 3 channels."""
    shape = next(iter(source.input_shapes.values()))
    return PreprocessSpec(resize=(shape[2], shape[3]), color="rgb" if shape[1] == 3 else "grayscale") if len(shape) == 4 else None


def _with_labels(splits: Splits, teacher: nn.Module, alpha: float) -> Splits:
    """Unlabelled data gets the teacher's top-1 as labels (accuracy then means agreement); alpha > 0 needs real ones."""
    if has_labels(splits.train):
        return splits
    if alpha > 0:
        raise DistillationError(
            f"the training data has no labels (y) but distill_alpha={alpha} weights a hard-label loss",
            "add y to the .npz, or pass --distill-alpha 0 to learn from the teacher's outputs only",
        )
    return Splits(*(teacher_labels(teacher, part) for part in (splits.train, splits.val, splits.test)))


def _save_module(module: nn.Module, path: Path) -> None:
    """A state_dict only: no pickled code, so the build's own students load with weights_only=True too."""
    with atomic_path(path) as tmp:
        torch.save(module.state_dict(), tmp)


def _load_module(path: Path, architecture: nn.Module) -> nn.Module:
    """The saved weights in a copy of `architecture` (the model before pruning), its layers resized to them."""
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    return load_resized(copy.deepcopy(architecture), state_dict).eval()


@dataclass
class _Teacher:
    """The teacher with its content hash and (computed once, on first need) its training-set logits."""

    module: nn.Module
    hash: str
    splits: Splits
    _logits: torch.Tensor | None = None

    @property
    def logits(self) -> torch.Tensor:
        if self._logits is None:
            self._logits = predict(self.module, self.splits.train.x)
        return self._logits


def _distill_step(teacher: _Teacher, student_spec: str, splits: Splits, config: BuildConfig, out: Path,
                  data_hash: str) -> tuple[nn.Module, dict[str, Any]]:
    example = torch.from_numpy(splits.train.x[:1])
    with torch.no_grad():
        num_classes = teacher.module.eval()(example).shape[1]
    train = TrainConfig(epochs=config.epochs, batch_size=32, lr=1e-2, seed=config.seed, patience=max(3, config.epochs // 2))
    options = DistillConfig(config.distill_alpha, config.distill_temperature, parse_feature_pairs(config.distill_features))
    key = {"stage": f"{STAGE_VERSION}-distill", "teacher": teacher.hash, "data": data_hash, "student": student_spec,
           "train": train.__dict__, "distill": options.__dict__}

    def fresh_student() -> nn.Module:
        torch.manual_seed(config.seed)
        return load_model(student_spec, num_classes=num_classes, in_channels=example.shape[1])

    def produce(path: Path) -> dict[str, Any]:
        student = fresh_student()
        logits = None if options.feature_pairs or not has_labels(splits.train) else teacher.logits
        result = distill(student, teacher.module, splits.train, splits.val, train, options, teacher_logits=logits)
        _save_module(student, path)
        return {"val_accuracy": result.best_val_accuracy, "epochs_run": result.epochs_run}

    record, reused = cached_artifact(out / "student.distilled.pt", key, produce)
    info(f"distill: {'reused' if reused else 'trained'} {student_spec} (val {record['val_accuracy']:.2f}%)")
    return _load_module(out / "student.distilled.pt", fresh_student()), {"distill": {**options.__dict__, **record}}


# Fine-tuning starts from a converged student: a third of the training rate keeps what it knows (on the example,
# 1e-2 lost 1.4 points of held-out top-1 after pruning, 3e-3 lost 0.6).
FINETUNE_LR = 3e-3


def _gate_step(student: nn.Module, teacher: _Teacher, method: PruneMethod, splits: Splits, config: BuildConfig, out: Path,
               data_hash: str) -> tuple[nn.Module, dict[str, Any]]:
    budget = 1.0 if config.max_accuracy_drop is None else config.max_accuracy_drop
    gate = GateConfig(method, config.prune_ratio, config.prune_steps, budget, config.channel_importance,
                      TrainConfig(config.finetune_epochs, batch_size=32, lr=FINETUNE_LR, seed=config.seed,
                                  patience=config.finetune_epochs),
                      DistillConfig(config.distill_alpha, config.distill_temperature))
    key = {"stage": f"{STAGE_VERSION}-prune", "student": module_hash(student), "teacher": teacher.hash,
           "data": data_hash, "gate": {**gate.__dict__, "finetune": gate.finetune.__dict__, "distill": gate.distill.__dict__}}

    def produce(path: Path) -> dict[str, Any]:
        logits = teacher.logits if has_labels(splits.train) else None
        result = compress_with_gate(copy.deepcopy(student), teacher.module, splits, gate, logits)
        _save_module(result.model, path)
        return result.to_dict()

    record, reused = cached_artifact(out / "student.pt", key, produce)
    info(f"prune ({method}): {'reused' if reused else 'ran'} the gate: {record['stopped']}")
    return _load_module(out / "student.pt", student), {"gate": {"method": method, "target_ratio": config.prune_ratio,
                                                        "max_accuracy_drop": budget, **record}}


def compress_stage(source: SourceModel, config: BuildConfig) -> Compression | None:
    """Distil and/or prune the source model; None when compression is off."""
    student_spec, prune = resolved_choices(config)
    if student_spec is None and prune == "none":
        return None
    if source.is_onnx or not isinstance(source.module, nn.Module) or isinstance(source.module, torch.jit.ScriptModule):
        raise ConfigError(
            f"compression (--student/--prune) needs a PyTorch nn.Module, not '{config.model}'",
            "pass --model package.module:factory --weights FILE, or drop --student/--prune",
        )
    splits = _data_source(config, source)
    module = (load_model(config.teacher) if config.teacher else source.module).eval()
    splits = _with_labels(splits, module, config.distill_alpha)
    teacher, data_hash = _Teacher(module, module_hash(module), splits), splits_hash(splits)
    out = config.out / "compress"
    stages = [stage_entry("teacher", module, splits, model=config.teacher or source.name)]
    record: dict[str, Any] = {"data": config.data, "stages": stages}
    module = copy.deepcopy(module)
    if student_spec is not None:
        module, extra = _distill_step(teacher, student_spec, splits, config, out, data_hash)
        record.update(extra)
        stages.append(stage_entry("student", module, splits, model=student_spec))
    if prune != "none":
        module, extra = _gate_step(module, teacher, prune, splits, config, out, data_hash)
        record.update(extra)
        stages.append(stage_entry("pruned", module, splits, model=f"{student_spec or source.name} ({prune})"))
    return Compression(module.eval(), splits, record)


def compression_report(record: dict[str, Any], target: str, runtime: str, accuracy: float | None, size_bytes: int,
                       latency_ms_p50: float | None) -> dict[str, Any]:
    """report.json's `compression`: the torch stages plus this target's engine (its `runtime`) as the last stage."""
    last = record["stages"][-1]
    engine = {"name": "engine", "accuracy": accuracy, "params": last["params"],
              "nonzero_params": last["nonzero_params"], "flops": last["flops"],
              "size_bytes": size_bytes, "latency_ms": latency_ms_p50, "runtime": runtime, "model": target}
    return {**record, "stages": [*record["stages"], engine]}
