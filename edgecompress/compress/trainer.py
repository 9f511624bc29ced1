"""A small, deterministic classifier trainer used for teachers, students and fine-tuning.

The loss is a parameter (plain cross-entropy by default), so distillation and
fine-tuning reuse one loop instead of copies of it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from edgecompress.data import LabelledArrays

# loss(student_logits, labels, inputs) -> scalar tensor
LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 8
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0
    patience: int = 3  # epochs without validation improvement before stopping early


@dataclass
class TrainResult:
    best_val_accuracy: float
    epochs_run: int
    history: list[dict[str, float]]


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


def cross_entropy_loss(logits: torch.Tensor, labels: torch.Tensor, _inputs: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(logits, labels)


@torch.no_grad()
def accuracy(model: nn.Module, data: LabelledArrays, batch_size: int = 256) -> float:
    """Top-1 accuracy in percent."""
    model.eval()
    correct = 0
    for start in range(0, len(data), batch_size):
        logits = model(torch.from_numpy(data.x[start : start + batch_size]))
        correct += int((logits.argmax(1).numpy() == data.y[start : start + batch_size]).sum())
    return 100.0 * correct / max(1, len(data))


def fit(
    model: nn.Module,
    train: LabelledArrays,
    val: LabelledArrays,
    config: TrainConfig = TrainConfig(),
    loss_fn: LossFn = cross_entropy_loss,
    description: str = "training",
    extra_parameters: list[nn.Parameter] | None = None,
) -> TrainResult:
    """Train with AdamW + cosine schedule; keep the weights of the best validation epoch."""
    from edgecompress.progress import progress_bar

    seed_everything(config.seed)
    parameters = list(model.parameters()) + list(extra_parameters or [])
    optimizer = torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = max(1, int(np.ceil(len(train) / config.batch_size)))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=config.epochs * steps_per_epoch
    )
    generator = torch.Generator().manual_seed(config.seed)
    x_all, y_all = torch.from_numpy(train.x), torch.from_numpy(train.y)
    best_accuracy, best_state, stale, history = -1.0, None, 0, []
    with progress_bar() as progress:
        task = progress.add_task(description, total=config.epochs)
        for epoch in range(config.epochs):
            model.train()
            order = torch.randperm(len(train), generator=generator)
            total_loss = 0.0
            for start in range(0, len(train), config.batch_size):
                index = order[start : start + config.batch_size]
                inputs, labels = x_all[index], y_all[index]
                loss = loss_fn(model(inputs), labels, inputs)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                scheduler.step()
                total_loss += float(loss.detach()) * len(index)
            val_accuracy = accuracy(model, val)
            history.append({"epoch": epoch + 1, "loss": total_loss / len(train), "val_accuracy": val_accuracy})
            progress.update(
                task, advance=1, description=f"{description} loss {total_loss / len(train):.3f} val {val_accuracy:.1f}%"
            )
            if val_accuracy > best_accuracy:
                best_accuracy, best_state, stale = val_accuracy, copy.deepcopy(model.state_dict()), 0
            else:
                stale += 1
                if stale >= config.patience:
                    break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return TrainResult(best_accuracy, len(history), history)
