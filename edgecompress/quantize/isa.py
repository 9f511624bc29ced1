"""Instruction-set facts that decide which int8 kernels are fast and exact on a target.

Measured on a 2-core AVX2 host without VNNI, ONNX Runtime 1.32, a MobileNetV2 (width
0.35) trained on digits (benchmarks/quant_variants.py): ORT's x86 kernels multiply u8
activations by s8 weights with VPMADDUBSW, which sums pairs of products into int16 and
saturates. Full-range per-channel u8s8 then agreed with fp32 on only 62% of top-1 (logit
cosine 0.76; s8s8 is converted to the same kernel: 59%); `reduce_range` (7-bit weights)
gave 98% (0.997) at u8s8 speed; u8u8 kept accuracy (99%) but ran slower; per-tensor
weights lost depthwise layers (89%). VNNI (VPDPBUSD) and ARM (SDOT/UDOT, widening
multiplies) accumulate in int32, so full-range weights are right there. Measured for ARM on
ORT's aarch64 kernels under QEMU (benchmarks/arm_recipes.py; Cortex-A72, A76 and `max`
gave identical results): full-range s8s8 per-channel agreed with fp32 on 99.6% (cosine
0.998) vs 98.7% with reduce_range. TensorRT only takes symmetric int8 (zero point 0).
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from edgecompress.core.targets import TargetProfile

if TYPE_CHECKING:
    from edgecompress.quantize.recipe import QuantRecipe

INT8_FEATURES = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm", "dotprod")
VNNI_FEATURES = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
ARM_INT8_FEATURES = frozenset({"dotprod", "i8mm"})


def features_from_cpuinfo(text: str) -> frozenset[str]:
    """int8-relevant flags of a /proc/cpuinfo text (x86 `flags`, ARM `Features`)."""
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return normalize(flags)


def normalize(flags: set[str] | frozenset[str]) -> frozenset[str]:
    found = {flag for flag in flags if flag in INT8_FEATURES}
    if "asimddp" in found:  # Linux's name for ARM's dot-product extension
        found.add("dotprod")
    return frozenset(found)


def _py_cpuinfo_flags() -> frozenset[str]:
    try:
        import cpuinfo  # py-cpuinfo, optional: hosts without /proc/cpuinfo (macOS, Windows)
    except ImportError:
        return frozenset()
    return normalize(set(cpuinfo.get_cpu_info().get("flags", [])))


@dataclass(frozen=True)
class Isa:
    """A CPU's architecture and the int8-relevant features of its instruction set."""

    arch: str  # x86_64 | aarch64
    features: frozenset[str]

    @property
    def has_vnni(self) -> bool:
        """x86 int8 dot products that accumulate in int32 (VPDPBUSD) instead of saturating int16 pairs."""
        return bool(self.features & VNNI_FEATURES)

    @property
    def saturates_u8s8(self) -> bool:
        """x86 without VNNI: ORT's u8s8 kernels (VPMADDUBSW) saturate 16-bit sums of full-range weights."""
        return self.arch == "x86_64" and not self.has_vnni

    @property
    def label(self) -> str:
        return "/".join(sorted(self.features)) or "no int8 extensions"


def _host_flags() -> frozenset[str]:
    try:
        return features_from_cpuinfo(Path("/proc/cpuinfo").read_text())
    except OSError:
        return _py_cpuinfo_flags()


@lru_cache(maxsize=1)
def host_isa() -> Isa:
    """This machine's instruction set, as far as int8 kernels care."""
    return Isa(host_arch(), _host_flags())


def target_isa(profile: TargetProfile) -> Isa:
    """The profile's declared ISA, or the host's flags when the profile leaves it empty."""
    return Isa(profile.arch, normalize(set(profile.isa)) if profile.isa else host_isa().features)


def recipe_for_target(profile: TargetProfile) -> "QuantRecipe":
    """Types, reduce_range and granularity that the target's int8 kernels run exactly."""
    from edgecompress.quantize.islands import REWRITES
    from edgecompress.quantize.recipe import QuantRecipe

    isa = target_isa(profile)
    if profile.engine == "tensorrt":
        return QuantRecipe(activation_type="int8", weight_type="int8", per_channel=True, reduce_range=False,
                           symmetric_activations=True, quantize_bias=False, placement="tensorrt",
                           reason="TensorRT explicit quantization: symmetric s8s8 per-channel, float biases; Q/DQ on "
                                  "the inputs of Conv/Gemm/MatMul and both inputs of Add (NVIDIA's placement)")
    if isa.arch == "aarch64":
        return QuantRecipe(activation_type="int8", weight_type="int8", per_channel=True, reduce_range=False,
                           reason=f"aarch64 ({isa.label}): int32 accumulation does not saturate; s8s8 per-channel")
    # x86 (ONNX Runtime, OpenVINO): HardSwish's Div and HardSigmoid restated in ops with int8 kernels, so they do not
    # run as float islands between Q/DQ pairs (quantize/islands.py; measured in benchmarks/fast_int8.py)
    rewrites = REWRITES
    if isa.has_vnni:
        return QuantRecipe(int8_rewrites=rewrites, reason=f"x86 with VNNI ({isa.label}): u8s8 per-channel, full range")
    return QuantRecipe(
        reduce_range=True, int8_rewrites=rewrites,
        reason=f"x86 without VNNI ({isa.label}): u8s8 per-channel with reduce_range avoids VPMADDUBSW saturation",
    )


def host_arch() -> str:
    machine = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
