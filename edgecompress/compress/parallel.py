"""Data-parallel training under `torchrun` (gloo on CPU) with one-process results.

`fit` asks this module for its batches and its network. In one process both are the
plain ones. Under an initialized process group each rank takes an equal slice of every
*global* batch, its loss is weighted so DDP's gradient average equals the global-batch
mean, and batch norms compute their statistics over all ranks' samples. That is what
makes N processes give the same weights as one process up to float noise, instead of
a differently-regularized model. Launch with:

    torchrun --nproc_per_node 2 -m edgecompress.compress.ddp  (the launcher, ddp.py) --student cnn-tiny --data digits --out student.pt
"""

from __future__ import annotations

import contextlib
import warnings
from typing import TYPE_CHECKING, Iterator

import torch
import torch.distributed as dist
from torch import nn

from edgecompress.compress.batch import Batch
from edgecompress.source.data import LabelledArrays


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    return world()[0] == 0


def rank_share(index: torch.Tensor) -> tuple[torch.Tensor, float]:
    """This rank's share of a global batch's sample indices, and the loss weight that makes the ranks' averaged
    gradient the global batch's mean one (a rank left without samples takes one at weight 0: every rank must take
    part in the all-reduce)."""
    rank, size = world()
    share = torch.tensor_split(index, size)[rank]
    if len(share) == 0:
        return index[:1], 0.0
    return share, len(share) * size / len(index)


def local_batches(data: LabelledArrays, order: torch.Tensor, batch_size: int) -> Iterator[tuple[Batch, float]]:
    """This rank's share of each global batch, with the loss weight that keeps the global mean."""
    x_all, y_all = torch.from_numpy(data.x), torch.from_numpy(data.y)
    for start in range(0, len(order), batch_size):
        share, weight = rank_share(order[start : start + batch_size])
        yield Batch(x_all[share], y_all[share], share), weight


def average_gradients(parameters: list[torch.nn.Parameter]) -> None:
    """The mean of every rank's gradients, in place (nothing to do in one process): data parallelism for a module
    that is not called through DDP's forward (QAT's ONNX graph runs by its own `run`)."""
    _, size = world()
    if size == 1:
        return
    for parameter in parameters:
        grad = parameter.grad if parameter.grad is not None else torch.zeros_like(parameter)
        dist.all_reduce(grad)
        parameter.grad = grad / size


def any_rank(flag: bool) -> bool:
    """True when `flag` is true on any rank: a stop decision (a time limit) every rank takes together."""
    if world()[1] == 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


if TYPE_CHECKING:  # the mixin only ever sits in front of a batch norm: check it against one
    _MixinBase = nn.modules.batchnorm._BatchNorm
else:
    _MixinBase = object


class _CrossRankBatchNorm(_MixinBase):
    """Batch-norm forward whose batch statistics are summed over all ranks (CPU-capable).

    torch's SyncBatchNorm only runs on GPUs; this mixin is swapped onto the existing
    BatchNorm objects for the duration of training, so parameters, buffers and
    state_dict keys stay exactly those of the user's model.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and world()[1] > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce  # differentiable, unlike dist.all_reduce

        dims = [d for d in range(x.dim()) if d != 1]
        count = x.new_tensor([x.numel() / x.shape[1]])
        with warnings.catch_warnings():  # its suggested successor is a private module
            warnings.simplefilter("ignore", FutureWarning)
            totals = all_reduce(torch.cat([x.sum(dims), (x * x).sum(dims), count]))
        channels = x.shape[1]
        n = totals[-1]
        mean = totals[:channels] / n
        var = totals[channels : 2 * channels] / n - mean * mean
        running_mean, running_var, tracked = self.running_mean, self.running_var, self.num_batches_tracked
        if self.track_running_stats and running_mean is not None and running_var is not None and tracked is not None:
            with torch.no_grad():
                tracked.add_(1)
                # momentum None keeps a cumulative average, as torch's own batch norm does
                factor = self.momentum if self.momentum is not None else 1.0 / float(tracked)
                running_mean.mul_(1 - factor).add_(factor * mean)
                running_var.mul_(1 - factor).add_(factor * var * n / (n - 1))
        shape = [1, channels] + [1] * (x.dim() - 2)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


@contextlib.contextmanager
def _cross_rank_batchnorms(model: nn.Module) -> Iterator[None]:
    swapped = []
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            original = type(module)
            module.__class__ = type(f"CrossRank{original.__name__}", (_CrossRankBatchNorm, original), {})
            swapped.append((module, original))
    try:
        yield
    finally:
        for module, original in swapped:
            module.__class__ = original


@contextlib.contextmanager
def data_parallel(trainables: nn.Module) -> Iterator[nn.Module]:
    """The network `fit` should call: the module itself, or a DDP wrapper under torchrun."""
    if world()[1] == 1:
        yield trainables
        return
    from torch.nn.parallel import DistributedDataParallel

    with _cross_rank_batchnorms(trainables):
        yield DistributedDataParallel(trainables)
