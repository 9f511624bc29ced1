"""The built-in example: a ResNet-style teacher trained on the digits data, cached after first use.

Training is seeded and single-threaded-deterministic, so the cached checkpoint is
keyed by the training recipe and the package version: a changed recipe retrains.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from edgecompress import __version__
from edgecompress.artifacts import atomic_path, sha256_json
from edgecompress.compress.trainer import TrainConfig, accuracy, fit
from edgecompress.data import digits_splits
from edgecompress.zoo import build_model

EXAMPLE_MODEL = "resnet18-digits"
EXAMPLE_TRAINING = TrainConfig(epochs=5, batch_size=64, lr=4e-3, seed=0, patience=3)


def cache_dir() -> Path:
    root = os.environ.get("EDGECOMPRESS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "edgecompress"
    )
    return Path(root)


def example_teacher(retrain: bool = False) -> nn.Module:
    """The trained digits teacher, from cache when its recipe has been trained before."""
    key = sha256_json({"model": EXAMPLE_MODEL, "training": EXAMPLE_TRAINING.__dict__, "version": __version__})[:16]
    checkpoint = cache_dir() / f"{EXAMPLE_MODEL}-{key}.pt"
    model = build_model(EXAMPLE_MODEL)
    if checkpoint.is_file() and not retrain:
        model.load_state_dict(torch.load(checkpoint, weights_only=True))
        return model.eval()
    splits = digits_splits()
    fit(model, splits.train, splits.val, EXAMPLE_TRAINING, description="training digits teacher")
    with atomic_path(checkpoint) as tmp:
        torch.save(model.state_dict(), tmp)
    return model.eval()


def example_teacher_accuracy(model: nn.Module) -> float:
    return accuracy(model, digits_splits().test)
