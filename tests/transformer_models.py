"""Tiny randomly initialised transformers, exported to ONNX the way real text and image encoders are.

A BERT-family sentence encoder (token embeddings, attention with a padding mask, mean pooling over the mask,
L2 normalisation) and a ViT image encoder, both built from a `transformers` config (no download) with a fixed
seed, so every test that reads them sees the same weights. The TorchScript exporter (`dynamo=False`, the default
here) writes them as most deployed encoders were written, with the attention mask built from Shape, Equal, Where and
Expand, in about a second; the dynamo exporter (`dynamo=True`) folds most of that and takes several seconds.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

OPSET = 17  # the TorchScript exporter's; the dynamo exporter writes opset 18 (its lowest)
BATCH, SEQUENCE = 2, 16
LENGTHS = (16, 11, 5)  # real tokens per sentence, cycled: the rest is padding


class MeanPooledEncoder(nn.Module):
    """A sentence embedding: the encoder's last hidden states averaged over the real tokens, then L2-normalised
    (what sentence-transformers models compute, padding excluded by the attention mask)."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return F.normalize(pooled, p=2, dim=1)


class ImageEncoder(nn.Module):
    """A ViT's last hidden states and pooled output for pixel values."""

    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        self.vit = vit

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outputs = self.vit(pixel_values=pixel_values)
        return outputs.last_hidden_state, outputs.pooler_output


def tiny_bert_encoder(seed: int = 0) -> MeanPooledEncoder:
    """A 2-layer, 32-wide BERT with a 100-token vocabulary as a mean-pooled, normalised sentence encoder."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    return MeanPooledEncoder(BertModel(config)).eval()


def tiny_vit(seed: int = 0) -> ImageEncoder:
    """A 2-layer, 32-wide ViT on 32×32 images in 8×8 patches."""
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(seed)
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64)
    return ImageEncoder(ViTModel(config)).eval()


def bert_inputs(batch: int = BATCH, seed: int = 0) -> dict[str, np.ndarray]:
    """input_ids and attention_mask, int64 [batch, 16]; sentence i has LENGTHS[i % 3] tokens, then padding (id 0)."""
    rng = np.random.default_rng(seed)
    attention_mask = (np.arange(SEQUENCE) < np.resize(LENGTHS, batch)[:, None]).astype(np.int64)
    input_ids = rng.integers(1, 100, (batch, SEQUENCE)).astype(np.int64) * attention_mask
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def vit_inputs(batch: int = BATCH, seed: int = 0) -> dict[str, np.ndarray]:
    """pixel_values float32 [batch, 3, 32, 32]."""
    return {"pixel_values": np.random.default_rng(seed).standard_normal((batch, 3, 32, 32)).astype(np.float32)}


def _export(model: nn.Module, inputs: dict[str, np.ndarray], output_names: list[str], path: Path, dynamo: bool) -> Path:
    """`model` at `inputs` written to `path`, its batch (axis 0 of every input and output) left open."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = tuple(torch.from_numpy(v) for v in inputs.values())
    # the tracer's notes on transformers' Python-side mask checks, and the TorchScript exporter's deprecation: expected
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            batch = torch.export.Dim("batch", min=1, max=64)
            torch.onnx.export(model, example, str(path), dynamo=True, input_names=list(inputs), output_names=output_names,
                              dynamic_shapes={name: {0: batch} for name in inputs}, opset_version=18, verbose=False)
        else:
            torch.onnx.export(model, example, str(path), dynamo=False, input_names=list(inputs), output_names=output_names,
                              dynamic_axes={name: {0: "batch"} for name in [*inputs, *output_names]}, opset_version=OPSET)
    return path


def tiny_bert_encoder_onnx(path: Path, dynamo: bool = False) -> Path:
    """tiny_bert_encoder() at `path`: inputs input_ids and attention_mask (int64 [batch, 16]), output
    sentence_embedding (float32 [batch, 32], unit length)."""
    return _export(tiny_bert_encoder(), bert_inputs(), ["sentence_embedding"], path, dynamo)


def tiny_vit_onnx(path: Path, dynamo: bool = False) -> Path:
    """tiny_vit() at `path`: input pixel_values (float32 [batch, 3, 32, 32]), outputs last_hidden_state
    (float32 [batch, 17, 32]) and pooled (float32 [batch, 32])."""
    return _export(tiny_vit(), vit_inputs(), ["last_hidden_state", "pooled"], path, dynamo)
