"""A local Hugging Face checkpoint directory (config.json + model.safetensors or pytorch_model.bin) as a model source.

Transformer encoders are exported through a small wrapper whose inputs and output are what a deployed engine
needs: text encoders take `input_ids` and `attention_mask` (int64) and return one pooled sentence embedding or the
hidden states; vision encoders take `pixel_values` and return the CLS token or the hidden states. The sequence
length (and image size) is fixed at export and only the batch axis stays dynamic, because int8 engines and their
calibration run at one length: pad or truncate to it on the device. Nothing is ever downloaded
(`local_files_only=True`).
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from edgecompress.core.artifacts import sha256_file, sha256_json
from edgecompress.core.errors import InputShapeError, ModelLoadError
from edgecompress.core.logs import third_party_output

POOLINGS = ("auto", "mean", "cls", "none")
DEFAULT_SEQUENCE_LENGTH = 128
TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
VISION_INPUT = "pixel_values"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
# sentence-transformers modules the export reproduces; any other (Dense, ...) would change the embedding
SENTENCE_TRANSFORMERS_MODULES = ("Transformer", "Pooling", "Normalize")
# The additive attention mask the wrapper passes (BERT's original fill): finite and inside fp16, where transformers'
# own finfo(float32).min reads as +-inf to calibrators, and its int64 mask arithmetic breaks PT2E's prepared graph.
MASK_FILL = -10000.0
OUTSIDE_FIX = "export it to ONNX yourself (e.g. with optimum) and pass the .onnx file as --model"


@dataclass(frozen=True)
class Pooling:
    """How the encoder's hidden states become the exported output: `mode` is mean, cls or none."""

    mode: str
    normalize: bool = False


@dataclass
class CheckpointEncoder:
    """A checkpoint wrapped for export, with the input specs and output names the export needs."""

    module: Any
    content_hash: str
    input_shapes: dict[str, tuple[int, ...]]
    input_dtypes: dict[str, str]
    output_names: list[str]


def load_hf_checkpoint(
    path: Path, shapes: dict[str | None, tuple[int, ...]], pooling: str = "auto"
) -> CheckpointEncoder:
    """Load the checkpoint with transformers' AutoModel and wrap it per its main input (text or vision)."""
    if pooling not in POOLINGS:
        raise ModelLoadError(f"unknown pooling '{pooling}'", f"use one of {', '.join(POOLINGS)}")
    weight_files = checkpoint_files(path)
    encoder, pooler_loaded = _load_encoder(path)
    main_input = getattr(encoder, "main_input_name", None)
    if main_input == "input_ids" and not getattr(encoder.config, "is_encoder_decoder", False):
        chosen = text_pooling(path, pooling)
        module: Any = TextEncoder(encoder, chosen)
        input_shapes = text_input_shapes(encoder.config, shapes, _accepts_token_types(encoder))
        dtypes = dict.fromkeys(input_shapes, "int64")
        outputs = ["last_hidden_state" if chosen.mode == "none" else "sentence_embedding"]
    elif main_input == VISION_INPUT:
        chosen = vision_pooling(pooling)
        module = VisionEncoder(encoder, chosen, use_pooler=pooler_loaded)
        input_shapes = vision_input_shapes(encoder.config, shapes)
        dtypes = {VISION_INPUT: "float32"}
        outputs = ["last_hidden_state" if chosen.mode == "none" else "pooled_output"]
    else:
        raise ModelLoadError(
            f"{path} holds a {_describe(encoder)} model, which edgecompress cannot export from a checkpoint "
            "(it exports text encoders on input_ids and vision encoders on pixel_values)",
            OUTSIDE_FIX,
        )
    _check_runs(module.eval(), input_shapes, dtypes, path, encoder)
    content_hash = sha256_json({
        "hf_checkpoint": {name: sha256_file(file) for name, file in sorted(weight_files.items())},
        "pooling": [chosen.mode, chosen.normalize],
    })
    return CheckpointEncoder(module, content_hash, input_shapes, dtypes, outputs)


def checkpoint_files(path: Path) -> dict[str, Path]:
    """config.json and the weight files (single or sharded): what the content hash covers."""
    config = path / "config.json"
    if not config.is_file():
        raise ModelLoadError(
            f"{path} is not a Hugging Face checkpoint: no config.json",
            "pass a folder saved with model.save_pretrained(DIR) (config.json + model.safetensors), a .onnx file, "
            "a TorchScript .pt, a torch.export .pt2, or package.module:factory",
        )
    files = {"config.json": config}
    for name in WEIGHT_FILES:
        if (path / name).is_file():
            files[name] = path / name
    for name in WEIGHT_INDEXES:
        if (path / name).is_file():
            files[name] = path / name
            shards = json.loads((path / name).read_text(encoding="utf-8")).get("weight_map", {}).values()
            files.update((shard, path / shard) for shard in sorted(set(shards)) if (path / shard).is_file())
    if len(files) == 1:
        raise ModelLoadError(
            f"Hugging Face checkpoint {path} has a config.json but no weights",
            f"save the weights beside it ({' or '.join(WEIGHT_FILES)}, e.g. with model.save_pretrained(DIR))",
        )
    return files


def _load_encoder(path: Path) -> tuple[Any, bool]:
    """The model, and whether it has a pooler with trained weights (a missing one would be random)."""
    try:
        with third_party_output("transformers"):
            import transformers
    except ImportError:
        raise ModelLoadError(
            f"loading the Hugging Face checkpoint {path} needs transformers",
            'pip install "edgecompress[transformers]"',
        ) from None
    config = _read_config(path)
    model_type = config.get("model_type", "unknown")
    from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

    if model_type not in MODEL_MAPPING_NAMES:
        raise ModelLoadError(
            f"transformers {transformers.__version__} has no AutoModel for model_type '{model_type}' in {path}",
            OUTSIDE_FIX,
        )
    # quiet: missing weights are judged below, and a progress bar per load is noise in a build's log
    hf_logging = transformers.utils.logging
    progress_bar, verbosity = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        with third_party_output("transformers"):  # the first model imports torchao, whose import is noisy
            encoder, loading = transformers.AutoModel.from_pretrained(
                str(path), local_files_only=True, output_loading_info=True
            )
    except Exception as exc:  # transformers raises many types for a bad or mismatched checkpoint
        detail = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise ModelLoadError(
            f"transformers cannot load the checkpoint {path}: {detail}",
            "check the folder loads with transformers.AutoModel.from_pretrained(DIR), or " + OUTSIDE_FIX,
        ) from exc
    finally:
        hf_logging.set_verbosity(verbosity)
        if progress_bar:
            hf_logging.enable_progress_bar()
    missing = list(loading.get("missing_keys", []))
    _check_weights_complete(path, missing)
    has_pooler = getattr(encoder, "pooler", None) is not None
    return encoder.eval(), has_pooler and not any(key.startswith("pooler.") for key in missing)


def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {path / 'config.json'}: {exc}", "save the checkpoint again") from exc
    return config if isinstance(config, dict) else {}


def _check_weights_complete(path: Path, missing_keys: list[str]) -> None:
    """A weight missing from the checkpoint is randomly initialised: refuse it, except the pooler (left unused)."""
    missing = [key for key in missing_keys if not key.startswith("pooler.")]
    if missing:
        shown = ", ".join(sorted(missing)[:5]) + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else "")
        raise ModelLoadError(
            f"the weights in {path} do not fit its config.json: {shown} missing",
            "save the checkpoint with model.save_pretrained(DIR) from the architecture its config names",
        )


def _describe(encoder) -> str:
    return f"{type(encoder).__name__} ('{getattr(encoder.config, 'model_type', 'unknown')}')"


def _accepts_token_types(encoder) -> bool:
    """token_type_ids is an input only where it means something: a segment vocabulary of more than one type."""
    takes = "token_type_ids" in inspect.signature(encoder.forward).parameters
    return takes and int(getattr(encoder.config, "type_vocab_size", 0) or 0) > 1


# --- pooling --------------------------------------------------------------------------------


def text_pooling(path: Path, pooling: str) -> Pooling:
    """mean and cls are L2-normalised (the sentence-transformers convention); auto reads a sentence-transformers
    folder's own pooling, else keeps the hidden states."""
    if pooling in ("mean", "cls"):
        return Pooling(pooling, normalize=True)
    if pooling == "none" or not (path / "modules.json").is_file():
        return Pooling("none")
    return sentence_transformers_pooling(path)


def sentence_transformers_pooling(path: Path) -> Pooling:
    modules = _read_json(path / "modules.json")
    kinds = {str(entry.get("type", "")).rpartition(".")[2]: entry for entry in modules if isinstance(entry, dict)}
    extra = sorted(kind for kind in kinds if kind not in SENTENCE_TRANSFORMERS_MODULES)
    if extra:
        raise ModelLoadError(
            f"the sentence-transformers model in {path} has modules edgecompress does not export: {', '.join(extra)}",
            "pass --pooling mean, cls or none to export the encoder alone, or " + OUTSIDE_FIX,
        )
    if "Pooling" not in kinds:
        return Pooling("none")
    settings = _read_json(path / str(kinds["Pooling"].get("path", "1_Pooling")) / "config.json")
    normalize = "Normalize" in kinds
    if settings.get("pooling_mode_mean_tokens"):
        return Pooling("mean", normalize)
    if settings.get("pooling_mode_cls_token"):
        return Pooling("cls", normalize)
    modes = sorted(key.removeprefix("pooling_mode_") for key, on in settings.items() if key.startswith("pooling_mode_") and on)
    raise ModelLoadError(
        f"the sentence-transformers pooling in {path} is {', '.join(modes) or 'unset'}; edgecompress exports mean or cls",
        "pass --pooling mean, cls or none",
    )


def vision_pooling(pooling: str) -> Pooling:
    if pooling == "mean":
        raise ModelLoadError(
            "--pooling mean is for text encoders (a mask-weighted mean of token states)",
            "for a vision encoder use --pooling cls (the CLS token, the default) or none (all hidden states)",
        )
    return Pooling("none" if pooling == "none" else "cls")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}", "check the sentence-transformers folder is complete") from exc


# --- input shapes ---------------------------------------------------------------------------


def text_input_shapes(
    config, shapes: dict[str | None, tuple[int, ...]], token_types: bool
) -> dict[str, tuple[int, ...]]:
    """input_ids and attention_mask at one [N, T]: T from --input-shape, else 128 within the position limit."""
    allowed = TEXT_INPUTS if token_types else TEXT_INPUTS[:2]
    unknown = [name for name in shapes if name is not None and name not in allowed]
    if unknown:
        raise InputShapeError(
            f"the text encoder has no input named '{unknown[0]}' (inputs: {', '.join(allowed)})",
            "write --input-shape input_ids:1,128 (or 1,128): one [batch, sequence length] for all inputs",
        )
    if any(len(shape) != 2 for shape in shapes.values()) or len({shape[1] for shape in shapes.values()}) > 1:
        raise InputShapeError(
            f"text inputs take one [batch, sequence length] shape, got {', '.join(map(str, shapes.values()))}",
            "write --input-shape 1,128 (the same length for input_ids and attention_mask)",
        )
    limit = int(getattr(config, "max_position_embeddings", 0) or DEFAULT_SEQUENCE_LENGTH)
    shape = next(iter(shapes.values()), (1, min(DEFAULT_SEQUENCE_LENGTH, limit)))
    if shape[1] > limit:
        raise InputShapeError(
            f"sequence length {shape[1]} is beyond the model's {limit} positions",
            f"give a length up to {limit}, e.g. --input-shape 1,{min(DEFAULT_SEQUENCE_LENGTH, limit)}",
        )
    names = list(TEXT_INPUTS[:2]) + (["token_type_ids"] if "token_type_ids" in shapes else [])
    return dict.fromkeys(names, shape)


def vision_input_shapes(config, shapes: dict[str | None, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """pixel_values [N, C, H, W]: from --input-shape, else the config's channels and image size."""
    unknown = [name for name in shapes if name not in (None, VISION_INPUT)]
    if unknown or len(shapes) > 1:
        raise InputShapeError(
            f"the vision encoder has one input, {VISION_INPUT}", "write --input-shape pixel_values:1,3,224,224 (or 1,3,224,224)"
        )
    if shapes:
        shape = next(iter(shapes.values()))
        if len(shape) != 4:
            raise InputShapeError(f"{VISION_INPUT} takes [N, C, H, W], got {shape}", "write --input-shape 1,3,224,224")
        return {VISION_INPUT: shape}
    size = getattr(config, "image_size", 224)
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    return {VISION_INPUT: (1, int(getattr(config, "num_channels", 3)), int(height), int(width))}


def _check_runs(module, input_shapes: dict[str, tuple[int, ...]], dtypes: dict[str, str], path: Path, encoder) -> None:
    """One forward at the export shape, so a model that cannot run as wrapped fails here with its name."""
    inputs = [
        torch.ones(shape, dtype=torch.int64) if dtypes[name] == "int64" else torch.zeros(shape)
        for name, shape in input_shapes.items()
    ]
    try:
        with torch.no_grad():
            module(*inputs)
    except Exception as exc:  # the model's own code raises anything
        detail = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise ModelLoadError(
            f"the {_describe(encoder)} model in {path} does not run on {', '.join(input_shapes)} "
            f"{list(input_shapes.values())[0]}: {detail}",
            "check --input-shape against the model's config, or " + OUTSIDE_FIX,
        ) from exc


# --- wrappers -------------------------------------------------------------------------------


class TextEncoder(torch.nn.Module):
    """input_ids, attention_mask[, token_type_ids] -> the pooled sentence embedding, or the hidden states."""

    def __init__(self, encoder, pooling: Pooling) -> None:
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling

    @property
    def config(self):
        """The checkpoint's config (its vocab_size bounds the ids the export tries)."""
        return self.encoder.config

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        dtype = self.encoder.get_input_embeddings().weight.dtype
        additive = (1.0 - attention_mask[:, None, None, :].to(dtype)) * MASK_FILL  # 4-D: transformers uses it as is
        hidden = self.encoder(input_ids=input_ids, attention_mask=additive, **extra).last_hidden_state
        if self.pooling.mode == "none":
            return hidden
        if self.pooling.mode == "mean":
            weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
            embedding = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
        else:
            embedding = hidden[:, 0]
        return torch.nn.functional.normalize(embedding, p=2, dim=-1) if self.pooling.normalize else embedding


class VisionEncoder(torch.nn.Module):
    """pixel_values -> the CLS token (the model's pooler where it has one), or the hidden states."""

    def __init__(self, encoder, pooling: Pooling, use_pooler: bool) -> None:
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling
        self.use_pooler = use_pooler

    @property
    def config(self):
        return self.encoder.config

    def forward(self, pixel_values):
        outputs = self.encoder(pixel_values=pixel_values)
        if self.pooling.mode == "none":
            return outputs.last_hidden_state
        pooled = getattr(outputs, "pooler_output", None) if self.use_pooler else None
        return pooled if pooled is not None else outputs.last_hidden_state[:, 0]
