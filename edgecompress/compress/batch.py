"""One training batch and the loss signature every training loop takes (a leaf: the trainer, distillation and
the data-parallel helpers all use it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class Batch:
    """One training batch; `indices` are the samples' positions in the training set (for cached targets)."""

    inputs: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor


# loss(student_logits, batch) -> scalar tensor
LossFn = Callable[[torch.Tensor, Batch], torch.Tensor]
