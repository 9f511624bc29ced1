"""Diagnosis: where does int8 damage the model, layer by layer?

Runs the fp32 model and its QDQ model on the same held-out inputs with ONNX Runtime's
QDQ debugging helpers (`onnxruntime.quantization.qdq_loss_debug`), then scores every
quantized activation (fp32 vs the int8 model's dequantized value: SQNR dB and cosine)
and every quantized weight. SQNR of a tensor alone accumulates everything upstream, so
nodes are ranked by the SQNR they *lose* between their inputs and their output: the
node where the signal suddenly drops is the one to keep in fp32, not the last layer.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from edgecompress.source.layout import BatchLayout
from edgecompress.core.logs import onnxruntime_logs
from edgecompress.core.runtime import session_with_outputs
from edgecompress.core.progress import warn

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
DQ_SUFFIX = "_DequantizeLinear_Output"
SQNR_CAP_DB = 100.0  # a tensor the int8 model reproduces exactly would otherwise score +inf


@dataclass(frozen=True)
class TensorError:
    """Error of one quantized tensor: fp32 value vs what the int8 model computes."""

    tensor: str
    kind: str  # "activation" | "weight"
    sqnr_db: float
    cosine: float


@dataclass(frozen=True)
class LayerError:
    """One quantized compute node: the error at its output and what it added there."""

    node: str
    op_type: str
    output: str  # the quantized tensor its result is measured at
    output_sqnr_db: float
    output_cosine: float
    input_sqnr_db: float  # worst SQNR among its quantized activation inputs
    weight_sqnr_db: float | None
    lost_db: float  # input_sqnr_db - output_sqnr_db: the damage this node adds
    input_producers: tuple[str, ...] = ()  # nodes whose quantized outputs feed this one
    # noise-to-signal power this node adds (output's minus input's, linear): ranks nodes whose inputs are exact (a
    # dynamic int8 MatMul quantizes its own input) with those deep in the graph, where dB lost would favour the first
    added_noise: float | None = None

    @property
    def exclusion_group(self) -> tuple[str, ...]:
        """Nodes to keep in fp32 to take this node's damage out: ORT quantizes a tensor when
        either its producer or its consumer is quantized, so both sides must go."""
        return (self.node, *self.input_producers)

    def to_dict(self) -> dict[str, Any]:
        data = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(self).items()}
        data["input_producers"] = list(self.input_producers)
        data["added_noise"] = None if self.added_noise is None else float(f"{self.added_noise:.3g}")
        return data


@dataclass(frozen=True)
class Diagnosis:
    layers: list[LayerError]  # in graph order
    tensors: list[TensorError]
    samples: int

    def ranking(self) -> list[LayerError]:
        """Most damaging first: SQNR lost across the node, then its weight's SQNR."""
        return sorted(self.layers, key=lambda layer: (-(layer.added_noise if layer.added_noise is not None else layer.lost_db),
                                                      layer.weight_sqnr_db or SQNR_CAP_DB))

    def worst(self, count: int = 5) -> list[LayerError]:
        return self.ranking()[:count]

    def to_dict(self) -> dict[str, Any]:
        return {"samples": self.samples, "layers": [layer.to_dict() for layer in self.layers]}


class _ArrayReader:
    """CalibrationDataReader over held-out arrays (the helpers take that interface)."""

    def __init__(self, inputs: dict[str, np.ndarray], batch_size: int, layout: BatchLayout) -> None:
        self._batches: Iterator[dict[str, np.ndarray]] = iter(list(layout.batches(inputs, batch_size)))

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self._batches


def _flat(values: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    """One float64 vector from a tensor, a scalar, or a list of per-batch tensors of any dtype."""
    parts = [np.ravel(np.asarray(part, dtype=np.float64)) for part in (values if isinstance(values, (list, tuple)) else [values])]
    return np.concatenate(parts) if parts else np.zeros(0)


def _sqnr_and_cosine(reference: Sequence[np.ndarray] | np.ndarray, value: Sequence[np.ndarray] | np.ndarray) -> tuple[float, float]:
    """10·log10(signal / noise power) and the cosine of two tensors, flattened once.

    Our own: ORT's SQNR helper fails on scalars (`len()` of a numpy float), and its
    `compute_activation_error` flattens every tensor four times per metric.
    """
    signal, other = _flat(reference), _flat(value)
    return _sqnr_and_cosine_of_sums(float(np.dot(signal, signal)), float(np.sum((signal - other) ** 2)),
                                    float(np.dot(signal, other)), float(np.dot(other, other)))


def _sqnr_and_cosine_of_sums(signal: float, noise: float, dot: float, other: float) -> tuple[float, float]:
    """SQNR (capped) and cosine from Σref², Σ(ref − value)², Σref·value and Σvalue²."""
    sqnr = SQNR_CAP_DB if noise == 0.0 else min(SQNR_CAP_DB, 10.0 * float(np.log10(max(signal, 1e-30) / noise)))
    norm = np.sqrt(signal * other)
    return sqnr, float(dot / norm) if norm > 0 else 1.0


def _activations(model_path: Path, inputs: dict[str, np.ndarray], workdir: Path, batch_size: int,
                 layout: BatchLayout) -> dict[str, list[np.ndarray]]:
    from onnxruntime.quantization.qdq_loss_debug import collect_activations, modify_model_output_intermediate_tensors

    augmented = workdir / f"{model_path.stem}.augmented.onnx"
    modify_model_output_intermediate_tensors(str(model_path), str(augmented))
    return collect_activations(str(augmented), _ArrayReader(inputs, batch_size, layout))


def weight_pairs(fp32_path: Path, qdq_path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Quantized weight name → (fp32 value, value the int8 model computes with).

    Weights are matched through the node that consumes them (same node name, same input slot), not
    by tensor name: bias correction writes new bias tensors, and ORT's name matching then logged
    one error per renamed tensor. A weight with no fp32 counterpart (a bias the correction added) is skipped.
    """
    import onnx

    from edgecompress.quantize.biascorrect import dequantize

    fp32 = onnx.load(str(fp32_path)).graph
    qdq = onnx.load(str(qdq_path)).graph
    fp32_values = {init.name: onnx.numpy_helper.to_array(init) for init in fp32.initializer}
    fp32_nodes = {node.name: node for node in fp32.node if node.name}
    qdq_initializers = {init.name: init for init in qdq.initializer}
    dequantizers = {node.output[0]: node for node in qdq.node if node.op_type == "DequantizeLinear" and node.input[0] in qdq_initializers}
    pairs = {}
    for node in qdq.node:
        original = fp32_nodes.get(node.name)
        for slot, name in enumerate(node.input):
            dq = dequantizers.get(name)
            if dq is None or original is None or slot >= len(original.input) or original.input[slot] not in fp32_values:
                continue
            reference = fp32_values[original.input[slot]]
            value = dequantize(dq, qdq_initializers)
            if reference.shape == value.shape:
                pairs[dq.input[0].removesuffix("_quantized")] = (reference, value)
    return pairs


def tensor_errors(fp32_path: Path, qdq_path: Path, inputs: dict[str, np.ndarray], batch_size: int = 16,
                  layout: BatchLayout | None = None) -> list[TensorError]:
    """SQNR and cosine of every quantized activation (ORT's collection helpers) and weight."""
    from onnxruntime.quantization.qdq_loss_debug import create_activation_matching

    with tempfile.TemporaryDirectory(prefix="edgecompress-diagnose-") as tmp:
        layout = layout or BatchLayout({})
        float_acts = _activations(Path(fp32_path), inputs, Path(tmp), batch_size, layout)
        qdq_acts = _activations(Path(qdq_path), inputs, Path(tmp), batch_size, layout)
    matching = {k: v for k, v in create_activation_matching(qdq_acts, float_acts).items() if "float" in v}
    activations = {name: (match["float"], match["post_qdq"]) for name, match in matching.items()}
    weights = weight_pairs(Path(fp32_path), Path(qdq_path))
    return [TensorError(name, "activation", *_sqnr_and_cosine(*pair)) for name, pair in activations.items()] + [
        TensorError(name, "weight", *_sqnr_and_cosine(*pair)) for name, pair in weights.items()
    ]


def _measured_output(node, consumers: dict[str, list], measured: set[str]) -> str | None:
    """The first quantized tensor downstream of `node` through single-consumer float nodes."""
    tensor = node.output[0]
    for _ in range(4):
        name = tensor.removesuffix("_QuantizeLinear_Input")  # a graph output keeps its name after its QDQ
        if name in measured:
            return name
        following = [n for n in consumers.get(tensor, []) if n.op_type not in QDQ_OPS]
        if len(following) != 1:
            return None
        tensor = following[0].output[0]
    return None


def layer_errors(qdq_path: Path, errors: list[TensorError]) -> list[LayerError]:
    """Attribute tensor errors to the quantized compute nodes of the QDQ graph."""
    import onnx

    graph = onnx.load(str(qdq_path), load_external_data=False).graph
    initializers = {init.name for init in graph.initializer}
    activation = {e.tensor: e for e in errors if e.kind == "activation"}
    weight = {e.tensor: e for e in errors if e.kind == "weight"}
    dq_source = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    producer = {out: n.name for n in graph.node if n.op_type not in QDQ_OPS for out in n.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    layers = []
    for node in graph.node:
        if node.op_type in QDQ_OPS:
            continue
        sources = [dq_source[name] for name in node.input if name in dq_source]
        act_inputs = [s.removesuffix("_QuantizeLinear_Output") for s in sources if s not in initializers]
        weight_inputs = [s.removesuffix("_quantized") for s in sources if s in initializers]
        output = _measured_output(node, consumers, set(activation))
        if not act_inputs or output is None:
            continue  # not a quantized compute node
        input_sqnr = min((activation[a].sqnr_db for a in act_inputs if a in activation), default=SQNR_CAP_DB)
        weight_sqnrs = [weight[w].sqnr_db for w in weight_inputs if w in weight]
        out = activation[output]
        producers = tuple(dict.fromkeys(producer[a] for a in act_inputs if a in producer))
        layers.append(
            LayerError(
                node.name, node.op_type, output, out.sqnr_db, out.cosine, input_sqnr,
                min(weight_sqnrs) if weight_sqnrs else None, max(0.0, input_sqnr - out.sqnr_db), producers,
            )
        )
    return layers


# ORT's helpers keep every intermediate tensor of both models in memory; for CNNs those sum
# to roughly 100x the input per sample, times ~4 for fp32 + QDQ (pre-Q, Q, DQ) copies.
ACTIVATION_BYTES_PER_INPUT_BYTE = 400
DIAGNOSE_MEMORY_BYTES = 1 << 30


def samples_within_memory(inputs: dict[str, np.ndarray], max_samples: int, layout: BatchLayout | None = None) -> int:
    """How many samples to diagnose on so that the kept activations stay near 1 GiB."""
    layout = layout or BatchLayout({})
    per_sample = sum(array.nbytes for array in layout.take(inputs, 0, 1).values()) * ACTIVATION_BYTES_PER_INPUT_BYTE
    count = layout.count(inputs)
    return max(1, min(max_samples, count, DIAGNOSE_MEMORY_BYTES // max(1, per_sample)))


def diagnose(fp32_path: Path, qdq_path: Path, inputs: dict[str, np.ndarray], max_samples: int = 64,
             layout: BatchLayout | None = None) -> Diagnosis:
    """Per-tensor and per-layer int8 error on (up to `max_samples` of) held-out inputs."""
    layout = layout or BatchLayout({})
    count = samples_within_memory(inputs, max_samples, layout)
    sample = {name: np.ascontiguousarray(array) for name, array in layout.take(inputs, 0, count).items()}
    with onnxruntime_logs():
        if dynamic_int8_nodes(Path(qdq_path)):
            return dynamic_diagnosis(Path(fp32_path), Path(qdq_path), sample, layout, count)
        errors = tensor_errors(Path(fp32_path), Path(qdq_path), sample, layout=layout)
    return Diagnosis(layer_errors(Path(qdq_path), errors), errors, count)


DYNAMIC_SUFFIX = "_quant"  # ORT's quantize_dynamic names a quantized node's integer MatMul NAME_quant


def dynamic_int8_nodes(int8_path: Path) -> list[str]:
    """The fp32 node names a dynamically quantized model computes in int8 (its MatMulInteger nodes)."""
    import onnx

    graph = onnx.load(str(int8_path), load_external_data=False).graph
    return [n.name.removesuffix(DYNAMIC_SUFFIX) for n in graph.node if n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul")]


class PairStatistics:
    """Running SQNR and cosine of one tensor in two models, batch by batch (no activation is kept)."""

    def __init__(self) -> None:
        self.signal = self.noise = self.dot = self.other = 0.0

    def add(self, reference: np.ndarray, value: np.ndarray) -> None:
        ref, got = reference.astype(np.float64).ravel(), value.astype(np.float64).ravel()
        self.signal += float(ref @ ref)
        self.other += float(got @ got)
        self.dot += float(ref @ got)
        self.noise += float((ref - got) @ (ref - got))

    def error(self, tensor: str) -> TensorError:
        return TensorError(tensor, "activation", *_sqnr_and_cosine_of_sums(self.signal, self.noise, self.dot, self.other))


def dynamic_diagnosis(fp32_path: Path, int8_path: Path, inputs: dict[str, np.ndarray], layout: BatchLayout, count: int,
                      batch_size: int = 16) -> Diagnosis:
    """Per-MatMul error of a dynamically quantized model: each int8 MatMul's input and output against fp32's (the
    dynamic quantizer keeps the fp32 tensor names), so the node whose output loses most is ranked first."""
    import onnx

    quantized = set(dynamic_int8_nodes(int8_path))
    nodes = [n for n in onnx.load(str(fp32_path), load_external_data=False).graph.node if n.name in quantized]
    tensors = list(dict.fromkeys(name for n in nodes for name in (n.input[0], n.output[0])))
    fp32, int8 = (session_with_outputs(onnx.load(str(path)), tensors) for path in (fp32_path, int8_path))
    statistics = {name: PairStatistics() for name in tensors}
    for batch in layout.batches(inputs, batch_size):
        for name, reference, value in zip(tensors, fp32.run(tensors, batch), int8.run(tensors, batch)):
            statistics[name].add(reference, value)
    errors = {name: stats.error(name) for name, stats in statistics.items()}
    layers = [input_output_error(n.name, n.op_type, errors[n.input[0]], errors[n.output[0]]) for n in nodes]
    return Diagnosis(layers, list(errors.values()), count)


def input_output_error(node: str, op_type: str, at_input: TensorError, at_output: TensorError) -> LayerError:
    """A layer judged by the error at its input and at its output: what it loses (dB) and the noise it adds."""
    def noise(error: TensorError) -> float:
        return 0.0 if error.sqnr_db >= SQNR_CAP_DB else 10.0 ** (-error.sqnr_db / 10.0)

    return LayerError(node, op_type, at_output.tensor, at_output.sqnr_db, at_output.cosine, at_input.sqnr_db, None,
                      max(0.0, at_input.sqnr_db - at_output.sqnr_db), added_noise=max(0.0, noise(at_output) - noise(at_input)))


def layer_label(node: str) -> str:
    """'/layer1/0/conv2/Conv' -> 'conv2': the module that owns an exported node; a top-level node keeps its own name."""
    parts = [part for part in node.split("/") if part]
    if len(parts) > 1:
        return parts[-2]
    return parts[0] if parts else node


def diagnose_or_warn(fp32_path: Path, qdq_path: Path, inputs: dict[str, np.ndarray], max_samples: int = 64,
                     layout: BatchLayout | None = None) -> Diagnosis | None:
    """`diagnose`, but a failure is one warning and None: diagnosis explains a build, it never stops one."""
    try:
        return diagnose(fp32_path, qdq_path, inputs, max_samples, layout)
    except Exception as exc:  # any failure in ORT's helpers or ours: the build goes on without per-layer figures
        warn(f"diagnosis skipped ({exc.__class__.__name__}: {' '.join(str(exc).split())[:200]}); no per-layer errors this build")
        return None


def plot_layers(layers: list[dict[str, Any]], out_path: Path) -> Path:
    """Per-layer output SQNR in graph order (report's quantization plot)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edgecompress.core.artifacts import atomic_path

    figure, axis = plt.subplots(figsize=(max(6.0, 0.25 * len(layers)), 3.5))
    values = [layer["output_sqnr_db"] for layer in layers]
    axis.bar(range(len(values)), values, color=["tab:red" if layer["lost_db"] > 10 else "tab:blue" for layer in layers])
    axis.set_xticks(range(len(values)), [layer_label(layer["node"]) for layer in layers], rotation=90, fontsize=6)
    axis.set_ylabel("output SQNR (dB)")
    axis.set_title("int8 vs fp32 per layer (higher is better; red: lost > 10 dB)")
    figure.tight_layout()
    with atomic_path(out_path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    plt.close(figure)
    return Path(out_path)
