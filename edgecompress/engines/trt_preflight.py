"""TensorRT preflight: find what TensorRT's ONNX parser (and DLA) will reject, on any host.

The TensorRT engine for a Jetson is built on the Jetson, far from the workstation, so
a model the parser rejects there costs a copy and a long wait. This check needs only
`onnx`: it walks every node and compares it with the parser's support matrix — onnx-tensorrt's
own `docs/operators.md`, stored as data in `trt_ops/` with the commit it was taken from —
and with DLA's narrower layer list, and names the offending nodes before anything leaves
the machine.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
from onnx import numpy_helper

from edgecompress.core.errors import EngineBuildError
from edgecompress.export.graph import node_attribute

OPERATOR_TABLES = Path(__file__).with_name("trt_ops")


@dataclass(frozen=True)
class OperatorTable:
    """onnx-tensorrt's operator support matrix for one TensorRT major, as data (sources recorded in the file)."""

    trt_major: int
    opset_max: int
    operators: dict[str, bool]  # op type -> supported; an op missing here is undocumented
    added_in: dict[str, str]  # ops only later minor releases of this major parse
    sources: tuple[dict[str, Any], ...]

    def supported(self) -> frozenset[str]:
        return frozenset(op for op, ok in self.operators.items() if ok)

    def unsupported(self) -> frozenset[str]:
        return frozenset(op for op, ok in self.operators.items() if not ok)


@functools.lru_cache(maxsize=None)
def operator_table(trt_major: int) -> OperatorTable:
    """The table for TensorRT 8 (8.6) or 10 (10.x), read from `trt_ops/tensorrt-<major>.json`."""
    major = 8 if trt_major < 10 else 10
    doc = json.loads((OPERATOR_TABLES / f"tensorrt-{major}.json").read_text(encoding="utf-8"))
    return OperatorTable(major, int(doc["opset_max"]), {op: flag == "Y" for op, flag in doc["operators"].items()},
                         dict(doc.get("added_in", {})), tuple(doc["sources"]))


# ONNX ops that map onto layers DLA runs (Orin, TensorRT 8.6/10); others run on the GPU
# when GPU fallback is on, or fail the build when it is off.
DLA_OPS = frozenset(
    "Conv ConvTranspose Gemm MatMul BatchNormalization Relu Sigmoid Tanh Clip LeakyRelu PRelu "
    "Add Sub Mul Div Max Min Pow Equal Greater Less MaxPool AveragePool GlobalAveragePool "
    "GlobalMaxPool LRN Concat Softmax Reshape Flatten Transpose Squeeze Unsqueeze Slice Resize "
    "Upsample Abs Sin Cos Atan ReduceMax QuantizeLinear DequantizeLinear Identity Constant".split()
)


@dataclass(frozen=True)
class PreflightIssue:
    """One node TensorRT will not take as is; `severity` error = the build fails."""

    node: str
    op_type: str
    problem: str
    severity: Literal["error", "warning"] = "error"

    def line(self) -> str:
        return f"node '{self.node}' ({self.op_type}): {self.problem}"


@dataclass
class PreflightReport:
    trt_major: int
    dla: bool
    nodes_checked: int
    issues: list[PreflightIssue] = field(default_factory=list)

    @property
    def errors(self) -> list[PreflightIssue]:
        return [issue for issue in self.issues if issue.severity == "error"]

    @property
    def warnings(self) -> list[PreflightIssue]:
        return [issue for issue in self.issues if issue.severity == "warning"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "tensorrt_major": self.trt_major,
            "dla": self.dla,
            "nodes_checked": self.nodes_checked,
            "errors": [issue.line() for issue in self.errors],
            "warnings": [issue.line() for issue in self.warnings],
        }

    def raise_for_errors(self, model_path: Path | str) -> None:
        """One error listing each distinct problem once, with the nodes that have it."""
        if not self.errors:
            return
        by_problem: dict[str, list[str]] = {}
        for issue in self.errors:
            by_problem.setdefault(f"{issue.op_type}: {issue.problem}", []).append(issue.node)
        shown = "; ".join(f"{problem} (node{'s' if len(nodes) > 1 else ''} {_names(nodes)})"
                          for problem, nodes in by_problem.items())
        quantization = any(i.op_type in ("QuantizeLinear", "DequantizeLinear") for i in self.errors)
        raise EngineBuildError(
            f"TensorRT {self.trt_major} would reject {model_path}: {shown}",
            "quantize for TensorRT (symmetric int8, float biases: the tensorrt recipe)" if quantization else
            "replace those ops with ones TensorRT supports (or a plugin), then build again",
        )


def _names(nodes: list[str], shown: int = 3) -> str:
    names = ", ".join(f"'{n}'" for n in nodes[:shown])
    return names + (f" and {len(nodes) - shown} more" if len(nodes) > shown else "")


def _check_zero_point(node: onnx.NodeProto, initializers: dict[str, onnx.TensorProto]) -> str | None:
    """TensorRT's explicit quantization is symmetric int8: zero points must be int8 zeros.

    onnxruntime's defaults (uint8 activations at zero point 128, int32 biases) are exactly
    what TensorRT's parser rejects, so this is the check that matters most in practice.
    """
    if len(node.input) < 3 or not node.input[2]:
        return None
    tensor = initializers.get(node.input[2])
    if tensor is None:
        return "zero point is not a constant initializer"
    if tensor.data_type == onnx.TensorProto.INT32:
        return "int32-quantized bias; TensorRT takes float biases (quantize with QuantizeBias=False)"
    if tensor.data_type != onnx.TensorProto.INT8:
        kind = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).name
        return f"{kind} quantization; TensorRT needs int8 Q/DQ (quantize activations as QInt8, symmetric)"
    if np.any(numpy_helper.to_array(tensor) != 0):
        return "zero point is not 0; TensorRT needs symmetric quantization (zero point 0)"
    return None


def _check_node(node: onnx.NodeProto, trt_major: int, initializers: dict[str, onnx.TensorProto]) -> str | None:
    """The reason TensorRT's parser rejects this node, or None."""
    if node.domain not in ("", "ai.onnx"):
        return f"op from domain '{node.domain}' has no TensorRT importer (it needs a plugin)"
    if node.op_type in operator_table(trt_major).unsupported():
        return f"{node.op_type} is not supported by TensorRT {trt_major}'s ONNX parser"
    if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
        return _check_zero_point(node, initializers)
    if node.op_type in ("MaxPool", "AveragePool", "LpPool"):
        kernel = node_attribute(node, "kernel_shape", [])
        if len(kernel) not in (2, 3):
            return f"{len(kernel)}D pooling; TensorRT pools 2D or 3D only"
        if any(d != 1 for d in node_attribute(node, "dilations", [])):
            return "pooling with dilations is not supported"
        if node.op_type == "MaxPool" and len(node.output) > 1 and node.output[1]:
            return "MaxPool's Indices output is not supported"
    if node.op_type == "Resize":
        if node_attribute(node, "mode", b"nearest") == b"cubic":
            return "Resize mode 'cubic' is not supported (use nearest or linear)"
        if node_attribute(node, "antialias", 0):
            return "Resize with antialias is not supported"
    if trt_major < 10 and node.op_type in ("Conv", "ConvTranspose"):
        kernel = node_attribute(node, "kernel_shape", [])
        if kernel and len(kernel) not in (2, 3):
            return f"{len(kernel)}D convolution; TensorRT 8 convolves 2D or 3D only"
    return None


def _table_caveat(node: onnx.NodeProto, table: OperatorTable) -> str | None:
    """Ops the table does not vouch for on every release of this major: a warning, not a refusal."""
    if node.domain not in ("", "ai.onnx"):
        return None
    if node.op_type not in table.operators:
        return (f"{node.op_type} is not in TensorRT {table.trt_major}'s operator table (onnx-tensorrt "
                "docs/operators.md); the parser may reject it")
    if node.op_type in table.added_in:
        return (f"{node.op_type} needs TensorRT >= {table.added_in[node.op_type]}; "
                f"older {table.trt_major}.x parsers reject it")
    return None


def preflight(
    model: onnx.ModelProto | Path | str, trt_major: int = 10, dla: bool = False, gpu_fallback: bool = True
) -> PreflightReport:
    """Check every node; DLA misses are warnings with GPU fallback on, errors with it off."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    table = operator_table(trt_major)
    major = table.trt_major
    graph = model.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    report = PreflightReport(trt_major=major, dla=dla, nodes_checked=len(graph.node))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset > table.opset_max:
        report.issues.append(
            PreflightIssue("(model)", "opset", f"opset {opset} is newer than TensorRT {major} documents "
                           f"({table.opset_max}); export with a lower opset if parsing fails", "warning")
        )
    for index, node in enumerate(graph.node):
        name = node.name or f"#{index}"
        problem = _check_node(node, major, initializers)
        if problem:
            report.issues.append(PreflightIssue(name, node.op_type, problem))
            continue
        caveat = _table_caveat(node, table)
        if caveat:
            report.issues.append(PreflightIssue(name, node.op_type, caveat, "warning"))
        if dla and node.op_type not in DLA_OPS:
            where = "runs on the GPU instead (GPU fallback)" if gpu_fallback else "fails: GPU fallback is off"
            report.issues.append(
                PreflightIssue(name, node.op_type, f"not supported on DLA; {where}",
                               "warning" if gpu_fallback else "error")
            )
    return report
