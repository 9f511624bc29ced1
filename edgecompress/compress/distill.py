"""Knowledge distillation: a small student learns from a teacher's soft outputs and features.

The loss plugs into `trainer.fit`, so distillation gets the same progress bar, early
stopping, best-checkpoint keeping, resume and data parallelism as plain training:

    alpha * CE(student, labels) + (1 - alpha) * T^2 * KL(softmax(teacher / T) || softmax(student / T))
    + feature_weight * sum MSE(adapter(student_layer), teacher_layer)

alpha = 1 is hard labels only, alpha = 0 soft targets only (then labels are optional).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from edgecompress.compress.sources import has_labels
from edgecompress.compress.batch import Batch
from edgecompress.compress.trainer import TrainConfig, TrainResult, fit
from edgecompress.source.data import LabelledArrays
from edgecompress.core.errors import DistillationError


@dataclass(frozen=True)
class DistillConfig:
    alpha: float = 0.5  # weight of the hard-label loss; 1 - alpha goes to the teacher's soft targets
    temperature: float = 4.0
    feature_pairs: tuple[tuple[str, str], ...] = ()  # (student layer, teacher layer) module names
    feature_weight: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise DistillationError(f"alpha {self.alpha} is outside [0, 1]", "1 = labels only, 0 = teacher only")
        if self.temperature <= 0:
            raise DistillationError(f"temperature {self.temperature} must be positive", "typical values are 2 to 8")
        if self.feature_weight < 0:
            raise DistillationError(f"feature_weight {self.feature_weight} is negative", "use 0 to switch it off")


def kd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor | None, alpha: float, temperature: float
) -> torch.Tensor:
    """Hinton's distillation loss; the T^2 keeps soft-target gradients on the scale of the hard ones."""
    loss = student_logits.new_zeros(())
    if alpha > 0:
        if labels is None:
            raise DistillationError("the hard-label part of distillation (alpha > 0) needs labels",
                                    "pass labelled data, or set distill_alpha to 0 to learn from the teacher alone")
        loss = loss + alpha * F.cross_entropy(student_logits, labels)
    if alpha < 1:
        soft = F.kl_div(
            F.log_softmax(student_logits / temperature, dim=1),
            F.log_softmax(teacher_logits / temperature, dim=1),
            reduction="batchmean",
            log_target=True,
        )
        loss = loss + (1 - alpha) * temperature**2 * soft
    return loss


def named_module(model: nn.Module, name: str, role: str) -> nn.Module:
    modules = dict(model.named_modules())
    if name not in modules:
        close = difflib.get_close_matches(name, [n for n in modules if n], n=3)
        hint = f"did you mean {', '.join(close)}?" if close else "list them with [n for n, _ in model.named_modules()]"
        raise DistillationError(f"the {role} has no layer named '{name}'", hint)
    return modules[name]


class FeatureTap:
    """Keeps the latest output of chosen layers through forward hooks."""

    def __init__(self, model: nn.Module, names: list[str], role: str) -> None:
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles = [named_module(model, name, role).register_forward_hook(self._keep(name)) for name in names]

    def _keep(self, name: str):
        def hook(_module: nn.Module, _inputs, output: torch.Tensor) -> None:
            self.outputs[name] = output

        return hook

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


def make_adapter(student_feature: torch.Tensor, teacher_feature: torch.Tensor) -> nn.Module:
    """A learned 1x1 projection from the student's channels to the teacher's (identity when equal)."""
    s_channels, t_channels = student_feature.shape[1], teacher_feature.shape[1]
    if student_feature.dim() != teacher_feature.dim() or student_feature.dim() not in (2, 4):
        raise DistillationError(
            f"feature shapes {tuple(student_feature.shape)} and {tuple(teacher_feature.shape)} cannot be matched",
            "pick two conv outputs (N, C, H, W) or two vector outputs (N, C)",
        )
    if s_channels == t_channels:
        return nn.Identity()
    if student_feature.dim() == 4:
        return nn.Conv2d(s_channels, t_channels, 1, bias=False)
    return nn.Linear(s_channels, t_channels, bias=False)


class DistillationLoss:
    """`fit`-compatible loss; adapters are trained with the student.

    Without feature pairs the teacher's logits over the whole training set are computed
    once up front (the teacher is frozen and usually the costliest model in the loop);
    with feature pairs the teacher runs on each batch so its hooked layers are fresh.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, config: DistillConfig, train: LabelledArrays,
                 teacher_logits: torch.Tensor | None = None) -> None:
        self.teacher, self.config = teacher.eval(), config
        example = torch.from_numpy(train.x[:2])
        self.student_tap = FeatureTap(student, [s for s, _ in config.feature_pairs], "student")
        self.teacher_tap = FeatureTap(teacher, [t for _, t in config.feature_pairs], "teacher")
        with torch.no_grad():
            student_out, teacher_out = student.eval()(example), teacher(example)
        if student_out.shape[1:] != teacher_out.shape[1:]:
            self.close()
            raise DistillationError(
                f"student outputs {tuple(student_out.shape[1:])} but teacher outputs {tuple(teacher_out.shape[1:])}",
                "build the student with the teacher's number of classes",
            )
        self.adapters = nn.ModuleList(
            make_adapter(self.student_tap.outputs[s], self.teacher_tap.outputs[t]) for s, t in config.feature_pairs
        )
        if config.feature_pairs:
            self.cached_logits = None
        else:
            self.cached_logits = teacher_logits if teacher_logits is not None else predict(teacher, train.x)

    def __call__(self, student_logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        if self.cached_logits is not None:
            teacher_logits = self.cached_logits[batch.indices]
        else:
            with torch.no_grad():
                teacher_logits = self.teacher(batch.inputs)
        loss = kd_loss(student_logits, teacher_logits, batch.labels, self.config.alpha, self.config.temperature)
        for adapter, (s_name, t_name) in zip(self.adapters, self.config.feature_pairs):
            student_feature = adapter(self.student_tap.outputs[s_name])
            teacher_feature = self.teacher_tap.outputs[t_name]
            if student_feature.dim() == 4 and student_feature.shape[2:] != teacher_feature.shape[2:]:
                student_feature = F.adaptive_avg_pool2d(student_feature, (teacher_feature.shape[2], teacher_feature.shape[3]))
            loss = loss + self.config.feature_weight * F.mse_loss(student_feature, teacher_feature)
        return loss

    def close(self) -> None:
        self.student_tap.close()
        self.teacher_tap.close()


@torch.no_grad()
def predict(model: nn.Module, x: np.ndarray, batch_size: int = 256) -> torch.Tensor:
    """Eval-mode outputs for a whole array, in batches."""
    model.eval()
    return torch.cat([model(torch.from_numpy(x[i : i + batch_size])) for i in range(0, len(x), batch_size)])


def teacher_labels(teacher: nn.Module, data: LabelledArrays) -> LabelledArrays:
    """The teacher's top-1 as labels, so unlabelled data still has a validation signal (agreement)."""
    return LabelledArrays(data.x, predict(teacher, data.x).argmax(1).numpy().astype(np.int64))


def distill(
    student: nn.Module,
    teacher: nn.Module,
    train: LabelledArrays,
    val: LabelledArrays,
    train_config: TrainConfig = TrainConfig(),
    config: DistillConfig = DistillConfig(),
    checkpoint: Path | None = None,
    description: str = "distilling student",
    teacher_logits: torch.Tensor | None = None,
) -> TrainResult:
    """Train `student` in place from `teacher`; returns the trainer's result (best validation weights kept).

    `teacher_logits` (the teacher's outputs on `train.x`) lets repeated fine-tunes share one teacher pass.
    """
    if not has_labels(train):
        if config.alpha > 0:
            raise DistillationError(
                f"the training data has no labels but alpha={config.alpha} weights a hard-label loss",
                "add y to the data, or set alpha = 0 to learn from the teacher's outputs only",
            )
        train, val = teacher_labels(teacher, train), teacher_labels(teacher, val)
    loss = DistillationLoss(student, teacher, config, train, teacher_logits)
    try:
        return fit(student, train, val, train_config, loss, description, extra_modules=loss.adapters, checkpoint=checkpoint)
    finally:
        loss.close()
