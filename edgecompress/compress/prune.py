"""Unstructured pruning: zero the least important weights of convs and linears.

Magnitude (|w|) or first-order Taylor (|w * dL/dw|) importance, ranked over the whole
model (`global`) or layer by layer (`layer`), through `torch.nn.utils.prune`. Masks stay
attached while fine-tuning so pruned weights stay zero; `make_permanent` bakes them in
before export. Zeros alone do not make a dense engine faster (see `channels.py`); they
shrink compressed size and feed sparse kernels where a runtime has them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from edgecompress.source.data import LabelledArrays
from edgecompress.core.errors import PruningError

PRUNABLE = (nn.Conv2d, nn.Linear)
PrunableLayer = nn.Conv2d | nn.Linear
Importance = Literal["magnitude", "taylor"]
Scope = Literal["global", "layer"]


def check_ratio(ratio: float) -> float:
    if not 0.0 <= ratio < 1.0:
        raise PruningError(f"pruning ratio {ratio} is outside [0, 1)", "pass the fraction to remove, e.g. 0.5")
    return float(ratio)


def prunable_layers(model: nn.Module) -> list[tuple[str, PrunableLayer]]:
    return [(name, module) for name, module in model.named_modules() if isinstance(module, PRUNABLE)]


def taylor_scores(
    model: nn.Module, data: LabelledArrays | None, batches: int = 4, batch_size: int = 64
) -> dict[nn.Module, torch.Tensor]:
    """|w * dL/dw| per weight, summed over a few labelled batches (first-order loss change of removing w)."""
    if data is None or len(data) == 0:
        raise PruningError("Taylor importance needs labelled data", "pass training data, or use magnitude importance")
    layers = [module for _, module in prunable_layers(model)]
    scores: dict[nn.Module, torch.Tensor] = {module: torch.zeros_like(module.weight) for module in layers}
    was_training = model.training
    model.eval()  # frozen batch statistics: scores describe the model as it will run
    for start in range(0, min(len(data), batches * batch_size), batch_size):
        model.zero_grad()
        x = torch.from_numpy(data.x[start : start + batch_size])
        nn.functional.cross_entropy(model(x), torch.from_numpy(data.y[start : start + batch_size])).backward()
        for module in layers:
            if module.weight.grad is not None:  # None: a layer forward() does not use; removing it costs no loss
                scores[module] += (module.weight.detach() * module.weight.grad).abs()
    model.zero_grad()
    model.train(was_training)
    return scores


def make_permanent(model: nn.Module) -> nn.Module:
    """Fold attached masks into the weights (plain parameters again, ready for export)."""
    for _, module in prunable_layers(model):
        if torch_prune.is_pruned(module) and hasattr(module, "weight_mask"):
            torch_prune.remove(module, "weight")
    return model


def prune_unstructured(
    model: nn.Module,
    ratio: float,
    importance: Importance = "magnitude",
    scope: Scope = "global",
    data: LabelledArrays | None = None,
) -> nn.Module:
    """Zero `ratio` of all conv/linear weights in place; masks stay attached until `make_permanent`.

    Re-applying with a larger ratio continues from the zeros already there, so an
    iterative schedule passes the cumulative ratio each step.
    """
    check_ratio(ratio)
    if importance not in ("magnitude", "taylor") or scope not in ("global", "layer"):
        raise PruningError(f"unknown pruning '{importance}/{scope}'", "use magnitude|taylor and global|layer")
    make_permanent(model)
    layers = prunable_layers(model)
    scores = taylor_scores(model, data) if importance == "taylor" else {}
    if scope == "global":
        torch_prune.global_unstructured(
            [(module, "weight") for _, module in layers],
            pruning_method=torch_prune.L1Unstructured,
            importance_scores={(module, "weight"): scores[module] for module in scores} or None,
            amount=ratio,
        )
    else:
        for _, module in layers:
            torch_prune.l1_unstructured(module, "weight", amount=ratio, importance_scores=scores.get(module))
    return model


@dataclass(frozen=True)
class LayerSparsity:
    name: str
    params: int
    zeros: int

    @property
    def sparsity(self) -> float:
        return self.zeros / max(1, self.params)

    def to_dict(self) -> dict:
        return {"name": self.name, "params": self.params, "zeros": self.zeros, "sparsity": round(self.sparsity, 4)}


def sparsity_report(model: nn.Module) -> list[LayerSparsity]:
    """Zeros per conv/linear weight, as the model would run (masks applied)."""
    return [
        LayerSparsity(name, module.weight.numel(), int((module.weight == 0).sum()))
        for name, module in prunable_layers(model)
    ]


def total_sparsity(report: list[LayerSparsity]) -> float:
    return sum(layer.zeros for layer in report) / max(1, sum(layer.params for layer in report))
