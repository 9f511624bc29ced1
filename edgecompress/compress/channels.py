"""Structured channel pruning that physically removes channels, so dense engines get faster.

Channels are coupled: a conv's output channels are the next BN's features, a depthwise
conv's channels, the next conv's input channels, the linear's inputs after flatten, and
every tensor a residual add joins them with. The model is traced with torch.fx and each
tensor gets a *layout*: which channel groups it holds, in order (a concatenation holds
several). Producers (convs, linears) open a group; adds merge groups; cat concatenates
layouts; flatten repeats each channel over the spatial positions. A group is then pruned
as one unit (Torch-Pruning's dependency-graph idea, no per-model hand edits), and every
module is sliced from its input and output layouts. Anything the tracer cannot follow is
refused with the op's name rather than guessed.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import torch
import torch.fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from edgecompress.compress.prune import check_ratio, taylor_scores
from edgecompress.source.data import LabelledArrays
from edgecompress.core.errors import PruningError

ChannelImportance = Literal["l1", "taylor"]

PASS_THROUGH_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid,
    nn.Hardtanh, nn.Dropout, nn.Dropout2d, nn.Identity, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d, nn.Upsample,
)
PASS_THROUGH_CALLS = {
    "relu", "relu_", "relu6", "hardtanh", "hardtanh_", "sigmoid", "sigmoid_", "tanh", "silu", "gelu", "hardswish",
    "hardsigmoid", "leaky_relu", "elu", "dropout", "adaptive_avg_pool2d", "adaptive_max_pool2d", "avg_pool2d",
    "max_pool2d", "_max_pool2d", "interpolate", "clamp", "clamp_", "contiguous", "clone", "detach",
}
ELEMENTWISE_CALLS = {"add", "add_", "iadd", "sub", "sub_", "isub", "mul", "mul_", "imul", "truediv", "div"}
REDUCE_CALLS = {"mean", "amax", "sum"}
SHAPE_CALLS = {"size", "getattr", "dim"}


@dataclass(frozen=True)
class Segment:
    """`size` channels of `group`, each repeated `repeat` times in a row (flatten of C x H x W)."""

    group: int
    size: int
    repeat: int = 1


Layout = tuple[Segment, ...]
Resizable = nn.modules.conv._ConvNd | nn.Linear  # what produces channels, and whose size attributes follow its weight


@dataclass
class ChannelGroup:
    """Channels that must be pruned together, and why a group is left whole when it is."""

    size: int
    producers: list[str] = field(default_factory=list)
    frozen: str | None = None  # reason it may not be pruned (model input/output)
    keep: list[int] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"producers": self.producers, "channels": self.size,
                "kept": self.size if self.keep is None else len(self.keep), "frozen": self.frozen}


@dataclass
class _ModuleUse:
    """How one module's weights are indexed: by input layout, by output layout."""

    module: Resizable | nn.modules.batchnorm._BatchNorm
    in_layout: Layout | None
    out_layout: Layout | None


def _refuse(node: torch.fx.Node, what: str) -> PruningError:
    return PruningError(
        f"structured pruning cannot follow {what} at '{node.name}'",
        "use --prune magnitude/taylor for this model, or express it with convs, BN, adds, cat and flatten",
    )


_OPERATOR_NAMES: dict[object, str] = {operator.add: "add", operator.iadd: "iadd", operator.mul: "mul", operator.sub: "sub",
                                     operator.truediv: "truediv", operator.getitem: "getitem"}


def _call_name(node: torch.fx.Node) -> str:
    if node.op == "call_method":
        return str(node.target)
    return _OPERATOR_NAMES.get(node.target) or str(getattr(node.target, "__name__", node.target))


class _Tracer:
    """Walks the fx graph once, assigning a channel layout to every tensor value."""

    def __init__(self, model: nn.Module, example: torch.Tensor) -> None:
        was_training = model.training
        try:
            self.graph_module = torch.fx.symbolic_trace(model)
            model.eval()  # shape propagation must not touch batch-norm statistics
            with torch.no_grad():
                ShapeProp(self.graph_module).propagate(example)
        except PruningError:
            raise
        except Exception as error:  # fx raises many types; all mean "not traceable"
            raise PruningError(
                f"structured pruning cannot trace the model with torch.fx ({type(error).__name__}: {error})",
                "make forward() free of data-dependent control flow, or use --prune magnitude/taylor",
            ) from None
        finally:
            model.train(was_training)
        self.modules = dict(self.graph_module.named_modules())
        self.parent: list[int] = []
        self.groups: list[ChannelGroup] = []
        self.uses: dict[str, _ModuleUse] = {}
        self.layouts: dict[torch.fx.Node, Layout | None] = {}

    # union-find over groups
    def new_group(self, size: int, producer: str | None = None, frozen: str | None = None) -> int:
        self.parent.append(len(self.parent))
        self.groups.append(ChannelGroup(size, [producer] if producer else [], frozen))
        return len(self.parent) - 1

    def root(self, group: int) -> int:
        while self.parent[group] != group:
            self.parent[group] = self.parent[self.parent[group]]
            group = self.parent[group]
        return group

    def merge(self, node: torch.fx.Node, a: Layout, b: Layout) -> Layout:
        if [(s.size, s.repeat) for s in a] != [(s.size, s.repeat) for s in b]:
            raise _refuse(node, "an elementwise op between tensors with different channel splits")
        for left, right in zip(a, b):
            ra, rb = self.root(left.group), self.root(right.group)
            if ra != rb:
                self.parent[rb] = ra
                self.groups[ra].producers += self.groups[rb].producers
                self.groups[ra].frozen = self.groups[ra].frozen or self.groups[rb].frozen
        return a

    def shape(self, node: torch.fx.Node) -> tuple[int, ...] | None:
        meta = node.meta.get("tensor_meta")
        return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None

    def run(self) -> None:
        for node in self.graph_module.graph.nodes:
            self.layouts[node] = self.visit(node)

    def visit(self, node: torch.fx.Node) -> Layout | None:
        if node.op == "placeholder":
            shape = self.shape(node)
            return (Segment(self.new_group(shape[1], frozen="model input"), shape[1]),) if shape and len(shape) >= 2 else None
        if node.op == "output":
            for arg in node.all_input_nodes:
                for segment in self.layouts.get(arg) or ():
                    self.groups[self.root(segment.group)].frozen = "model output"
            return None
        if node.op == "call_module":
            return self.visit_module(node)
        if node.op in ("call_function", "call_method"):
            return self.visit_call(node, _call_name(node))
        if node.op == "get_attr":
            raise _refuse(node, "a tensor attribute used directly in forward()")
        return None

    def tensor_inputs(self, node: torch.fx.Node) -> list[torch.fx.Node]:
        return [arg for arg in node.all_input_nodes if self.layouts.get(arg) is not None]

    def layout(self, node: torch.fx.Node) -> Layout:
        """The layout of a value `tensor_inputs` returned."""
        layout = self.layouts.get(node)
        if layout is None:
            raise _refuse(node, "a value without channels")
        return layout

    def visit_module(self, node: torch.fx.Node) -> Layout | None:
        module, name = self.modules[node.target], str(node.target)
        sources = node.all_input_nodes[:1]
        layout = self.layouts.get(sources[0]) if sources else None
        if layout is None:
            raise _refuse(node, f"{type(module).__name__} on a value without channels")
        source = sources[0]
        if name in self.uses:
            raise _refuse(node, f"module '{name}' called more than once")
        if isinstance(module, nn.modules.conv._ConvNd) and not isinstance(module, nn.modules.conv._ConvTransposeNd):
            if module.groups == 1:
                out = (Segment(self.new_group(module.out_channels, name), module.out_channels),)
                self.uses[name] = _ModuleUse(module, layout, out)
                return out
            if module.groups == module.in_channels == module.out_channels:  # depthwise: channels pass through
                self.uses[name] = _ModuleUse(module, None, layout)
                return layout
            raise _refuse(node, f"grouped conv '{name}' (groups={module.groups})")
        if isinstance(module, nn.Linear):
            if len(self.shape(source) or ()) != 2:
                raise _refuse(node, f"Linear '{name}' on a tensor that is not (N, features)")
            out = (Segment(self.new_group(module.out_features, name), module.out_features),)
            self.uses[name] = _ModuleUse(module, layout, out)
            return out
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            self.uses[name] = _ModuleUse(module, None, layout)
            return layout
        if isinstance(module, PASS_THROUGH_MODULES):
            return layout
        if isinstance(module, nn.Flatten) and module.start_dim == 1:
            return self.flatten(node, source, layout)
        raise _refuse(node, f"module type {type(module).__name__} ('{name}')")

    def flatten(self, node: torch.fx.Node, source: torch.fx.Node, layout: Layout) -> Layout:
        in_shape, out_shape = self.shape(source), self.shape(node)
        if not in_shape or not out_shape or len(out_shape) != 2 or out_shape[0] != in_shape[0]:
            raise _refuse(node, "a reshape that does not flatten (N, C, ...) to (N, features)")
        spatial = 1
        for dim in in_shape[2:]:
            spatial *= dim
        return tuple(Segment(s.group, s.size, s.repeat * spatial) for s in layout)

    def visit_call(self, node: torch.fx.Node, name: str) -> Layout | None:
        inputs = self.tensor_inputs(node)
        if not inputs:
            return None
        first = self.layout(inputs[0])
        if name in SHAPE_CALLS:
            return None
        if name in PASS_THROUGH_CALLS:
            return first
        if name in ELEMENTWISE_CALLS:
            if len(inputs) == 2 and len(self.shape(inputs[0]) or ()) == len(self.shape(inputs[1]) or ()):
                return self.merge(node, first, self.layout(inputs[1]))
            if len(inputs) == 1:
                return first
            raise _refuse(node, f"'{name}' with broadcasting across channel layouts")
        if name == "cat":
            return self.concatenate(node, inputs)
        if name == "flatten":
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            if start != 1:
                raise _refuse(node, f"flatten from dim {start}")
            return self.flatten(node, inputs[0], first)
        if name in ("view", "reshape"):
            if -1 not in node.args[1:]:
                raise _refuse(node, f"{name}() with a hard-coded feature size (it would not shrink)")
            return self.flatten(node, inputs[0], first)
        if name in REDUCE_CALLS:
            dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
            rank = len(self.shape(inputs[0]) or ())
            dim_list = [dims] if isinstance(dims, int) else list(dims) if isinstance(dims, (list, tuple)) else []
            if dim_list and all(isinstance(d, int) and d % rank >= 2 for d in dim_list):
                return first
            raise _refuse(node, f"'{name}' over the channel or batch dimension")
        raise _refuse(node, f"operation '{name}'")

    def concatenate(self, node: torch.fx.Node, inputs: list[torch.fx.Node]) -> Layout:
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        rank = len(self.shape(inputs[0]) or ())
        if not isinstance(dim, int):
            raise _refuse(node, "cat along a computed dimension")
        if dim % rank == 1:
            return tuple(segment for source in inputs for segment in self.layout(source))
        if dim % rank >= 2:
            merged = self.layout(inputs[0])
            for source in inputs[1:]:
                merged = self.merge(node, merged, self.layout(source))
            return merged
        raise _refuse(node, "cat along the batch dimension")


@dataclass
class ChannelPlan:
    """The coupled channel groups of a model and which channels of each to keep."""

    tracer: _Tracer
    groups: dict[int, ChannelGroup]

    def indices(self, layout: Layout) -> torch.Tensor:
        positions: list[int] = []
        offset = 0
        for segment in layout:
            keep = self.groups[self.tracer.root(segment.group)].keep
            for channel in keep if keep is not None else range(segment.size):
                start = offset + channel * segment.repeat
                positions.extend(range(start, start + segment.repeat))
            offset += segment.size * segment.repeat
        return torch.tensor(positions, dtype=torch.long)

    def prunable(self) -> list[ChannelGroup]:
        return [group for group in self.groups.values() if group.frozen is None]

    def kept_outputs(self) -> dict[str, torch.Tensor]:
        """Module name -> output channels that survive, for every module whose outputs carry channels."""
        return {name: self.indices(use.out_layout) for name, use in self.tracer.uses.items() if use.out_layout}


def channels_to_keep(size: int, ratio: float) -> int:
    return max(1, int(round(size * (1.0 - ratio))))


def _channel_scores(module: nn.Module, taylor: dict[nn.Module, torch.Tensor] | None) -> torch.Tensor:
    weight = taylor[module] if taylor is not None else cast(Resizable, module).weight.detach().abs()  # a producer
    score = weight.flatten(1).sum(1)
    return score / (score.max() + 1e-12)  # each producer votes on the same scale


def plan_channel_pruning(
    model: nn.Module,
    example: torch.Tensor,
    ratio: float,
    importance: ChannelImportance = "l1",
    data: LabelledArrays | None = None,
) -> ChannelPlan:
    """Trace the coupled groups and choose, per group, the `1 - ratio` most important channels."""
    check_ratio(ratio)
    if importance not in ("l1", "taylor"):
        raise PruningError(f"unknown channel importance '{importance}'", "use l1 or taylor")
    tracer = _Tracer(model, example)
    tracer.run()
    groups = {index: tracer.groups[index] for index in range(len(tracer.groups)) if tracer.root(index) == index}
    taylor = taylor_scores(model, data) if importance == "taylor" else None
    for group in groups.values():
        if group.frozen is not None or not group.producers:
            group.frozen = group.frozen or "no producing layer"
            continue
        score = torch.stack([_channel_scores(tracer.uses[name].module, taylor) for name in group.producers]).sum(0)
        keep = torch.topk(score, channels_to_keep(group.size, ratio)).indices
        group.keep = sorted(keep.tolist())
    return ChannelPlan(tracer, groups)


def _slice(tensor: torch.Tensor | None, dim: int, index: torch.Tensor) -> Any:
    return None if tensor is None else tensor.detach().index_select(dim, index).clone()


def _shrink(
    module: Resizable | nn.modules.batchnorm._BatchNorm, out_index: torch.Tensor | None, in_index: torch.Tensor | None
) -> None:
    """Slice one module's parameters and buffers to the kept channels and fix its size attributes."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        if out_index is None:  # a batch norm's channels are its input's: none known, none to cut
            return
        for attr in ("weight", "bias"):
            if getattr(module, attr) is not None:
                setattr(module, attr, nn.Parameter(_slice(getattr(module, attr), 0, out_index)))
        for attr in ("running_mean", "running_var"):
            if getattr(module, attr) is not None:
                setattr(module, attr, _slice(getattr(module, attr), 0, out_index))
        module.num_features = len(out_index)
        return
    weight = module.weight
    if out_index is not None:
        weight = _slice(weight, 0, out_index)
        if module.bias is not None:
            module.bias = nn.Parameter(_slice(module.bias, 0, out_index))
    if in_index is not None:
        weight = _slice(weight, 1, in_index)
    module.weight = nn.Parameter(weight.detach().clone())
    _set_size_attributes(module)


def _set_size_attributes(module: Resizable) -> None:
    """Make a Conv/Linear's size attributes agree with its (sliced) weight."""
    weight = module.weight
    if isinstance(module, nn.Linear):
        module.out_features, module.in_features = weight.shape[0], weight.shape[1]
    elif module.groups > 1:  # depthwise
        module.in_channels = module.out_channels = module.groups = weight.shape[0]
    else:
        module.out_channels, module.in_channels = weight.shape[0], weight.shape[1]


def load_resized(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """Load a channel-pruned model's state_dict into its unpruned architecture, resizing each layer to match.

    Pruned students are saved as plain state_dicts (read back with weights_only=True, never unpickled code):
    the architecture comes from the model that was pruned, the layer sizes from the saved tensors.
    """
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            for attr in ("weight", "bias", "running_mean", "running_var"):
                saved = state_dict.get(prefix + attr)
                current = getattr(module, attr)
                if saved is not None and current is not None and saved.shape != current.shape:
                    replacement = torch.empty_like(saved)
                    setattr(module, attr, nn.Parameter(replacement) if isinstance(current, nn.Parameter) else replacement)
            if module.running_mean is not None:
                module.num_features = module.running_mean.shape[0]
        elif isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            saved = state_dict.get(prefix + "weight")
            if saved is None or saved.shape == module.weight.shape:
                continue
            module.weight = nn.Parameter(torch.empty_like(saved))
            if module.bias is not None and prefix + "bias" in state_dict:
                module.bias = nn.Parameter(torch.empty_like(state_dict[prefix + "bias"]))
            _set_size_attributes(module)
    model.load_state_dict(state_dict, strict=True)
    return model


def apply_channel_plan(model: nn.Module, plan: ChannelPlan) -> nn.Module:
    """Physically remove the channels the plan drops, in place."""
    for use in plan.tracer.uses.values():
        out_index = plan.indices(use.out_layout) if use.out_layout is not None else None
        in_index = plan.indices(use.in_layout) if use.in_layout is not None else None
        _shrink(use.module, out_index, in_index)
    return model


@dataclass(frozen=True)
class ChannelPruneResult:
    params_before: int
    params_after: int
    groups: list[dict[str, Any]]


def prune_channels(
    model: nn.Module,
    example: torch.Tensor,
    ratio: float,
    importance: ChannelImportance = "l1",
    data: LabelledArrays | None = None,
) -> ChannelPruneResult:
    """Remove `ratio` of the channels of every prunable group in place; the output shape is unchanged."""
    params_before = sum(p.numel() for p in model.parameters())
    was_training = model.training
    model.eval()
    with torch.no_grad():
        expected = model(example).shape
    plan = plan_channel_pruning(model, example, ratio, importance, data)
    apply_channel_plan(model, plan)
    with torch.no_grad():
        produced = model(example).shape
    if produced != expected:  # pragma: no cover - a tracer bug, not a user error
        raise PruningError(f"pruning changed the output shape {tuple(expected)} -> {tuple(produced)}", "report this model")
    model.train(was_training)
    return ChannelPruneResult(params_before, sum(p.numel() for p in model.parameters()), [g.to_dict() for g in plan.groups.values()])
