"""Data-free calibration: synthesize inputs whose BatchNorm statistics match the trained model's.

When no data may leave the customer, the model itself still remembers its training data:
every BatchNorm layer stores the running mean/variance of what it saw. Optimizing noise so
that each BN layer's batch statistics match those running statistics (ZeroQ, Cai et al. 2020;
DeepInversion, Yin et al. 2020) yields inputs whose activation ranges resemble real data's,
which is exactly what int8 calibration needs. An optional cross-entropy term towards
round-robin classes (DeepInversion) makes the batch cover every class.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from edgecompress.calib.bn_stats import batchnorm_layers, record_batchnorm_inputs
from edgecompress.core.errors import DataFreeError, InputShapeError
from edgecompress.device.preprocess import PreprocessSpec
from edgecompress.core.progress import progress_bar


@dataclass(frozen=True)
class DataFreeConfig:
    """How hard to optimize; defaults suit small CNNs on a CPU in well under a minute per batch."""

    steps: int = 200
    lr: float = 0.1
    batch_size: int = 64  # samples optimized together: BN statistics are batch statistics
    class_loss_weight: float = 0.0  # > 0 adds DeepInversion's cross-entropy to round-robin classes
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def synthesize(
    model: nn.Module,
    input_shape: tuple[int, ...],
    count: int,
    config: DataFreeConfig = DataFreeConfig(),
    spec: PreprocessSpec | None = None,
) -> tuple[np.ndarray, dict]:
    """`count` synthetic inputs of `input_shape` (its batch axis is ignored) and a summary of the fit.

    When a preprocessing spec is given, pixels are kept inside the range it can produce
    (e.g. [-1, 1] for mean=std=0.5), so synthetic inputs never exceed real ones.
    """
    if not batchnorm_layers(model):
        raise DataFreeError(
            "the model has no BatchNorm layers with running statistics, so there is nothing to match",
            "calibrate with real data instead: edgecompress calib --from DIR_OR_ARRAYS --count 256 --out calib.npz",
        )
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    generator = torch.Generator().manual_seed(config.seed)
    low, high = _input_bounds(spec, input_shape)
    batches, losses = [], []
    with progress_bar() as progress:
        task = progress.add_task("synthesizing calibration data", total=count)
        for start in range(0, count, config.batch_size):
            size = min(config.batch_size, count - start)
            batch, loss = _optimize_batch(model, (size, *input_shape[1:]), start, config, generator, low, high)
            batches.append(batch)
            losses.append(loss)
            progress.update(task, advance=size)
    summary = {"config": config.to_dict(), "final_bn_loss": float(np.mean(losses))}
    return np.concatenate(batches).astype(np.float32), summary


def _optimize_batch(
    model: nn.Module,
    shape: tuple[int, ...],
    first_index: int,
    config: DataFreeConfig,
    generator: torch.Generator,
    low: torch.Tensor | None,
    high: torch.Tensor | None,
) -> tuple[np.ndarray, float]:
    inputs = torch.randn(shape, generator=generator)
    if low is not None:
        inputs = inputs * (high - low) / 4 + (high + low) / 2
    inputs.requires_grad_(True)
    optimizer = torch.optim.Adam([inputs], lr=config.lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, config.steps)
    bn_loss = torch.tensor(0.0)
    with record_batchnorm_inputs(model) as records:
        for _ in range(config.steps):
            records.clear()
            outputs = _forward(model, inputs)
            bn_loss = sum(record.loss() for record in records) / len(records)
            loss = bn_loss + config.class_loss_weight * _class_loss(outputs, first_index)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            if low is not None:
                with torch.no_grad():
                    inputs.copy_(torch.maximum(torch.minimum(inputs, high), low))
    return inputs.detach().numpy(), float(bn_loss.detach())


def _forward(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    try:
        return model(inputs)
    except RuntimeError as exc:
        raise InputShapeError(
            f"the model cannot run on inputs of shape {list(inputs.shape[1:])} (per sample): {exc}".splitlines()[0],
            "pass the shape the model was trained on, e.g. --input-shape 1,3,224,224",
        ) from exc


def _class_loss(outputs: torch.Tensor, first_index: int) -> torch.Tensor:
    """Cross-entropy towards classes 0,1,2,… in turn, so a batch spreads over all classes."""
    if outputs.dim() != 2 or outputs.shape[1] < 2:
        return torch.tensor(0.0)
    targets = (torch.arange(len(outputs)) + first_index) % outputs.shape[1]
    return nn.functional.cross_entropy(outputs, targets)


def _input_bounds(
    spec: PreprocessSpec | None, input_shape: tuple[int, ...]
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Per-channel [low, high] that the spec maps pixel values 0..255 to, shaped to broadcast."""
    if spec is None:
        return None, None
    mean = np.broadcast_to(np.asarray(spec.mean, np.float32), (spec.channels,))
    std = np.broadcast_to(np.asarray(spec.std, np.float32), (spec.channels,))
    ends = np.stack([(0.0 * spec.scale - mean) / std, (255.0 * spec.scale - mean) / std])
    low, high = ends.min(axis=0), ends.max(axis=0)
    if len(input_shape) != 4:  # no image layout to place channels in: one range for everything
        return torch.tensor(float(low.min())), torch.tensor(float(high.max()))
    view = (1, -1, 1, 1) if spec.layout == "NCHW" else (1, 1, 1, -1)
    return torch.from_numpy(low.reshape(view).copy()), torch.from_numpy(high.reshape(view).copy())


def batchnorm_module(model) -> nn.Module:
    """The nn.Module behind a `SourceModel` (or a module itself), if data-free can work on it."""
    if getattr(model, "onnx_path", None) is not None:
        raise DataFreeError(
            "data-free calibration needs the PyTorch model: an ONNX graph has no gradients to optimize inputs with",
            "pass the PyTorch model: --model package.module:factory --weights FILE",
        )
    module = getattr(model, "module", model)
    if isinstance(module, (torch.jit.ScriptModule, torch.fx.GraphModule)):
        raise DataFreeError(
            "TorchScript and torch.export models hide their BatchNorm layers from data-free calibration",
            "pass the model as --model package.module:factory --weights state_dict.pt",
        )
    return module


def make_data_free_set(
    model,
    input_shape: tuple[int, ...],
    count: int,
    out,
    config: DataFreeConfig = DataFreeConfig(),
    spec: PreprocessSpec | None = None,
    input_name: str = "x",
    model_name: str = "model",
):
    """`edgecompress calib --data-free` as a function: synthesize, diagnose, write the set + manifest.

    `model` is an nn.Module or a `SourceModel` from `edgecompress.source.model`.
    """
    from edgecompress.calib.generate import describe, save_set
    from edgecompress.calib.load import CalibrationSet
    from edgecompress.calib.manifest import check_out_path

    check_out_path(out)
    module = batchnorm_module(model)
    inputs, summary = synthesize(module, input_shape, count, config, spec)
    arrays = {input_name: inputs}
    source = {"kind": "data-free", "location": model_name, "method": "batchnorm-statistics", **summary}
    manifest = describe(arrays, source, config.seed, spec)
    made = CalibrationSet(arrays, manifest["sha256"], f"data-free from {model_name}", manifest=manifest)
    return save_set(made, out, module)
