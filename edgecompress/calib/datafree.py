"""Data-free calibration: synthesize inputs whose BatchNorm statistics match the trained model's.

When no data may leave the customer, the model itself still remembers its training data:
every BatchNorm layer stores the running mean/variance of what it saw. Optimizing noise so
that each BN layer's batch statistics match those running statistics (ZeroQ, Cai et al. 2020;
DeepInversion, Yin et al. 2020) yields inputs whose activation ranges resemble real data's,
which is exactly what int8 calibration needs. For classifiers, a cross-entropy term towards a
target class per sample (DeepInversion) makes each sample as confident as real inputs are, so
the output's int8 range covers real logits, and spreads the batch over the classes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from edgecompress.calib.bn_stats import batchnorm_layers, batchnorm_loss, record_batchnorm_inputs
from edgecompress.core.errors import DataFreeError, InputShapeError
from edgecompress.device.preprocess import PreprocessSpec
from edgecompress.core.progress import progress_bar


@dataclass(frozen=True)
class DataFreeConfig:
    """How hard to optimize. The defaults were measured on 2 CPU cores (benchmarks/datafree.py, issue #25):
    EfficientNet-Lite0 (224×224, 4.65 M parameters) at its own resolution, 32 inputs; see docs/benchmarks/datafree.md.

    Steps run at the model's own input size by default. Optimizing at half size and upsampling (`scale`
    0.5, the previous default) is 4× cheaper a step, but on EfficientNet-Lite0 int8 calibrated on it agreed
    with fp32 on 0.805 of the held-out crops against 0.975 for photos; at full size (40 steps) 0.98.
    The half-size set did not lack high frequencies (neighbour-difference energy 0.29 of its variance,
    photos 0.09): its deep layers' int8 ranges were 0.5–0.8× the photos', so int8 clipped real activations."""

    # optimization steps per batch, at `scale` × the input's height and width; None: the time of 28 steps at
    # 224×224 (2 minutes for EfficientNet-Lite0), spent on smaller inputs as more steps, up to 160 (the 3×48×192
    # text-direction model: 28 steps gave int8 agreement 0.902 / cosine 0.9607, 120 steps 0.955 / 0.9897,
    # real text lines 0.962 / 0.9925)
    steps: int | None = None
    scale: float = 1.0  # < 1: optimize smaller first, then upsample (models that cannot run smaller run full size)
    full_steps: int = 0  # with scale < 1: extra steps at full size afterwards, at 1/scale² the cost of a step
    # below this many pixels on the reduced short side, all steps run at full size (cheap there anyway): a 32×32
    # digit model optimized at 16×16 and upsampled gave int8 logit errors 2.7× real data's, and entropy
    # calibration collapsed (77% top-1 vs 95% at full size)
    min_reduced_side: int = 64
    lr: float = 0.25
    warmup: float = 0.1  # fraction of the steps over which the learning rate rises to `lr` (then cosine decay)
    batch_size: int = 32  # samples optimized together: BN statistics are batch statistics
    jitter: float = 0.06  # random shift per step, as a fraction of height/width (DeepInversion)
    flips: bool = True  # random horizontal flip per step (DeepInversion)
    tv_weight: float = 0.01  # total-variation prior: natural images are locally smooth (more blurs away real contrast)
    slack: float = 0.2  # DSG's slack: per-channel margins (in running std) that keep samples diverse; not the first BN
    # the first BN's loss counts this many times an average layer's: it sees the pixels themselves, and the class
    # loss otherwise pulls its statistics off (a 4-BN test model, 28 steps: std 32% off at weight 1, 13% at 30)
    first_bn_weight: float = 30.0
    # DeepInversion's cross-entropy towards a target class per sample, for models with a 2-D (batch, classes) output.
    # BN statistics alone gave EfficientNet-Lite0 samples less confident than photos (top logit 9.4 vs 12.0 at
    # 0.3), so int8 clipped real logits and flipped near-ties. Set 0 for a 2-D output that is not class scores
    # (an embedding, a regression).
    class_loss_weight: float = 1.0
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    def steps_for(self, input_shape: tuple[int, ...]) -> int:
        """Steps per batch for this input: `steps`, or as many as 28 steps at 224×224 cost in pixels."""
        if self.steps is not None:
            return self.steps
        pixels = max(int(np.prod(input_shape[2:])), 1) if len(input_shape) == 4 else REFERENCE_PIXELS
        return int(min(max(REFERENCE_STEPS * REFERENCE_PIXELS / (pixels * min(self.scale, 1) ** 2), REFERENCE_STEPS), MAX_STEPS))


REFERENCE_STEPS, REFERENCE_PIXELS, MAX_STEPS = 28, 224 * 224, 160


def synthesize(
    model: nn.Module,
    input_shape: tuple[int, ...],
    count: int,
    config: DataFreeConfig = DataFreeConfig(),
    spec: PreprocessSpec | None = None,
) -> tuple[np.ndarray, dict]:
    """`count` synthetic inputs of `input_shape` (its batch axis is ignored) and a summary of the fit.

    With BatchNorm statistics, inputs are optimized to match them; without any, the set holds
    smooth random images over the input range (range-only calibration) and the summary says so.
    When a preprocessing spec is given, pixels are kept inside the range it can produce
    (e.g. [-1, 1] for mean=std=0.5), so synthetic inputs never exceed real ones.
    """
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    generator = torch.Generator().manual_seed(config.seed)
    bounds = _input_bounds(spec, input_shape)
    nchw = len(input_shape) == 4 and (spec is None or spec.layout == "NCHW")
    if not batchnorm_layers(model):
        return range_only_inputs(input_shape, count, generator, bounds, nchw), {
            "config": config.to_dict(),
            "method": "range-only",
            "note": RANGE_ONLY_NOTE,
        }
    batches, losses = [], []
    with progress_bar() as progress:
        batch_count = -(-count // config.batch_size)
        steps = config.steps_for(input_shape)
        config = replace(config, steps=steps)
        task = progress.add_task("synthesizing calibration data (steps)", total=batch_count * (steps + config.full_steps))
        optimizer = _BatchOptimizer(model, config, generator, bounds, nchw, lambda: progress.update(task, advance=1))
        for start in range(0, count, config.batch_size):
            batch, loss = optimizer.run((min(config.batch_size, count - start), *input_shape[1:]))
            batches.append(batch)
            losses.append(loss)
    summary = {"config": config.to_dict(), "method": "batchnorm-statistics", "final_bn_loss": float(np.mean(losses))}
    return np.concatenate(batches).astype(np.float32), summary


RANGE_ONLY_NOTE = (
    "the model has no BatchNorm statistics to match, so these are smooth random images over the input range "
    "(range-only calibration): expect real data to calibrate better"
)


def range_only_inputs(
    input_shape: tuple[int, ...],
    count: int,
    generator: torch.Generator,
    bounds: tuple[torch.Tensor, torch.Tensor] | None,
    nchw: bool,
) -> np.ndarray:
    """Smooth random images (noise at 1/8 resolution, upsampled) spanning the input range: all a model without
    BatchNorm tells about its inputs is their range, and natural images are smooth rather than white noise."""
    shape = (count, *input_shape[1:])
    if nchw:
        coarse = torch.randn((*shape[:2], max(shape[2] // 8, 1), max(shape[3] // 8, 1)), generator=generator)
        inputs = F.interpolate(coarse, size=shape[2:], mode="bilinear", align_corners=False)
    else:
        inputs = torch.randn(shape, generator=generator)
    if bounds is not None:
        low, high = bounds
        inputs = ((inputs / 2).clamp(-1, 1) * (high - low) / 2 + (high + low) / 2)
    return inputs.numpy().astype(np.float32)


class _BatchOptimizer:
    """Adam on the pixels of one batch, at the model's own input size (or, with `scale` < 1, smaller first,
    then upsampled and optionally refined at full size). Images run channels-last: a step of
    EfficientNet-Lite0 at 112×112 took 0.83 s that way against 0.95 s in NCHW.
    """

    def __init__(self, model, config: DataFreeConfig, generator: torch.Generator, bounds, nchw: bool, advance) -> None:
        self.model, self.config, self.generator = model, config, generator
        self.bounds, self.nchw, self.advance = bounds, nchw, advance
        self.slack: list[torch.Tensor] | None = None
        self.targets: torch.Tensor | None = None

    def run(self, shape: tuple[int, ...]) -> tuple[np.ndarray, float]:
        config = self.config
        steps = config.steps_for(shape)
        large = self.nchw and min(shape[2:]) * config.scale >= config.min_reduced_side
        reduce = large and config.scale < 1 and steps > 0
        small = (*shape[:2], *(max(round(s * config.scale), 8) for s in shape[2:])) if reduce else shape
        if reduce and not self.runs_at(small):  # e.g. a text-line model whose pooling needs the full height
            reduce, small = False, shape
        inputs = natural_noise(small, self.generator) if self.nchw else torch.randn(small, generator=self.generator)
        if self.bounds is not None:
            low, high = self.bounds
            inputs = inputs * (high - low) / (4 if self.nchw else 8) + (high + low) / 2  # a photo's spread
        self.slack, self.targets = None, None  # fixed for the whole batch, drawn at its first step
        with record_batchnorm_inputs(self.model) as records:
            inputs = self.steps(inputs, steps, records)
            if reduce:
                inputs = F.interpolate(inputs, size=shape[2:], mode="bilinear", align_corners=False)
            inputs = self.steps(inputs, config.full_steps, records)
            records.clear()
            with torch.no_grad():
                self.model(inputs)
            fit = float(batchnorm_loss(records))  # without slack or augmentation: what the set really matches
        return inputs.contiguous().numpy(), fit

    def runs_at(self, shape: tuple[int, ...]) -> bool:
        try:
            with torch.no_grad():
                self.model(torch.zeros((1, *shape[1:])))
        except RuntimeError:
            return False
        return True

    def steps(self, inputs: torch.Tensor, count: int, records: list) -> torch.Tensor:
        """`count` Adam steps on `inputs` (cosine-decayed learning rate)."""
        config = self.config
        if count == 0:
            return inputs
        layout = torch.channels_last if self.nchw and inputs.dim() == 4 else torch.contiguous_format
        inputs = inputs.detach().clone().contiguous(memory_format=layout).requires_grad_(True)
        optimizer = torch.optim.Adam([inputs], lr=config.lr, betas=(0.5, 0.9))
        warm = int(count * config.warmup)
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, count - warm, eta_min=config.lr / 20)
        scheduler = cosine if not warm else torch.optim.lr_scheduler.SequentialLR(
            optimizer, [torch.optim.lr_scheduler.LinearLR(optimizer, 0.1, 1.0, warm), cosine], [warm])
        for _ in range(count):
            records.clear()
            outputs = _forward(self.model, _augment(inputs, config, self.generator) if self.nchw else inputs)
            if self.slack is None:  # one margin per channel for the whole batch: a fixed, different target per batch
                self.slack = [config.slack * torch.rand(r.running_mean.shape, generator=self.generator) for r in records]
                self.slack[0] = torch.zeros_like(self.slack[0])  # the first layer sees pixels: match it exactly
            bn_loss = batchnorm_loss(records, self.slack, config.first_bn_weight)
            prior = _total_variation(inputs) if self.nchw else 0.0
            loss = bn_loss + config.tv_weight * prior
            if config.class_loss_weight and outputs.dim() == 2 and outputs.shape[1] >= 2:  # (batch, classes)
                if self.targets is None:
                    self.targets = class_targets(len(outputs), outputs.shape[1], self.generator)
                loss = loss + config.class_loss_weight * _class_loss(outputs, self.targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            if self.bounds is not None:
                with torch.no_grad():
                    inputs.copy_(torch.maximum(torch.minimum(inputs, self.bounds[1]), self.bounds[0]))
            self.advance()
        return inputs.detach()


def natural_noise(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Unit-variance noise with a natural image's 1/f amplitude spectrum, each sample and channel on its own:
    the start of optimization. Smooth like a photo rather than white, it starts the first layer's statistics
    near a photo's, so the few full-size steps go to the deep layers."""
    white = torch.randn(shape, generator=generator)
    fy = torch.fft.fftfreq(shape[-2]).abs().view(-1, 1)
    fx = torch.fft.rfftfreq(shape[-1]).view(1, -1)
    falloff = 1 / (fy.square() + fx.square()).sqrt().clamp_min(1 / max(shape[-2:]))
    shaped = torch.fft.irfft2(torch.fft.rfft2(white) * falloff, s=shape[-2:])
    shaped = shaped - shaped.mean(dim=(-2, -1), keepdim=True)
    return shaped / shaped.std(dim=(-2, -1), keepdim=True).clamp_min(1e-8)


def _augment(inputs: torch.Tensor, config: DataFreeConfig, generator: torch.Generator) -> torch.Tensor:
    """DeepInversion's jitter and flips: statistics must hold wherever the content sits, which
    keeps the optimizer from writing high-frequency patterns tuned to one alignment."""
    if config.jitter > 0:
        dy, dx = (int(torch.randint(-m, m + 1, (1,), generator=generator)) if m else 0
                  for m in (int(inputs.shape[2] * config.jitter), int(inputs.shape[3] * config.jitter)))
        inputs = torch.roll(inputs, shifts=(dy, dx), dims=(2, 3))
    if config.flips and bool(torch.rand(1, generator=generator) < 0.5):
        inputs = torch.flip(inputs, dims=(3,))
    return inputs


def _total_variation(inputs: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of neighbouring pixels, relative to the batch's pixel variance."""
    dy = (inputs[:, :, 1:, :] - inputs[:, :, :-1, :]).square().mean()
    dx = (inputs[:, :, :, 1:] - inputs[:, :, :, :-1]).square().mean()
    return (dy + dx) / inputs.detach().var().clamp_min(1e-8)


def _forward(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    try:
        return model(inputs)
    except RuntimeError as exc:
        raise InputShapeError(
            f"the model cannot run on inputs of shape {list(inputs.shape[1:])} (per sample): {exc}".splitlines()[0],
            "pass the shape the model was trained on, e.g. --input-shape 1,3,224,224",
        ) from exc


def _class_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of (batch, classes) outputs towards each sample's target class (DeepInversion). Models
    that end in a Softmax (exported classifiers often do) give probabilities: their log is the log-softmax
    cross-entropy needs."""
    rows = outputs.detach().sum(dim=1)
    if bool((outputs.detach() >= 0).all()) and bool(torch.allclose(rows, torch.ones_like(rows), atol=1e-3)):
        return nn.functional.nll_loss(outputs.clamp_min(1e-8).log(), targets)
    return nn.functional.cross_entropy(outputs, targets)


def class_targets(count: int, classes: int, generator: torch.Generator) -> torch.Tensor:
    """One target class per sample: every class once before any twice, in a seeded random order (the first
    32 of ImageNet's 1000 classes in turn would all be fish and birds)."""
    rounds = -(-count // classes)
    return torch.cat([torch.randperm(classes, generator=generator) for _ in range(rounds)])[:count]


def _input_bounds(
    spec: PreprocessSpec | None, input_shape: tuple[int, ...]
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Per-channel [low, high] that the spec maps pixel values 0..255 to, shaped to broadcast."""
    if spec is None:
        return None
    mean = np.broadcast_to(np.asarray(spec.mean, np.float32), (spec.channels,))
    std = np.broadcast_to(np.asarray(spec.std, np.float32), (spec.channels,))
    ends = np.stack([(0.0 * spec.scale - mean) / std, (255.0 * spec.scale - mean) / std])
    low, high = ends.min(axis=0), ends.max(axis=0)
    if len(input_shape) != 4:  # no image layout to place channels in: one range for everything
        return torch.tensor(float(low.min())), torch.tensor(float(high.max()))
    view = (1, -1, 1, 1) if spec.layout == "NCHW" else (1, 1, 1, -1)
    return torch.from_numpy(low.reshape(view).copy()), torch.from_numpy(high.reshape(view).copy())


def synthesis_module(model) -> nn.Module:
    """The differentiable module behind a `SourceModel` (or a module itself) that data-free optimizes through.

    An ONNX file runs through `onnx_graph_module`, which keeps its BatchNormalization nodes as
    BN layers; TorchScript and torch.export hide their layers and are refused.
    """
    onnx_path = getattr(model, "onnx_path", None)
    if onnx_path is not None:
        from edgecompress.calib.onnx_torch import onnx_graph_module

        return onnx_graph_module(onnx_path)
    module = getattr(model, "module", model)
    if isinstance(module, (torch.jit.ScriptModule, torch.fx.GraphModule)):
        raise DataFreeError(
            "TorchScript and torch.export models hide their BatchNorm layers from data-free calibration",
            "pass the model as --model package.module:factory --weights state_dict.pt, or as an .onnx file",
        )
    return module


def single_input(model) -> tuple[str, tuple[int, ...]]:
    """(name, full shape) of the one input data-free synthesizes; an ONNX file's own dims fill what
    --input-shape leaves out."""
    shapes = dict(getattr(model, "input_shapes", {}) or {})
    if getattr(model, "onnx_path", None) is not None:
        from edgecompress.export.graph import model_io, read_onnx

        specs = model_io(read_onnx(model.onnx_path))[0]
        given = shapes.get(specs[0].name, shapes.get("")) if len(specs) == 1 else None
        shapes = {spec.name: given or tuple(1 if i == 0 else d for i, d in enumerate(spec.shape)) for spec in specs}
    if len(shapes) != 1:
        raise DataFreeError("data-free calibration supports single-input models", "calibrate multi-input models with real data (--from)")
    (name, shape), = shapes.items()
    if any(not isinstance(d, int) or d <= 0 for d in shape[1:]):
        raise InputShapeError(f"input '{name}' has dynamic dimensions {list(shape)}", "fix them with --input-shape, e.g. 1,3,224,224")
    return name, tuple(shape)


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

    `model` is an nn.Module or a `SourceModel` from `edgecompress.source.model` (PyTorch or ONNX).
    """
    from edgecompress.calib.generate import describe, save_set
    from edgecompress.calib.load import CalibrationSet
    from edgecompress.calib.manifest import check_out_path

    check_out_path(out)
    module = synthesis_module(model)
    inputs, summary = synthesize(module, input_shape, count, config, spec)
    if summary["method"] == "range-only":
        from edgecompress.core.progress import warn

        warn(summary["note"])
    arrays = {input_name: inputs}
    source = {"kind": "data-free", "location": model_name, **summary}
    manifest = describe(arrays, source, config.seed, spec)
    made = CalibrationSet(arrays, manifest["sha256"], f"data-free from {model_name}", manifest=manifest)
    return save_set(made, out, model if getattr(model, "onnx_path", None) is not None else module)
