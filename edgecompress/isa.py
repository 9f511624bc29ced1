"""Instruction-set facts that decide which int8 kernels are fast and exact on a target."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from edgecompress.targets import TargetProfile

INT8_FEATURES = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm", "dotprod")


@lru_cache(maxsize=1)
def host_isa() -> frozenset[str]:
    """CPU flags of this machine that matter for int8 kernels (from /proc/cpuinfo)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    found = {flag for flag in flags if flag in INT8_FEATURES}
    if "asimddp" in found:
        found.add("dotprod")
    return frozenset(found)


def target_isa(profile: TargetProfile) -> frozenset[str]:
    """The profile's declared ISA, or the host's when the profile leaves it empty."""
    return frozenset(profile.isa) if profile.isa else host_isa()
