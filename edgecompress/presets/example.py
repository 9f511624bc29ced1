"""The built-in example: a ResNet-style teacher trained on the digits data, cached after first use; its options
are the preset `core.config.EXAMPLE_OPTIONS`.

Training is seeded and single-threaded-deterministic, so the cached checkpoint is
keyed by the training recipe and the package version: a changed recipe retrains.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from edgecompress import __version__
from edgecompress.core.artifacts import atomic_path, sha256_json
from edgecompress.core.cache import cache_dir
from edgecompress.compress.trainer import TrainConfig, accuracy, fit
from edgecompress.source.data import DIGITS_INPUT_NAME, DIGITS_LABELS, DIGITS_SIZE, digits_splits
from edgecompress.core.config import EXAMPLE_NAME
from edgecompress.source.model import SourceModel, load_source_model
from edgecompress.source.zoo import build_model

EXAMPLE_MODEL = "resnet18-digits"
EXAMPLE_TRAINING = TrainConfig(epochs=5, batch_size=64, lr=4e-3, seed=0, patience=3)


def example_teacher(retrain: bool = False) -> nn.Module:
    """The trained digits teacher, from cache when its recipe has been trained before."""
    key = sha256_json({"model": EXAMPLE_MODEL, "training": EXAMPLE_TRAINING.__dict__, "version": __version__,
                       "init": "seeded"})[:16]
    checkpoint = cache_dir() / f"{EXAMPLE_MODEL}-{key}.pt"
    torch.manual_seed(EXAMPLE_TRAINING.seed)  # the initial weights too: an unseeded init made each machine's teacher differ
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


def example_source() -> SourceModel:
    """The built-in example as a model source: the trained digits teacher, its input and labels."""
    module = example_teacher()
    return SourceModel(
        name=EXAMPLE_NAME,
        content_hash=sha256_json({"example": EXAMPLE_MODEL, "training": EXAMPLE_TRAINING.__dict__}),
        module=module,
        input_shapes={DIGITS_INPUT_NAME: (1, 1, DIGITS_SIZE, DIGITS_SIZE)},
        labels=DIGITS_LABELS,
    )


def load_model_or_example(
    model: str | None, weights: Path | None, input_shape: list[str], pooling: str = "auto"
) -> SourceModel:
    """`--model` as given, or the built-in example when there is none."""
    if model is None or model == EXAMPLE_NAME:
        return example_source()
    return load_source_model(model, weights, input_shape, pooling)
