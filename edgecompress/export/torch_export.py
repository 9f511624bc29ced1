"""torch module -> fp32 ONNX with a dynamic batch, checked against PyTorch's own output on ONNX Runtime."""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgecompress.core.logs import third_party_output
from edgecompress.core.errors import ExportError
from edgecompress.export.graph import BATCH_DIM, DEFAULT_OPSET, MIN_OPSET, OnnxModelInfo, finalize_model, model_info


def export_torch(
    module,
    input_shapes: dict[str, tuple[int, ...]],
    out_path: Path,
    opset: int = DEFAULT_OPSET,
    exporter: str = "dynamo",
    tolerance: float = 1e-3,
    input_dtypes: dict[str, str] | None = None,
    output_names: list[str] | None = None,
) -> OnnxModelInfo:
    """`torch.onnx.export` with a dynamic batch, then finalize and compare with PyTorch.

    Inputs are float32 unless `input_dtypes` says otherwise (token ids and masks: int64); the outputs are named
    `output_names`, else the one output is called "output". Only the batch axis is dynamic."""
    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset} is too old", f"use opset >= {MIN_OPSET}")
    names = list(input_shapes)
    examples = example_inputs(module, input_shapes, input_dtypes or {})
    module = module.eval()
    # the dynamo exporter may write external data beside its output: keep it in a scratch dir
    with tempfile.TemporaryDirectory(prefix="edgecompress-export-") as scratch:
        raw_path = Path(scratch) / "exported.onnx"
        _run_exporter(module, examples, names, output_names or ["output"], raw_path, opset, exporter)
        model = onnx.load(str(raw_path))
    model = finalize_model(model, out_path)
    diff = check_against_torch(module, out_path, examples, names, tolerance)
    return model_info(model, out_path, diff)


def example_inputs(module, input_shapes: dict[str, tuple[int, ...]], input_dtypes: dict[str, str]) -> tuple:
    """Seeded examples at batch 2, not 1 (torch.export specializes size-1 dimensions to constants).

    Float inputs are Gaussian; integer inputs are token ids, except masks: all ones but the last quarter of the
    second row, so padding is exercised. `input_ids` stay within the vocabulary of a module with a Hugging Face
    style `config.vocab_size` (below 1000, and from 1: id 0 is often padding)."""
    import torch

    examples = []
    for name, shape in input_shapes.items():
        generator = torch.Generator().manual_seed(0)
        dtype = getattr(torch, input_dtypes.get(name, "float32"))
        size = (2, *shape[1:])
        if dtype.is_floating_point:
            examples.append(torch.randn(size, generator=generator).to(dtype))
        elif "mask" in name:
            examples.append(_padding_mask(size, dtype))
        else:
            low, high = (1, _id_limit(module)) if name == "input_ids" else (0, 100)
            examples.append(torch.randint(low, high, size, generator=generator, dtype=dtype))
    return tuple(examples)


def _padding_mask(size: tuple[int, ...], dtype):
    import torch

    mask = torch.ones(size, dtype=dtype)
    length = size[-1] if len(size) > 1 else 0
    padded = min(max(length // 4, 1), length - 1)
    if padded > 0:
        mask[1, ..., length - padded:] = 0
    return mask


def _id_limit(module) -> int:
    vocab = getattr(getattr(module, "config", None), "vocab_size", None)
    return max(2, min(int(vocab), 1000)) if isinstance(vocab, int) else 1000


def _run_exporter(module, examples, names: list[str], output_names: list[str], path: Path, opset: int, exporter: str) -> None:
    import torch

    dynamic_axes = {name: {0: BATCH_DIM} for name in [*names, *output_names]}
    common: dict[str, Any] = dict(input_names=names, output_names=output_names, opset_version=opset, dynamic_axes=dynamic_axes)
    use_dynamo = exporter == "dynamo" and not isinstance(module, torch.jit.ScriptModule)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    # the dynamo exporter's onnxscript optimizer logs its constant-folding misses ('Evaluation failed: ...') as warnings
    with third_party_output("torch.onnx"), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(module, examples, str(path), dynamo=use_dynamo, verbose=False, **common)
            return
        except Exception as exc:
            if not use_dynamo:
                raise ExportError(f"torch.onnx.export failed: {exc}", "check the model runs on the given input shape") from exc
            first_error = exc
        try:  # the dynamo exporter rejects some dynamic Python; the TorchScript exporter may cope
            torch.onnx.export(module, examples, str(path), dynamo=False, **common)
        except Exception as exc:
            raise ExportError(
                f"torch.onnx.export failed with both exporters: {first_error} / {exc}",
                "check the model runs on the given --input-shape",
            ) from exc


def check_against_torch(module, onnx_path: Path, examples, names: list[str], tolerance: float) -> float:
    """Max |ORT − PyTorch| over the outputs; raise when it exceeds `tolerance` × output scale."""
    import onnxruntime as ort
    import torch

    with torch.no_grad():
        expected = module(*examples)
    expected_list = [expected] if isinstance(expected, torch.Tensor) else list(expected)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = session.run(None, {name: example.numpy() for name, example in zip(names, examples)})
    worst = 0.0
    for reference, actual in zip(expected_list, got):
        reference = reference.numpy()
        diff = float(np.max(np.abs(reference - actual))) if reference.size else 0.0
        worst = max(worst, diff)
        if diff > tolerance * max(1.0, float(np.max(np.abs(reference)))):
            raise ExportError(
                f"ONNX Runtime's output differs from PyTorch's by {diff:.3g} (tolerance {tolerance:g} × output scale)",
                "the exporter mis-translated an op: try exporter = 'torchscript' in the config, or raise export_tolerance",
            )
    return worst
