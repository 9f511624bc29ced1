"""The int8 recipe of a transformer encoder: what to quantize, how, and what stays float.

Measured on a pretrained 6-layer sentence encoder (all-MiniLM-L6-v2, 64 tokens, ORT 1.32, 2-core AVX2 host;
benchmarks/transformer_encoders.py), embedding cosine with fp32 mean / worst and nearest-neighbour agreement among 200
held-out sentences:

- ORT's static QDQ of every op (its defaults): 0.347 / 0.120, 20% neighbours, 0.58x ORT fp32. The attention mask
  is added as (1 - mask) * finfo(float32).min: calibration sees +-3.4e38, zero points come out NaN.
- Static QDQ of the MatMuls only: 0.933 / 0.757 and 0.4-0.5x fp32: ORT's CPU graph leaves most DQ -> MatMul -> Q
  groups unfused (a LayerNorm output feeds query, key, value and the residual path).
- Dynamic int8 MatMuls (ORT's documented route for transformers on CPU), full-range weights on a host without VNNI:
  0.965 / 0.919, 75% (VPMADDUBSW saturates); per-channel weights with reduce_range: 0.992 / 0.979, 88%, 1.7x fp32.
- The same after SmoothQuant migration (quantize/smoothquant.py), alpha 0.5: 0.987 / 0.971; 0.7: 0.9965 / 0.990,
  94%; 0.8: 0.9968 / 0.993, 93%; 1.0: 0.994 / 0.983.
- At alpha 0.75, 7-bit int8 weights against 8-bit asymmetric uint8 weights (ORT's u8u8 kernels widen to 16 bits, so
  nothing saturates), another 2-core AVX2 host: 0.9970 / 0.993, 89.5%, 1.41x ORT fp32 against 0.9985 / 0.996, 93.5%,
  1.27x. The 7-bit recipe stays the first try (faster); repair tries the 8-bit one before keeping MatMuls float.
- The embedding tables (word, position, token type: 47 MB of the 90) int8 as well, read by an int8 Gather: 58.0 MB
  -> 22.8 MB with every MatMul int8 at about the same cosine, but the default build then needed 24 MatMuls float by
  role to reach 95% neighbours (1.04x ORT fp32) where it needs 3 without (1.20x). The tables stay float.

So on ONNX Runtime (x86 and ARM) a transformer encoder's MatMuls are quantized dynamically, per-channel, smoothed
with alpha 0.75, and LayerNorm, Softmax, GELU and the mask arithmetic stay float; repair then keeps the MatMuls that
lose most in float. Engines that fuse only Q/DQ (TensorRT, OpenVINO) get static Q/DQ on the MatMuls alone.
"""

from __future__ import annotations

from dataclasses import replace

import onnx

from edgecompress.quantize.recipe import QuantRecipe

MATMUL_OPS = ("MatMul", "Gemm")
DYNAMIC_INT8_ENGINES = ("ort-cpu", "ort-arm")  # engines whose runtime has dynamic int8 MatMul kernels
DEFAULT_SMOOTH_ALPHA = 0.75
# a ViT's patch embedding and decoder head stay float in the dynamic recipe, their weights stored int8 (weight_storage.py)
INT8_STORED_WEIGHTS = ("Conv", "ConvTranspose")
SMOOTH_ALPHAS_TO_TRY = (0.6, 0.9)  # what repair tries beside the default before keeping MatMuls float


def weighted_matmul_count(model: onnx.ModelProto) -> int:
    constants = {t.name for t in model.graph.initializer if len(t.dims) == 2}
    return sum(1 for node in model.graph.node if node.op_type in MATMUL_OPS and len(node.input) > 1 and node.input[1] in constants)


def is_transformer_encoder(model: onnx.ModelProto) -> bool:
    """Attention (a Softmax) between MatMuls with learned weights, and more of them than convolutions (a ViT's patch
    embedding is one Conv): the graph shape that the MatMul-only recipe is for."""
    ops = [node.op_type for node in model.graph.node]
    matmuls = weighted_matmul_count(model)
    return "Softmax" in ops and matmuls >= 4 and matmuls > 2 * ops.count("Conv")


def transformer_recipe(recipe: QuantRecipe, engine: str) -> QuantRecipe:
    """The target's recipe (types, reduce_range, per-channel) restated for a transformer encoder."""
    dynamic = engine in DYNAMIC_INT8_ENGINES and recipe.placement != "tensorrt"
    why = ("transformer encoder: int8 MatMuls/Gemms only (LayerNorm, Softmax, GELU and the attention mask stay float), "
           f"SmoothQuant α={DEFAULT_SMOOTH_ALPHA:g}, "
           + ("activation ranges per call (ONNX Runtime's dynamic int8 MatMul kernels)" if dynamic else
              "static Q/DQ on the MatMul inputs"))
    return replace(recipe, op_types=MATMUL_OPS, smooth_alpha=DEFAULT_SMOOTH_ALPHA, activations="dynamic" if dynamic else "static",
                   int8_stored_weights=INT8_STORED_WEIGHTS if dynamic else (), equalize=False, bias_correction=False, int8_rewrites=(),
                   reason="; ".join(part for part in (recipe.reason, why) if part))
