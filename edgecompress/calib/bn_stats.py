"""BatchNorm statistics seen in a forward pass next to the ones each layer stored: what data-free synthesis
matches and what the calibration diagnostics compare (a leaf, so both can use it)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn


@dataclass(frozen=True)
class BatchNormStats:
    """Per-channel statistics one BN layer saw in a forward pass, next to the ones it stored."""

    name: str
    batch_mean: torch.Tensor
    batch_var: torch.Tensor
    running_mean: torch.Tensor
    running_var: torch.Tensor

    def loss(self) -> torch.Tensor:
        """ZeroQ's statistic loss: L2 distance of means plus L2 distance of variances."""
        return torch.linalg.vector_norm(self.batch_mean - self.running_mean) + torch.linalg.vector_norm(
            self.batch_var - self.running_var
        )


def batchnorm_layers(model: nn.Module) -> list[tuple[str, nn.modules.batchnorm._BatchNorm]]:
    """BatchNorm layers that carry running statistics (the only ones data-free can match)."""
    return [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is not None
    ]


@contextlib.contextmanager
def record_batchnorm_inputs(model: nn.Module) -> Iterator[list[BatchNormStats]]:
    """While active, every forward pass appends each BN layer's input statistics (in call order)."""
    records: list[BatchNormStats] = []

    def hook_for(name: str):
        def hook(module: nn.modules.batchnorm._BatchNorm, inputs: tuple[torch.Tensor, ...], _output) -> None:
            x = inputs[0]
            dims = [d for d in range(x.dim()) if d != 1]
            records.append(
                BatchNormStats(
                    name,
                    x.mean(dim=dims),
                    x.var(dim=dims, unbiased=False),
                    module.running_mean.detach(),
                    module.running_var.detach(),
                )
            )

        return hook

    handles = [module.register_forward_hook(hook_for(name)) for name, module in batchnorm_layers(model)]
    try:
        yield records
    finally:
        for handle in handles:
            handle.remove()
