"""Where the model comes from: the built-in example, an ONNX file, TorchScript, torch.export
(.pt2), a `package.module:factory` with a weights file, or a Hugging Face checkpoint folder.

Each is resolved to a `SourceModel` (a torch module to export, or an ONNX file to prepare)
plus the input shapes it will be exported and benchmarked with.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path

from edgecompress.core.artifacts import sha256_file, sha256_json
from edgecompress.core.errors import InputShapeError, ModelLoadError


@dataclass
class SourceModel:
    """A model ready for export: either `module` (torch) or `onnx_path` is set.

    `input_shapes` maps input names to full shapes (batch first); for ONNX files the
    shapes come from the file and `--input-shape`. `content_hash` keys the export cache.
    `input_dtypes` says which inputs are not float32 (token ids and masks are int64), and
    `output_names` names the exported outputs (None: one output called "output").
    """

    name: str
    content_hash: str
    module: object | None = None
    onnx_path: Path | None = None
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    labels: list[str] | None = None
    batch_axes: dict[str, int] = field(default_factory=dict)  # --batch-axis NAME:AXIS
    input_dtypes: dict[str, str] = field(default_factory=dict)  # name -> numpy dtype name; float32 when absent
    output_names: list[str] | None = None

    @property
    def is_onnx(self) -> bool:
        return self.onnx_path is not None


def parse_input_shapes(specs: list[str]) -> dict[str | None, tuple[int, ...]]:
    """`NAME:1,3,224,224` or `1,3,224,224` (single-input models) → {name or None: shape}."""
    shapes: dict[str | None, tuple[int, ...]] = {}
    for spec in specs:
        name, _, dims = spec.rpartition(":")
        try:
            shape = tuple(int(d) for d in dims.replace("x", ",").split(",") if d.strip())
        except ValueError:
            raise InputShapeError(
                f"cannot read input shape '{spec}'", "write it as NAME:1,3,224,224 (or 1,3,224,224 for one input)"
            ) from None
        if not shape or any(d <= 0 for d in shape):
            raise InputShapeError(
                f"input shape '{spec}' needs positive dimensions",
                "give every axis a size, e.g. --input-shape 1,3,224,224 (the batch axis stays dynamic whatever size it is given)",
            )
        shapes[name or None] = shape
    return shapes


def load_source_model(model: str, weights: Path | None, input_shape: list[str], pooling: str = "auto") -> SourceModel:
    """Resolve `--model`/`--weights`/`--input-shape`/`--pooling` to a SourceModel (the built-in example: presets.example)."""
    shapes = parse_input_shapes(input_shape)
    path = Path(model)
    if path.is_dir():
        return load_checkpoint_folder(path, shapes, pooling)
    if pooling != "auto":
        raise ModelLoadError(
            f"--pooling {pooling} applies to Hugging Face checkpoint folders, not to '{model}'",
            "leave --pooling unset (auto), or put the pooling in the model itself",
        )
    if path.suffix == ".onnx":
        if not path.is_file():
            raise ModelLoadError(f"model file {path} does not exist", "check the --model path")
        return SourceModel(name=path.stem, content_hash=sha256_file(path), onnx_path=path, input_shapes=_named(shapes))
    if path.suffix in (".pt", ".pth", ".pt2", ".ts"):
        module = load_serialized_torch(path)
        return SourceModel(path.stem, sha256_file(path), module=module, input_shapes=_torch_shapes(shapes, model))
    if ":" in model:
        module = load_factory(model, weights)
        weights_hash = sha256_file(weights) if weights else "random-init"
        return SourceModel(
            name=model.split(":")[-1],
            content_hash=sha256_json({"factory": model, "weights": weights_hash}),
            module=module,
            input_shapes=_torch_shapes(shapes, model),
        )
    raise ModelLoadError(
        f"cannot tell what kind of model '{model}' is",
        "pass a .onnx file, a TorchScript .pt, a torch.export .pt2, package.module:factory with --weights FILE, "
        "or a Hugging Face checkpoint folder (config.json + model.safetensors)",
    )


def load_checkpoint_folder(path: Path, shapes: dict[str | None, tuple[int, ...]], pooling: str) -> SourceModel:
    """A Hugging Face checkpoint: a transformer encoder wrapped with its pooling, int64 token inputs and named outputs."""
    from edgecompress.source.hf_checkpoint import load_hf_checkpoint  # imports torch and transformers

    encoder = load_hf_checkpoint(path, shapes, pooling)
    return SourceModel(
        name=path.resolve().name,
        content_hash=encoder.content_hash,
        module=encoder.module,
        input_shapes=encoder.input_shapes,
        input_dtypes=encoder.input_dtypes,
        output_names=encoder.output_names,
    )


def _named(shapes: dict[str | None, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """Keep unnamed shapes under the empty name; the ONNX preparer resolves it to the single input."""
    return {name or "": shape for name, shape in shapes.items()}


def _torch_shapes(shapes: dict[str | None, tuple[int, ...]], model: str) -> dict[str, tuple[int, ...]]:
    if not shapes:
        raise InputShapeError(
            f"PyTorch model '{model}' needs an example input shape to export",
            "add --input-shape 1,3,224,224 (or NAME:1,3,224,224 per input)",
        )
    return {name or f"input{i if i else ''}": shape for i, (name, shape) in enumerate(shapes.items())}


def load_serialized_torch(path: Path):
    import torch

    if not path.is_file():
        raise ModelLoadError(f"model file {path} does not exist", "check the --model path")
    try:
        if path.suffix == ".pt2":
            return torch.export.load(str(path)).module()
        return torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as exc:  # torch raises many types for a bad archive
        raise ModelLoadError(
            f"{path} is not a loadable {'torch.export' if path.suffix == '.pt2' else 'TorchScript'} file ({exc.__class__.__name__})",
            "save it with torch.jit.save(torch.jit.script(model), 'model.pt') or torch.export.save(...) to a .pt2, "
            "or pass its state_dict as --model package.module:factory --weights FILE",
        ) from exc


def load_factory(spec: str, weights: Path | None):
    import torch

    module_name, _, factory_name = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), factory_name)
    except (ImportError, AttributeError) as exc:
        raise ModelLoadError(
            f"cannot import '{spec}': {exc}", "check the module is importable (on PYTHONPATH) and the factory name"
        ) from exc
    try:
        module = factory()
    except Exception as exc:
        raise ModelLoadError(f"factory '{spec}' failed: {exc}", "the factory must build the model with no arguments") from exc
    if not isinstance(module, torch.nn.Module):
        raise ModelLoadError(f"factory '{spec}' returned {type(module).__name__}, not a torch.nn.Module", "return the model")
    if weights is not None:
        _load_weights(module, weights)
    return module.eval()


def _load_weights(module, weights: Path) -> None:
    import torch

    if not Path(weights).is_file():
        raise ModelLoadError(f"weights file {weights} does not exist", "check the --weights path")
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelLoadError(
            f"cannot read weights {weights}: {exc.__class__.__name__}",
            "save them with torch.save(model.state_dict(), FILE) (loaded with weights_only=True)",
        ) from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    try:
        module.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, AttributeError) as exc:
        detail = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise ModelLoadError(
            f"weights {weights} do not match the model: {detail}",
            "use the weights saved from this exact architecture (same layer names and shapes)",
        ) from exc
