"""ONNX Runtime session options, decided in one place so an engine and its fp32 reference run alike."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from edgecompress.core.errors import TargetError

LEVELS = ("disable", "basic", "extended", "all")


def _level(name: str):
    import onnxruntime as ort

    if name not in LEVELS:
        raise TargetError(f"graph_optimization_level '{name}' is unknown", f"use one of: {', '.join(LEVELS)}")
    return {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[name]


def session_settings(threads: int) -> dict[str, Any]:
    """The one place that decides how every ONNX Runtime session here runs (engine and fp32 reference alike).

    Threads: the profile's count, but never more than this host has (0 = all cores): a 4-thread
    Pi profile on a 2-core host would otherwise oversubscribe one session and not the other.
    Spinning off: idle pool threads spin by default and steal the cores of the next session run
    in an interleaved benchmark; on this 2-core host that inflated fp32 p50 3-4x (4.7 -> 18 ms).
    """
    cores = os.cpu_count() or 1
    return {"intra_op_threads": min(threads, cores) if threads else cores, "inter_op_threads": 1, "allow_spinning": False}


def session_options(threads: int, level: str = "all", optimized_path: Path | None = None):
    import onnxruntime as ort

    settings = session_settings(threads)
    options = ort.SessionOptions()
    options.graph_optimization_level = _level(level)
    options.intra_op_num_threads = settings["intra_op_threads"]
    options.inter_op_num_threads = settings["inter_op_threads"]
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if settings["allow_spinning"] else "0")
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
    return options


def session_with_outputs(model, names: list[str], level: str = "all"):
    """A CPU session on `model` (an onnx.ModelProto, changed in place) that also returns the intermediate tensors
    `names`: what calibration statistics, diagnosis and distillation read from inside a graph."""
    import onnx
    import onnxruntime as ort

    declared = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.ValueInfoProto(name=name) for name in names if name not in declared)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = _level(level)
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
