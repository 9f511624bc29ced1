"""Quantization-aware fine-tuning (QAT) with distillation from the fp32 model, for PyTorch and ONNX-only models alike.

What is trained is the float graph the quantizer quantizes (`static.prepare_model`: BatchNorm already folded into
the convolutions, so no BatchNorm runs in train mode), run as a torch module (`calib/onnx_torch.py`). Fake
quantization mirrors the post-training QDQ model of the same recipe exactly: every activation the QDQ model
quantizes is quantized with that model's own scale and zero point (frozen: the ranges are calibrated once, as
NVIDIA's and PyTorch's QAT recipes do), and every weight it quantizes is quantized per channel, symmetric, with the
scale the quantizer will compute from the trained weight (max |w| / 127, or / 64 with reduce_range). Gradients pass
straight through the rounding inside the range and stop outside it. Nodes the recipe keeps in float stay float.

The loss is distillation from the fp32 graph (labels are optional): KL at a temperature on class scores and
per-step KL on sequences, MSE (scaled by the reference's variance) on boxes, maps and values. The trained weights
are written back into the same graph and quantized by the same quantizer with the ranges the training used, so the
engine computes what the fine-tuning saw, by construction.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch.nn import functional as F

from edgecompress.calib.load import CalibrationSet
from edgecompress.calib.onnx_torch import OnnxGraphModule
from edgecompress.compress.parallel import any_rank, average_gradients, rank_share, world
from edgecompress.core.errors import ConfigError, QuantizationError
from edgecompress.quantize.augment import augment_images, is_image_batch
from edgecompress.quantize.recipe import QuantRecipe
from edgecompress.source.layout import BatchLayout

LossKind = Literal["kl", "mse"]
TYPE_RANGES = {"uint8": (0, 255), "int8": (-128, 127)}
QUANTIZED_SUFFIX = "_quantized"  # ORT names a quantized weight initializer <weight>_quantized
RENAMED_OUTPUT_SUFFIX = "_QuantizeLinear_Input"  # and a quantized graph output's producer output <output>_QuantizeLinear_Input


@dataclass(frozen=True)
class ActivationQuant:
    """One activation tensor's quantization as the QDQ model does it."""

    scale: float
    zero_point: int
    dtype: str  # "uint8" | "int8"


@dataclass(frozen=True)
class WeightQuant:
    """One weight's quantization as the quantizer will compute it from the trained values."""

    axis: int | None  # per-channel axis; None: per tensor
    symmetric_max: int  # 127, or 64 with reduce_range: scale = max |w| / symmetric_max
    dtype: str
    dequantized: np.ndarray = field(compare=False, repr=False, default_factory=lambda: np.zeros(0))  # as the QDQ model has it


@dataclass(frozen=True)
class QuantPlan:
    """Where the QDQ model quantizes, read from the model itself (never re-derived from the recipe's rules)."""

    activations: dict[str, ActivationQuant]
    weights: dict[str, WeightQuant]

    def activation_record(self) -> dict[str, list]:
        """The activations as JSON (report.json, the torchrun launcher's result): name -> [scale, zero point, dtype]."""
        return {name: [q.scale, q.zero_point, q.dtype] for name, q in self.activations.items()}

    @classmethod
    def from_activation_record(cls, record: dict[str, list]) -> "QuantPlan":
        """A plan of activation ranges only (what quantizing the fine-tuned graph needs) from `activation_record`."""
        return cls({name: ActivationQuant(float(scale), int(zero), str(dtype)) for name, (scale, zero, dtype) in record.items()}, {})

    def activation_ranges(self) -> dict[str, list[dict[str, Any]]]:
        """ORT `TensorQuantOverrides` that make the quantizer use exactly these activation parameters."""
        dtypes = {"uint8": np.uint8, "int8": np.int8}
        return {name: [{"scale": np.array(q.scale, np.float32), "zero_point": np.array(q.zero_point, dtypes[q.dtype])}]
                for name, q in self.activations.items()}


def _dtype_name(tensor: onnx.TensorProto) -> str:
    return {int(onnx.TensorProto.UINT8): "uint8", int(onnx.TensorProto.INT8): "int8"}.get(tensor.data_type, "")


def read_quant_plan(qdq: onnx.ModelProto, recipe: QuantRecipe) -> QuantPlan:
    """The activation scales and zero points of a QDQ model, and which weights it quantizes along which axis."""
    initializers = {t.name: t for t in qdq.graph.initializer}
    activations: dict[str, ActivationQuant] = {}
    weights: dict[str, WeightQuant] = {}
    for node in qdq.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in initializers:
            scale = numpy_helper.to_array(initializers[node.input[1]])
            zero_point = initializers[node.input[2]]
            activations[node.input[0].removesuffix(RENAMED_OUTPUT_SUFFIX)] = ActivationQuant(float(scale), int(numpy_helper.to_array(zero_point)),
                                                        _dtype_name(zero_point))
        elif node.op_type == "DequantizeLinear" and node.input[0] in initializers:
            quantized = initializers[node.input[0]]
            dtype = _dtype_name(quantized)
            if not dtype or not node.input[0].endswith(QUANTIZED_SUFFIX):
                continue  # int32 biases: quantized with the input's and weight's scales, nothing to mirror
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)  # DequantizeLinear's default axis
            per_channel = numpy_helper.to_array(initializers[node.input[1]]).size > 1
            scale = numpy_helper.to_array(initializers[node.input[1]])
            zero = numpy_helper.to_array(initializers[node.input[2]]).astype(np.float32)
            values = numpy_helper.to_array(quantized).astype(np.float32)
            if per_channel:
                shape = [1] * values.ndim
                shape[axis % values.ndim] = -1
                scale, zero = scale.reshape(shape), zero.reshape(shape)
            weights[node.input[0].removesuffix(QUANTIZED_SUFFIX)] = WeightQuant(
                axis if per_channel else None, 64 if recipe.reduce_range else 127, dtype, (values - zero) * scale)
    return QuantPlan(activations, weights)


def _fake_quant_activation(quant: ActivationQuant):
    low, high = TYPE_RANGES[quant.dtype]

    def hook(tensor: torch.Tensor) -> torch.Tensor:
        return torch.fake_quantize_per_tensor_affine(tensor, quant.scale, quant.zero_point, low, high)

    return hook


MIN_LEARNED_SCALE = 1e-8


def _learned_fake_quant_activation(quant: ActivationQuant, scale: torch.nn.Parameter):
    """LSQ (Esser et al. 2020): the scale is trained with the weights, its gradient scaled by 1/sqrt(n * qmax) so
    a step moves it as much as a weight; the zero point stays the calibrated one (ORT keeps it an integer)."""
    low, high = TYPE_RANGES[quant.dtype]
    zero_point = torch.tensor([float(quant.zero_point)])

    def hook(tensor: torch.Tensor) -> torch.Tensor:
        grad_factor = 1.0 / float(np.sqrt(tensor[0].numel() * high))
        return torch._fake_quantize_learnable_per_tensor_affine(
            tensor, scale.clamp_min(MIN_LEARNED_SCALE), zero_point, low, high, grad_factor)

    return hook


def weight_scale(weight: torch.Tensor, quant: WeightQuant) -> torch.Tensor:
    """max |w| per channel / symmetric_max, as ORT's compute_scale_zp (a zero channel gets scale 1)."""
    if quant.axis is None:
        absmax = weight.detach().abs().amax().reshape(1)
    else:
        axis = quant.axis % weight.dim()
        absmax = weight.detach().abs().amax(dim=tuple(d for d in range(weight.dim()) if d != axis))
    scale = absmax.double() / quant.symmetric_max
    return torch.where(scale < torch.finfo(torch.float32).tiny, torch.ones_like(scale), scale).float()


def _fake_quant_weight(quant: WeightQuant):
    low, high = TYPE_RANGES[quant.dtype]

    def hook(weight: torch.Tensor) -> torch.Tensor:
        scale = weight_scale(weight, quant)
        zero = torch.zeros_like(scale, dtype=torch.int32)
        if quant.axis is None:
            return torch.fake_quantize_per_tensor_affine(weight, float(scale), 0, low, high)
        return torch.fake_quantize_per_channel_affine(weight, scale, zero, quant.axis % weight.dim(), low, high)

    return hook


def _fixed(value: np.ndarray):
    fixed = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))

    def hook(constant: torch.Tensor) -> torch.Tensor:
        return fixed.reshape(constant.shape).to(constant.dtype)

    return hook


class OrtTeacher:
    """The frozen fp32 graph run by ONNX Runtime: it needs no gradients, and ORT's fused kernels run it several times
    faster than the torch interpretation of the same graph (a teacher pass per step when the inputs are augmented)."""

    def __init__(self, prepared: onnx.ModelProto) -> None:
        self.model = prepared
        self.input_names = [i.name for i in prepared.graph.input if i.name not in {t.name for t in prepared.graph.initializer}]
        self.sessions: dict[tuple[str, ...], Any] = {}

    def _session(self, outputs: tuple[str, ...]):
        """A session whose graph outputs are `outputs` (intermediate tensors too, e.g. the logits before a Softmax)."""
        if outputs not in self.sessions:
            from edgecompress.core.runtime import session_with_outputs

            model = onnx.ModelProto()
            model.CopyFrom(self.model)
            # the graph was shape-inferred at the export's batch size: free the input dims, drop the inferred shapes
            del model.graph.value_info[:]
            for graph_input in model.graph.input:
                for axis, dim in enumerate(graph_input.type.tensor_type.shape.dim):
                    dim.Clear()
                    dim.dim_param = f"{graph_input.name}_dim{axis}"
            for graph_output in model.graph.output:
                graph_output.type.tensor_type.ClearField("shape")
            self.sessions[outputs] = session_with_outputs(model, list(outputs))
        return self.sessions[outputs]

    def run(self, inputs: dict[str, torch.Tensor], outputs: list[str] | None = None) -> list[torch.Tensor]:
        names = tuple(outputs) if outputs is not None else tuple(o.name for o in self.model.graph.output)
        feed = {name: inputs[name].detach().cpu().numpy() for name in self.input_names}
        return [torch.from_numpy(value) for value in self._session(names).run(list(names), feed)]


class FakeQuantGraph:
    """The prepared float graph as a torch module with the QDQ model's quantization hooked on, and the same graph
    frozen, without quantization, as the fp32 teacher (a teacher that shared the trained weights would drift with
    the student, and nothing would hold the student to the model it should stay)."""

    def __init__(self, prepared: onnx.ModelProto, plan: QuantPlan, learn_ranges: bool = False) -> None:
        self.module = OnnxGraphModule(prepared, trainable=True).eval()  # BatchNorm (if any is left) keeps its statistics
        self.teacher = OrtTeacher(prepared)
        self.plan = plan
        missing = sorted(set(plan.weights) - set(self.module.weight_keys) - set(self.module.constants))
        if missing:
            raise ConfigError(f"the quantized model quantizes initializers the float graph lacks: {', '.join(missing[:5])}",
                              "this is a bug in edgecompress: please report it with the model")
        # learned ranges: one trainable scale per quantized activation, initialised from the calibration
        self.scales: dict[str, torch.nn.Parameter] = {
            name: torch.nn.Parameter(torch.tensor([q.scale], dtype=torch.float32)) for name, q in plan.activations.items()
        } if learn_ranges else {}
        self.module.tensor_hooks = {
            name: _learned_fake_quant_activation(q, self.scales[name]) if learn_ranges else _fake_quant_activation(q)
            for name, q in plan.activations.items()
        }
        # a trained weight is quantized as the quantizer will quantize it; a constant operand (the 3 of a hard-swish's
        # x + 3) is not trained, so it takes the value the QDQ model holds
        self.module.weight_hooks = {name: _fake_quant_weight(q) if name in self.module.weight_keys else _fixed(q.dequantized)
                                    for name, q in plan.weights.items()}

    def run(self, inputs: dict[str, torch.Tensor], outputs: list[str] | None = None) -> list[torch.Tensor]:
        return self.module.run(*(inputs[name] for name in self.module.input_names), outputs=outputs)

    def trained_plan(self) -> QuantPlan:
        """The plan with the scales the training ended on (the calibrated ones where ranges were not learned)."""
        activations = {name: replace(q, scale=max(float(self.scales[name].detach()), MIN_LEARNED_SCALE)) if name in self.scales else q
                       for name, q in self.plan.activations.items()}
        return QuantPlan(activations, self.plan.weights)

    def teacher_outputs(self, inputs: dict[str, torch.Tensor], outputs: list[str] | None = None) -> list[torch.Tensor]:
        return self.teacher.run(inputs, outputs)


def distillation_targets(model: onnx.ModelProto) -> list[str]:
    """The tensor each output is distilled on: a Softmax output's input (its logits: int8 probabilities round the
    small ones to 0, whose log has no gradient), else the output itself."""
    producers = {output: node for node in model.graph.node for output in node.output}
    targets = []
    for output in model.graph.output:
        node = producers.get(output.name)
        targets.append(node.input[0] if node is not None and node.op_type == "Softmax" else output.name)
    return targets


def write_weights(prepared: onnx.ModelProto, module: OnnxGraphModule, out_path: Path) -> Path:
    """The prepared graph with the trained weights: same nodes, same names, new values."""
    from edgecompress.core.artifacts import atomic_path

    model = onnx.ModelProto()
    model.CopyFrom(prepared)
    for tensor in model.graph.initializer:
        if tensor.name in module.weight_keys:
            trained = module.weight(tensor.name).detach().cpu().numpy().astype(numpy_helper.to_array(tensor).dtype)
            tensor.CopyFrom(numpy_helper.from_array(trained, tensor.name))
    with atomic_path(out_path) as tmp:
        onnx.save(model, str(tmp))
    return Path(out_path)


def fine_tuned_recipe(recipe: QuantRecipe) -> QuantRecipe:
    """The recipe the fine-tuned graph is quantized with: the start's, without equalization and bias correction,
    which the graph the training started from (prepare_model's) already has in its weights."""
    return replace(recipe, equalize=False, bias_correction=False)


def quantize_fine_tuned(trained_path: Path, calibration: CalibrationSet, recipe: QuantRecipe,
                        ranges: dict[str, list[dict[str, Any]]], out_path: Path) -> Path:
    """The fine-tuned graph as a QDQ model that computes what the training saw: the training's activation ranges
    (QuantPlan.activation_ranges), not a new calibration, the start's types, exclusions and per-channel weights."""
    from edgecompress.quantize.static import quantize_model

    return quantize_model(trained_path, calibration, fine_tuned_recipe(recipe), out_path, ranges)


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, kind: LossKind, temperature: float) -> torch.Tensor:
    """KL at `temperature` over the last axis (class scores, per step for sequences), T² scaled; or MSE relative to
    the teacher's variance, so outputs in pixels and in [0, 1] weigh alike."""
    if kind == "kl":
        student_log = F.log_softmax(student.reshape(-1, student.shape[-1]) / temperature, dim=-1)
        teacher_log = F.log_softmax(teacher.reshape(-1, teacher.shape[-1]) / temperature, dim=-1)
        return F.kl_div(student_log, teacher_log, reduction="batchmean", log_target=True) * temperature**2
    return F.mse_loss(student, teacher) / teacher.var().clamp_min(1e-12)


def loss_kind_for(output: np.ndarray) -> LossKind:
    """Class scores ([N, C], or [N, T, C] per step) distil by KL; everything else by MSE."""
    return "kl" if output.ndim in (2, 3) and output.shape[-1] > 1 else "mse"


@dataclass(frozen=True)
class QatOptions:
    steps: int = 300
    batch_size: int = 16
    lr: float = 1e-5  # Adam; NNCF's MobileNetV2 recipe: 1e-5, ModelOpt's CNN example: 1e-4 (SGD)
    temperature: float = 2.0
    max_seconds: float = 600.0  # a time limit too: the ladder moves on rather than wait
    validation_fraction: float = 0.1  # held back from the training inputs to keep the best weights
    validate_every: int = 25
    seed: int = 0
    loss_kinds: tuple[LossKind, ...] = ()  # per output; empty: from each output's shape (loss_kind_for)
    learn_ranges: bool = False  # LSQ: train the activation scales too (benchmarks/qat.py measures both)
    range_lr: float = 1e-4  # Adam learning rate of the learned scales
    augment: bool = True  # train on random views of image inputs (quantize/augment.py); the teacher labels each view
    patience: int = 4  # stop after this many validations in a row without a lower validation loss (a plateau)

    def __post_init__(self) -> None:
        for name, value in (("steps", self.steps), ("batch_size", self.batch_size), ("validate_every", self.validate_every),
                            ("patience", self.patience)):
            if value < 1:
                raise ConfigError(f"QAT {name} must be at least 1, not {value}", f"set {name} to a positive whole number")
        if not 0 < self.lr < 1 or not 0 < self.range_lr < 1 or self.temperature <= 0 or self.max_seconds <= 0:
            raise ConfigError("QAT lr must be in (0, 1), temperature and max_seconds positive",
                              "e.g. lr 1e-5, temperature 2, max_seconds 600")


@dataclass
class QatResult:
    model_path: Path  # the prepared fp32 graph with the fine-tuned weights
    plan: QuantPlan
    steps: int
    seconds: float
    samples: int  # training inputs used (validation ones excluded)
    stopped: str  # why training ended
    curve: list[dict[str, float]] = field(default_factory=list)  # step, training loss, validation loss
    validation_loss_before: float = 0.0
    validation_loss_after: float = 0.0
    augmented: bool = False  # trained on random views of the inputs (QatOptions.augment, image inputs only)

    @property
    def seconds_per_step(self) -> float:
        return self.seconds / self.steps if self.steps else 0.0


def _take(arrays: dict[str, np.ndarray], layout: BatchLayout, indices: np.ndarray) -> dict[str, torch.Tensor]:
    picked = {}
    for name, array in arrays.items():
        axis = layout.axis(name, array)
        picked[name] = torch.from_numpy(np.ascontiguousarray(array if axis is None else np.take(array, indices, axis=axis)))
    return picked


def _split(count: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(count)
    held = int(round(count * fraction)) if count >= 10 else 0
    return order[held:], order[:held]


TEACHER_CACHE_BYTES = 256 * 2**20  # the fp32 outputs of every training input are kept when they fit in this


class _TeacherOutputs:
    """The frozen teacher's outputs per training input: computed once when they fit in memory (a third of a QAT
    step's time is the teacher's forward pass), else per batch."""

    def __init__(self, graph: FakeQuantGraph, inputs: dict[str, np.ndarray], layout: BatchLayout, index: np.ndarray,
                 targets: list[str], batch_size: int, bytes_per_input: float, precompute: bool = True) -> None:
        self.graph, self.targets = graph, targets
        self.rows: dict[int, int] = {}
        self.outputs: list[torch.Tensor] = []
        if not precompute or bytes_per_input * len(index) > TEACHER_CACHE_BYTES:
            return
        chunks = [graph.teacher_outputs(_take(inputs, layout, index[i: i + batch_size]), targets)
                  for i in range(0, len(index), batch_size)]
        self.outputs = [torch.cat([chunk[k] for chunk in chunks]) for k in range(len(targets))]
        self.rows = {int(sample): row for row, sample in enumerate(index)}

    def __call__(self, indices: np.ndarray, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        if not self.rows:
            return self.graph.teacher_outputs(batch, self.targets)
        rows = torch.tensor([self.rows[int(i)] for i in indices])
        return [output[rows] for output in self.outputs]


def _augmentable(inputs: dict[str, np.ndarray], layout: BatchLayout) -> bool:
    """One image input batched on its first axis: the only kind `augment_images` knows how to vary."""
    if len(inputs) != 1:
        return False
    (name, array), = inputs.items()
    return layout.axis(name, array) == 0 and is_image_batch(torch.from_numpy(np.ascontiguousarray(array[:1])))


BATCH_FIX = ("re-export the model with a dynamic batch axis (no Reshape to a shape that fixes batch 1), or build "
             "with --qat off")


def _check_batches(graph: FakeQuantGraph, inputs: dict[str, np.ndarray], layout: BatchLayout, train_index: np.ndarray,
                   targets: list[str]) -> None:
    """QAT trains on batches of many inputs: a model whose graph fixes its batch (a YOLO export's Reshape to [1, ...])
    cannot be trained so; say it before any step, and the ladder goes on (never an error at step one)."""
    if layout.fixed_batch is not None:
        raise QuantizationError(f"quantization-aware training runs batches of inputs, and this model fixes its batch at "
                                f"{layout.fixed_batch}", BATCH_FIX)
    if len(train_index) < 2:
        return
    from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument, RuntimeException

    try:
        graph.teacher_outputs(_take(inputs, layout, train_index[:2]), targets)
    except (Fail, InvalidArgument, RuntimeException) as exc:  # ORT's errors for a shape the graph cannot take; a bug raises
        raise QuantizationError("quantization-aware training runs batches of inputs, and the fp32 model fails on a batch "
                                f"of 2: {' '.join(str(exc).split())[:200]}", BATCH_FIX) from exc


def _shown_metric(entry: dict[str, float]) -> str:
    return f", agreement {entry['validation_agreement']:.1%}" if "validation_agreement" in entry else ""


def finetune(prepared_path: Path, qdq_path: Path, inputs: dict[str, np.ndarray], layout: BatchLayout, recipe: QuantRecipe,
             options: QatOptions, out_path: Path, progress=None) -> QatResult:
    """Fine-tune the prepared graph under the QDQ model's fake quantization, distilled from its own fp32 outputs;
    keep the weights (and learned ranges) with the lowest validation loss; write the weights to `out_path`; the
    result's plan has the ranges to quantize them with."""
    torch.manual_seed(options.seed)
    prepared = onnx.load(str(prepared_path))
    plan = read_quant_plan(onnx.load(str(qdq_path)), recipe)
    graph = FakeQuantGraph(prepared, plan, learn_ranges=options.learn_ranges)
    count = layout.count(inputs)
    train_index, val_index = _split(count, options.validation_fraction, options.seed)
    if len(train_index) == 0:
        raise ConfigError("quantization-aware training got no training inputs", "pass --data with inputs, or a larger --calib set")
    targets = distillation_targets(prepared)
    _check_batches(graph, inputs, layout, train_index, targets)
    val_inputs = _take(inputs, layout, val_index if len(val_index) else train_index[: options.batch_size])
    val_teacher = graph.teacher_outputs(val_inputs, targets)
    kinds = options.loss_kinds or tuple(loss_kind_for(t.numpy()) for t in val_teacher)
    val_count = len(val_index) if len(val_index) else len(train_index[: options.batch_size])
    bytes_per_input = sum(t.numel() * t.element_size() for t in val_teacher) / val_count
    augmenting = options.augment and _augmentable(inputs, layout)
    generator = torch.Generator().manual_seed(options.seed)
    # a random view is new to the teacher every step: its outputs cannot be computed ahead
    teacher = _TeacherOutputs(graph, inputs, layout, train_index, targets, options.batch_size, bytes_per_input,
                              precompute=not augmenting)

    def loss_of(student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
        return sum((distillation_loss(s, t, kind, options.temperature) for s, t, kind in zip(student, teacher, kinds)),
                   start=torch.zeros(()))

    def validate() -> tuple[float, float | None]:
        """The validation loss, and the top-1 (per step) agreement with fp32 of the class-score outputs: the task
        metric the progress bar shows beside the loss."""
        with torch.no_grad():
            student = graph.run(val_inputs, targets)
            scored = [(s.argmax(-1) == t.argmax(-1)).float().mean() for s, t, kind in zip(student, val_teacher, kinds) if kind == "kl"]
            return float(loss_of(student, val_teacher)), float(torch.stack(scored).mean()) if scored else None

    def validation_entry(step: int) -> dict[str, float]:
        loss, agreement = validate()
        return {"step": step, "validation_loss": loss} | ({} if agreement is None else {"validation_agreement": agreement})

    def state() -> dict[str, torch.Tensor]:
        weights = {f"weight:{k}": v.detach().clone() for k, v in graph.module.weights.items()}
        return weights | {f"scale:{k}": v.detach().clone() for k, v in graph.scales.items()}

    groups: list[dict[str, Any]] = [{"params": list(graph.module.weights.parameters()), "lr": options.lr}]
    if graph.scales:
        groups.append({"params": list(graph.scales.values()), "lr": options.range_lr})
    trained = [parameter for group in groups for parameter in group["params"]]
    optimizer = torch.optim.Adam(groups)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=options.steps)
    rng = np.random.default_rng(options.seed)
    first = validation_entry(0)
    best_loss = before = first["validation_loss"]
    best_state = state()
    curve: list[dict[str, float]] = [first]
    shown = _shown_metric(first)
    started, step, stopped = time.perf_counter(), 0, f"{options.steps} steps"
    order = rng.permutation(train_index)
    cursor, flat = 0, 0
    task = progress.add_task("QAT", total=options.steps) if progress is not None else None
    with torch.enable_grad():
        while step < options.steps:
            if any_rank(time.perf_counter() - started > options.max_seconds):  # every process stops at the same step
                stopped = f"time limit {options.max_seconds:.0f} s after {step} steps"
                break
            if cursor + options.batch_size > len(order):
                order, cursor = rng.permutation(train_index), 0
            indices = order[cursor: cursor + options.batch_size]
            cursor += options.batch_size
            # under torchrun each process trains on its share of the global batch (one process: all of it)
            positions, weight = rank_share(torch.arange(len(indices)))
            share = positions.numpy()
            if augmenting:  # the views one process would draw for the whole batch, then this process's share of them
                batch = {name: augment_images(value, generator)[positions] for name, value in _take(inputs, layout, indices).items()}
            else:
                batch = _take(inputs, layout, indices[share])
            loss = loss_of(graph.run(batch, targets), teacher(indices[share], batch))
            optimizer.zero_grad()
            (loss * weight).backward()
            average_gradients(trained)
            optimizer.step()
            scheduler.step()
            step += 1
            entry: dict[str, float] = {"step": step, "loss": float(loss.detach())}
            if step % options.validate_every == 0 or step == options.steps:
                entry |= validation_entry(step)
                shown = _shown_metric(entry)
                if entry["validation_loss"] < best_loss:
                    best_loss, flat = entry["validation_loss"], 0
                    best_state = state()
                else:
                    flat += 1
            curve.append(entry)
            if progress is not None:
                seconds_per_step = (time.perf_counter() - started) / step
                progress.update(task, advance=1, description=(
                    f"QAT step {step} ({seconds_per_step:.2f} s/step) loss {entry['loss']:.4f} "
                    f"validation {best_loss:.4f} (before {before:.4f}){shown}"))
            if flat >= options.patience:
                stopped = f"validation loss flat for {flat} checks after {step} steps"
                break
    with torch.no_grad():
        for key, value in graph.module.weights.items():
            value.copy_(best_state[f"weight:{key}"])
        for key, value in graph.scales.items():
            value.copy_(best_state[f"scale:{key}"])
    if world()[0] == 0:  # the first process writes; the others trained the same weights
        write_weights(prepared, graph.module, out_path)
    return QatResult(Path(out_path), graph.trained_plan(), step, round(time.perf_counter() - started, 1), len(train_index),
                     stopped, curve, before, best_loss, augmenting)
