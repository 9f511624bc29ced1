"""Size and cost of a PyTorch model: parameters, non-zero parameters, FLOPs, serialized bytes.

FLOPs count 2 x multiply-accumulates of convs and linears for one sample (batch 1),
the part that dominates CNN inference; elementwise ops are left out on purpose so the
figure is stable across export and fusion. Zeros from unstructured pruning are not
subtracted: a dense engine still computes them (that is what `nonzero_params` shows).
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ModelStats:
    params: int
    nonzero_params: int
    flops: int
    size_bytes: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def count_flops(model: nn.Module, example: torch.Tensor) -> int:
    """2 x MACs of every conv and linear for one sample, measured by forward hooks."""
    total = 0

    def hook(module: nn.Module, _inputs, output: torch.Tensor) -> None:
        nonlocal total
        per_sample_outputs = output[0].numel()
        if isinstance(module, nn.Linear):
            total += 2 * per_sample_outputs * module.in_features
        elif isinstance(module, nn.modules.conv._ConvNd):
            kernel = module.weight[0].numel()  # in_channels / groups x kernel area
            total += 2 * per_sample_outputs * kernel

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example[:1])
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return int(total)


def state_dict_bytes(model: nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()


def model_stats(model: nn.Module, example: torch.Tensor) -> ModelStats:
    params = [p.detach() for p in model.parameters()]
    return ModelStats(
        params=sum(p.numel() for p in params),
        nonzero_params=sum(int(p.count_nonzero()) for p in params),
        flops=count_flops(model, example),
        size_bytes=state_dict_bytes(model),
    )
