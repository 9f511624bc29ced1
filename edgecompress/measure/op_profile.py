"""Where an ONNX Runtime engine's time goes: per operator type, per node, and in float islands.

An int8 engine is only as fast as the share of its time that runs in int8 kernels. ONNX Runtime's profiler
(SessionOptions.enable_profiling) records every kernel's duration; the optimized graph of the same session
says what each node computes in. A *float island* is a connected run of float operators fed by a
DequantizeLinear and drained by a QuantizeLinear: the int8 tensor is converted to float, computed on in
float (a squeeze-excite's Sigmoid and Mul, a HardSwish, a Resize...), and converted back. Its cost is its
own float kernels plus the Q/DQ conversions around it, which `inspect` shows so a user sees why an engine
is slow.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

CONVERT_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear")
# kernels that compute on int8/uint8 data (ORT's QLinear* family and its integer GEMMs)
INT8_PREFIXES = ("QLinear", "QGemm", "QAttention", "QEmbed")
INT8_OPS = ("ConvInteger", "MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul")
# operators on shapes and indices: no arithmetic on the model's activations
SHAPE_OPS = ("Shape", "Size", "Constant", "ConstantOfShape", "Range")


@dataclass(frozen=True)
class OpTime:
    """One operator type's share of a run: its kernels' summed time per run, and what it computes in."""

    op_type: str
    kind: str  # int8 | float | convert (Q/DQ) | other (shape/index glue)
    nodes: int
    ms: float
    fraction: float


@dataclass(frozen=True)
class NodeTime:
    node: str
    op_type: str
    kind: str
    ms: float
    fraction: float


@dataclass(frozen=True)
class FloatIslands:
    """Float operators between int8 ones in the engine's graph, and the Q/DQ conversions around them."""

    count: int  # connected float regions entered from a DequantizeLinear and left through a QuantizeLinear
    float_ops: dict[str, int]  # op type -> nodes in islands
    convert_nodes: int  # Q and DQ nodes on the islands' borders
    ms: float  # per run: the islands' float kernels plus their border conversions
    fraction: float


@dataclass(frozen=True)
class OperatorProfile:
    """One engine's time, by operator type (slowest first), its slowest nodes, and its float islands."""

    runs: int
    total_ms: float  # summed kernel time per run (excludes session overhead between kernels)
    by_op: list[OpTime]
    top_nodes: list[NodeTime]
    islands: FloatIslands | None  # None: not counted (an OpenVINO engine: its graph is not an ONNX graph)
    by_kind: dict[str, float] = field(default_factory=dict)  # kind -> fraction of the kernel time

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OperatorProfile:
        return cls(
            runs=data["runs"], total_ms=data["total_ms"], by_op=[OpTime(**o) for o in data["by_op"]],
            top_nodes=[NodeTime(**n) for n in data["top_nodes"]],
            islands=FloatIslands(**data["islands"]) if data.get("islands") else None,
            by_kind=data.get("by_kind", {}),
        )


def op_kind(op_type: str, first_input_int: bool = False) -> str:
    """What an operator computes in: int8 kernels, Q/DQ conversions, float, or shape glue.

    `first_input_int`: the node's data input is 8-bit (a MaxPool, Transpose or Reshape on int8 data runs in int8)."""
    if op_type in CONVERT_OPS:
        return "convert"
    if op_type.startswith(INT8_PREFIXES) or op_type in INT8_OPS:
        return "int8"
    if op_type in SHAPE_OPS:
        return "other"
    return "int8" if first_input_int else "float"


def node_kinds(graph) -> list[str]:
    """What each node of `graph` computes in (op_kind), following tensor types through the graph in order: 8-bit
    data comes out of Q and int8 kernels and 8-bit initializers; shapes and indices (int64, int32) out of Shape, Size
    and integer initializers. A data-movement op (MaxPool, Transpose, Reshape...) is int8 on 8-bit data, glue on
    indices, float otherwise."""
    import onnx

    eight_bit = {onnx.TensorProto.INT8, onnx.TensorProto.UINT8}
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}
    quantized = {t.name for t in graph.initializer if t.data_type in eight_bit}
    indices = {t.name for t in graph.initializer if t.data_type not in eight_bit | floats}
    indices |= {v.name for v in graph.input if v.type.tensor_type.elem_type not in eight_bit | floats}
    kinds = []
    for node in graph.node:  # ONNX graphs are topologically sorted
        first = node.input[0] if node.input else ""
        if node.op_type in ("Shape", "Size") or (first in indices and op_kind(node.op_type) == "float"):
            kinds.append("other")
            indices.update(node.output)
            continue
        kind = op_kind(node.op_type, first in quantized)
        kinds.append(kind)
        if node.op_type != "DequantizeLinear" and not node.op_type.endswith("ToFloat") and \
                (kind == "int8" or node.op_type in ("QuantizeLinear", "DynamicQuantizeLinear")):
            quantized.update(node.output)
    return kinds


def float_islands(graph, node_ms: dict[str, float] | None = None, total_ms: float = 0.0) -> FloatIslands:
    """The float islands of an (optimized) ONNX graph; with `node_ms`, the time they and their borders take."""
    nodes = list(graph.node)
    producers = {out: i for i, node in enumerate(nodes) for out in node.output}
    consumers: dict[str, list[int]] = defaultdict(list)
    for i, node in enumerate(nodes):
        for name in node.input:
            consumers[name].append(i)
    is_float = [kind == "float" for kind in node_kinds(graph)]
    seen: set[int] = set()
    count, borders, island_ms = 0, 0, 0.0
    ops: dict[str, int] = defaultdict(int)
    node_ms = node_ms or {}
    for start in range(len(nodes)):
        if not is_float[start] or start in seen:
            continue
        region, stack = [], [start]
        seen.add(start)
        while stack:  # the connected float region, over float tensors in either direction
            i = stack.pop()
            region.append(i)
            neighbours = [producers[name] for name in nodes[i].input if name in producers]
            neighbours += [j for name in nodes[i].output for j in consumers.get(name, [])]
            for j in neighbours:
                if is_float[j] and j not in seen:
                    seen.add(j)
                    stack.append(j)
        entries = {producers[name] for i in region for name in nodes[i].input
                   if name in producers and nodes[producers[name]].op_type == "DequantizeLinear"}
        exits = {j for i in region for name in nodes[i].output for j in consumers.get(name, [])
                 if nodes[j].op_type == "QuantizeLinear"}
        if not entries or not exits:
            continue  # float before the first Q (the input) or after the last DQ (the output): not an island
        count += 1
        borders += len(entries) + len(exits)
        for i in region:
            ops[nodes[i].op_type] += 1
        island_ms += sum(node_ms.get(nodes[i].name, 0.0) for i in [*region, *entries, *exits])
    fraction = island_ms / total_ms if total_ms else 0.0
    return FloatIslands(count, dict(sorted(ops.items(), key=lambda kv: -kv[1])), borders, island_ms, fraction)


def kernel_times(events: list[dict[str, Any]], skip_runs: int) -> tuple[dict[str, tuple[str, float]], int]:
    """node name -> (op type, ms per run) from an ONNX Runtime profile's events (Chrome trace JSON), leaving out
    the first `skip_runs` runs (warm-up: allocations, lazy weight packing); also the number of runs kept."""
    run_ends = sorted(e["ts"] + e["dur"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    kept_runs = len(run_ends) - skip_runs
    if kept_runs <= 0:
        raise ValueError(f"the profile holds {len(run_ends)} runs, not more than the {skip_runs} warm-up runs")
    after = run_ends[skip_runs - 1] if skip_runs else -1
    per_node: dict[str, list[Any]] = {}
    for event in events:
        if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time") or event["ts"] < after:
            continue
        entry = per_node.setdefault(event["name"][: -len("_kernel_time")], [event.get("args", {}).get("op_name", "?"), 0.0])
        entry[1] += event["dur"] / 1000.0
    return {node: (op, total / kept_runs) for node, (op, total) in per_node.items()}, kept_runs


def profile_operators(model_path: Path, feeds: dict[str, np.ndarray], threads: int = 0, level: str = "all",
                      runs: int = 20, warmup: int = 3, top: int = 10) -> OperatorProfile:
    """Run an ONNX model with ONNX Runtime's profiler and aggregate its kernel times.

    The session is the engine's (the profile's threads and optimization level); the graph whose float islands
    are counted is the one the same optimizer writes for that level (node names are the profile's), so the
    breakdown describes what actually ran."""
    import onnx
    import onnxruntime as ort

    from edgecompress.core.runtime import session_options

    with tempfile.TemporaryDirectory(prefix="edgecompress-profile-") as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        ort.InferenceSession(str(model_path), session_options(threads, level, optimized_path=optimized),
                             providers=["CPUExecutionProvider"])
        options = session_options(threads, level)
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(tmp, "ort-profile")
        session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        for _ in range(warmup + runs):
            session.run(None, feeds)
        events = json.loads(Path(session.end_profiling()).read_text())
        graph = onnx.load(str(optimized), load_external_data=False).graph
    times, kept = kernel_times(events, warmup)
    return summarize(graph, times, kept, top)


def summarize(graph, times: dict[str, tuple[str, float]], runs: int, top: int = 10,
              kinds: dict[str, str] | None = None) -> OperatorProfile:
    """Aggregate per-node kernel times by operator type and kind; count the float islands of `graph` (None: not
    counted, and `kinds` says what each node computes in)."""
    if graph is not None:
        kinds = {n.name: kind for n, kind in zip(graph.node, node_kinds(graph))}
    kinds = kinds or {}
    total = sum(ms for _, ms in times.values())
    grouped: dict[tuple[str, str], list[float]] = defaultdict(list)
    for node, (op_type, ms) in times.items():
        grouped[(op_type, kinds.get(node, op_kind(op_type)))].append(ms)
    by_op = sorted((OpTime(op, kind, len(values), sum(values), sum(values) / total if total else 0.0)
                    for (op, kind), values in grouped.items()), key=lambda o: -o.ms)
    nodes = sorted(times.items(), key=lambda kv: -kv[1][1])[:top]
    top_nodes = [NodeTime(node, op, kinds.get(node, op_kind(op)), ms, ms / total if total else 0.0) for node, (op, ms) in nodes]
    by_kind: dict[str, float] = defaultdict(float)
    for entry in by_op:
        by_kind[entry.kind] += entry.fraction
    islands = None if graph is None else float_islands(graph, {node: ms for node, (_, ms) in times.items()}, total)
    return OperatorProfile(runs, total, by_op, top_nodes, islands, dict(by_kind))


def openvino_kind(node_type: str, exec_type: str) -> str:
    """What an OpenVINO CPU kernel computes in, from its primitive name (e.g. brgconv_avx512_I8, jit_avx512_f32)."""
    if node_type in ("FakeQuantize", "Convert"):
        return "convert"
    exec_type = exec_type.lower()
    if "i8" in exec_type or "u8" in exec_type:
        return "int8"
    if any(kind in exec_type for kind in ("f32", "bf16", "f16")):
        return "float"
    return "other"


def profile_openvino(model_path: Path, feeds: dict[str, np.ndarray], config: dict[str, Any], runs: int = 20,
                     warmup: int = 3, top: int = 10) -> OperatorProfile:
    """The same breakdown for an OpenVINO engine, from its CPU plugin's performance counters (PERF_COUNT): per
    executed primitive, its time and precision (FakeQuantize and Convert count as conversions)."""
    import openvino as ov

    request = ov.Core().compile_model(str(model_path), "CPU", {**config, "PERF_COUNT": True}).create_infer_request()
    for _ in range(warmup):
        request.infer(feeds)
    totals: dict[str, list[Any]] = {}
    kinds: dict[str, str] = {}
    for _ in range(runs):
        request.infer(feeds)
        for info in request.get_profiling_info():
            if info.status != info.Status.EXECUTED:
                continue
            entry = totals.setdefault(info.node_name, [info.node_type, 0.0])
            entry[1] += info.real_time.total_seconds() * 1000.0
            kinds[info.node_name] = openvino_kind(info.node_type, info.exec_type)
    times = {node: (op, ms / runs) for node, (op, ms) in totals.items()}
    return summarize(None, times, runs, top, kinds)
