"""A small, deterministic classifier trainer used for teachers, students and fine-tuning.

The loss is a parameter (plain cross-entropy by default), so distillation and
fine-tuning reuse one loop instead of copies of it. The same loop resumes from a
checkpoint, keeps the best validation weights on disk, and runs data-parallel when
launched under `torchrun` (see `edgecompress.compress.parallel`).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgecompress.core.artifacts import atomic_path, sha256_json
from edgecompress.source.data import LabelledArrays
from edgecompress.compress import parallel
from edgecompress.compress.batch import Batch, LossFn
from edgecompress.core.errors import TrainingError



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
    resumed_from_epoch: int = 0


@dataclass
class _LoopState:
    """Everything a resumed run needs to continue exactly where the last one stopped."""

    epoch: int = 0
    best_accuracy: float = -1.0
    best_state: dict[str, Any] | None = None
    stale: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


def cross_entropy_loss(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    return nn.functional.cross_entropy(logits, batch.labels)


@torch.no_grad()
def accuracy(model: nn.Module, data: LabelledArrays, batch_size: int = 256) -> float:
    """Top-1 accuracy in percent."""
    model.eval()
    correct = 0
    for start in range(0, len(data), batch_size):
        logits = model(torch.from_numpy(data.x[start : start + batch_size]))
        correct += int((logits.argmax(1).numpy() == data.y[start : start + batch_size]).sum())
    return 100.0 * correct / max(1, len(data))


def best_checkpoint_path(checkpoint: Path) -> Path:
    """Where `fit` keeps the best validation weights next to its resume checkpoint."""
    return checkpoint.with_name(f"{checkpoint.stem}.best{checkpoint.suffix}")


def _run_key(model: nn.Module, config: TrainConfig, train: LabelledArrays) -> str:
    """Identifies a run so a checkpoint is never resumed into a different model or recipe."""
    shapes = {name: list(tensor.shape) for name, tensor in model.state_dict().items()}
    return sha256_json({"config": asdict(config), "shapes": shapes, "train": [len(train), list(train.x.shape[1:])]})


def _save_checkpoint(path: Path, key: str, state: _LoopState, trainables: nn.Module, optimizer, scheduler, generator) -> None:
    payload = {
        "key": key,
        "loop": asdict(state),
        "trainables": trainables.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "generator": generator.get_state(),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def _load_checkpoint(path: Path, key: str, trainables: nn.Module, optimizer, scheduler, generator) -> _LoopState:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("key") != key:
        raise TrainingError(
            f"checkpoint {path} was written by a different model, data or training recipe",
            "delete it to start afresh, or resume with the same model and options",
        )
    trainables.load_state_dict(payload["trainables"])
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    generator.set_state(payload["generator"])
    return _LoopState(**payload["loop"])


class _Trainables(nn.Module):
    """The model plus the loss's own learned modules (e.g. feature adapters): one optimizer, one DDP wrapper."""

    def __init__(self, model: nn.Module, extra: nn.Module | None) -> None:
        super().__init__()
        self.model = model
        self.extra = extra if extra is not None else nn.ModuleList()

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.model(inputs)


@torch.enable_grad()  # training works whatever the caller's grad mode (fit called under torch.no_grad() failed)
def _train_epoch(network: nn.Module, batches, loss_fn: LossFn, optimizer, scheduler) -> float:
    """One pass over the (local shard of the) data; returns the summed loss over the global batches."""
    network.train()
    total = 0.0
    for batch, weight in batches:
        loss = loss_fn(network(batch.inputs), batch) * weight
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        total += float(loss.detach())
    return total


def fit(
    model: nn.Module,
    train: LabelledArrays,
    val: LabelledArrays,
    config: TrainConfig = TrainConfig(),
    loss_fn: LossFn = cross_entropy_loss,
    description: str = "training",
    extra_modules: nn.Module | None = None,
    checkpoint: Path | None = None,
) -> TrainResult:
    """Train with AdamW + one-cycle schedule; keep the weights of the best validation epoch.

    With `checkpoint`, the loop state is saved after every epoch (atomically) and an
    existing checkpoint of the same run is resumed, so an interrupted run continues
    and ends with the same weights; the best weights are kept in `best_checkpoint_path`.
    Under an initialized `torch.distributed` process group each rank trains on its
    share of every global batch, so the result matches one process up to float noise.
    """
    from edgecompress.core.progress import progress_bar

    seed_everything(config.seed)
    trainables = _Trainables(model, extra_modules)
    optimizer = torch.optim.AdamW(trainables.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = max(1, int(np.ceil(len(train) / config.batch_size)))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=config.epochs * steps_per_epoch
    )
    generator = torch.Generator().manual_seed(config.seed)
    key = _run_key(model, config, train)
    state = _LoopState()
    if checkpoint is not None and Path(checkpoint).is_file():
        state = _load_checkpoint(Path(checkpoint), key, trainables, optimizer, scheduler, generator)
    resumed_from = state.epoch
    with parallel.data_parallel(trainables) as network, progress_bar() as progress:
        task = progress.add_task(description, total=config.epochs, completed=state.epoch)
        while state.epoch < config.epochs and state.stale < config.patience:
            order = torch.randperm(len(train), generator=generator)
            batches = parallel.local_batches(train, order, config.batch_size)
            total_loss = _train_epoch(network, batches, loss_fn, optimizer, scheduler)
            val_accuracy = accuracy(model, val)
            state.epoch += 1
            state.history.append({"epoch": state.epoch, "loss": total_loss / steps_per_epoch, "val_accuracy": val_accuracy})
            if val_accuracy > state.best_accuracy:
                state.best_accuracy, state.best_state, state.stale = val_accuracy, copy.deepcopy(model.state_dict()), 0
                if checkpoint is not None and parallel.is_main_process():
                    with atomic_path(best_checkpoint_path(Path(checkpoint))) as tmp:
                        torch.save(state.best_state, tmp)
            else:
                state.stale += 1
            if checkpoint is not None and parallel.is_main_process():
                _save_checkpoint(Path(checkpoint), key, state, trainables, optimizer, scheduler, generator)
            progress.update(
                task, advance=1,
                description=f"{description} epoch {state.epoch} loss {total_loss / steps_per_epoch:.3f} val {val_accuracy:.1f}%",
            )
    if state.best_state is not None:
        model.load_state_dict(state.best_state)
    model.eval()
    return TrainResult(state.best_accuracy, len(state.history), state.history, resumed_from)
