"""The accuracy gate: prune step by step, fine-tune, and stop before the budget breaks.

Each step removes more (cumulative ratio), fine-tunes the candidate with distillation
from the teacher (plain cross-entropy when there is none) and evaluates it on the
validation split. The first step whose top-1 falls more than `max_accuracy_drop` points
below the reference is rejected and compression stops there, keeping the last accepted
(smallest within budget) model. Every step is recorded so the report can say what was
tried, where it stopped and why.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from edgecompress.compress.channels import prune_channels
from edgecompress.compress.distill import DistillConfig, distill, predict
from edgecompress.compress.measure import model_stats
from edgecompress.compress.prune import check_ratio, make_permanent, prune_unstructured
from edgecompress.compress.sources import has_labels
from edgecompress.compress.trainer import TrainConfig, accuracy, fit
from edgecompress.source.data import DigitsSplits as Splits
from edgecompress.core.errors import ConfigError

PruneMethod = Literal["none", "magnitude", "taylor", "channels"]
PRUNE_METHODS = ("none", "magnitude", "taylor", "channels")


@dataclass(frozen=True)
class GateConfig:
    method: PruneMethod = "channels"
    target_ratio: float = 0.5  # the most to remove: fraction of weights (unstructured) or channels (structured)
    steps: int = 2
    max_accuracy_drop: float = 1.0  # points of top-1 below the reference (the teacher, else the input model)
    channel_importance: Literal["l1", "taylor"] = "l1"
    finetune: TrainConfig = TrainConfig(epochs=2, patience=2)
    distill: DistillConfig = DistillConfig()

    def __post_init__(self) -> None:
        if self.method not in PRUNE_METHODS:
            raise ConfigError(f"unknown prune method '{self.method}'", f"use one of: {', '.join(PRUNE_METHODS)}")
        check_ratio(self.target_ratio)
        if self.steps < 1:
            raise ConfigError(f"prune steps {self.steps} must be at least 1", "use 1 for one-shot pruning")
        if self.max_accuracy_drop < 0:
            raise ConfigError(f"max_accuracy_drop {self.max_accuracy_drop} is negative", "pass points of top-1, e.g. 1.0")


@dataclass
class GateStep:
    step: int
    ratio: float
    val_accuracy: float
    drop: float
    params: int
    nonzero_params: int
    flops: int
    accepted: bool

    def to_dict(self) -> dict[str, Any]:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}


@dataclass
class GateResult:
    model: nn.Module
    reference_accuracy: float
    steps: list[GateStep] = field(default_factory=list)
    stopped: str = ""
    within_budget: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"reference_val_accuracy": round(self.reference_accuracy, 4), "steps": [s.to_dict() for s in self.steps],
                "stopped": self.stopped, "within_budget": self.within_budget}


def step_ratio(config: GateConfig, step: int) -> float:
    """Cumulative fraction removed after `step` of `config.steps` (geometric for channels, which compound)."""
    if config.method == "channels":
        return 1.0 - (1.0 - config.target_ratio) ** (step / config.steps)
    return config.target_ratio * step / config.steps


def _prune_step(model: nn.Module, config: GateConfig, step: int, splits: Splits, example: torch.Tensor) -> None:
    if config.method == "channels":
        # each step removes the same fraction of what is left, so the product reaches the target
        per_step = 1.0 - (1.0 - config.target_ratio) ** (1.0 / config.steps)
        prune_channels(model, example, per_step, config.channel_importance, splits.train)
    elif config.method != "none":  # compress_with_gate stops before any step for "none"
        prune_unstructured(model, step_ratio(config, step), config.method, "global", splits.train)


def _finetune(model: nn.Module, teacher: nn.Module | None, splits: Splits, config: GateConfig, step: int,
              teacher_logits: torch.Tensor | None) -> None:
    description = f"fine-tuning prune step {step}"
    if teacher is not None:
        distill(model, teacher, splits.train, splits.val, config.finetune, config.distill, description=description,
                teacher_logits=teacher_logits)
    else:
        fit(model, splits.train, splits.val, config.finetune, description=description)


def _record(model: nn.Module, step: int, ratio: float, reference: float, splits: Splits, example: torch.Tensor,
            budget: float) -> GateStep:
    val_accuracy = accuracy(model, splits.val)
    stats = model_stats(model, example)
    drop = reference - val_accuracy
    return GateStep(step, ratio, val_accuracy, drop, stats.params, stats.nonzero_params, stats.flops, drop <= budget)


def compress_with_gate(
    student: nn.Module, teacher: nn.Module | None, splits: Splits, config: GateConfig = GateConfig(),
    teacher_logits: torch.Tensor | None = None,
) -> GateResult:
    """Prune `student` iteratively within the accuracy budget; returns the smallest accepted model.

    `teacher_logits` (the teacher on `splits.train.x`) saves the teacher pass when the caller has it.
    """
    example = torch.from_numpy(splits.train.x[:1])
    reference = accuracy(teacher if teacher is not None else student, splits.val)
    current = student
    result = GateResult(current, reference)
    result.steps.append(_record(current, 0, 0.0, reference, splits, example, config.max_accuracy_drop))
    if not result.steps[0].accepted:
        result.within_budget = False
        result.stopped = (f"the unpruned model is already {result.steps[0].drop:.2f} points below the reference "
                          f"(budget {config.max_accuracy_drop}); nothing was pruned")
        return result
    if config.method == "none" or config.target_ratio == 0:
        result.stopped = "pruning is off"
        return result
    if teacher_logits is None and teacher is not None and has_labels(splits.train):
        teacher_logits = predict(teacher, splits.train.x)
    for step in range(1, config.steps + 1):
        candidate = copy.deepcopy(current)
        _prune_step(candidate, config, step, splits, example)
        _finetune(candidate, teacher, splits, config, step, teacher_logits)
        record = _record(candidate, step, step_ratio(config, step), reference, splits, example, config.max_accuracy_drop)
        result.steps.append(record)
        if not record.accepted:
            result.stopped = (f"step {step} (ratio {record.ratio:.2f}) lost {record.drop:.2f} points > budget "
                              f"{config.max_accuracy_drop}; kept step {step - 1}")
            break
        current = candidate
    else:
        result.stopped = f"reached the target ratio {config.target_ratio} within the budget"
    result.model = make_permanent(current).eval()
    return result
