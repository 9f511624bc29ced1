"""Where a figure was measured: this host's arch and CPU (or GPU), recorded beside every timing.

A build for a Raspberry Pi or a Jetson times its engine on the workstation that builds it.
Those numbers say how the engine runs here, not on the board ("int8 is slower than fp32"
on an x86 host says nothing about an ARM core), so every figure carries its place.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

from edgecompress.quantize.isa import host_arch
from edgecompress.core.targets import TargetProfile


def host_cpu() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":")[0].strip() in ("model name", "Hardware", "Model"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measured_on(profile: TargetProfile, device: str = "CPU", session: dict[str, Any] | None = None) -> dict[str, Any]:
    """report.json's `measured_on`: this host (arch, cpu, cores), the device that ran the engine here
    (CPU or the GPU's name), the session settings engine and reference shared, and whether the
    target is of this host's arch at all."""
    arch = host_arch()
    facts = {
        "where": "this host",
        "arch": arch,
        "cpu": host_cpu(),
        "cores": os.cpu_count(),
        "device": device,
        "session": session,
        "target": profile.name,
        "target_arch": profile.arch,
        "target_arch_matches": arch == profile.arch,
    }
    return {**facts, "summary": describe(facts)}


def describe(facts: dict[str, Any]) -> str:
    """One line, e.g. 'this host (x86_64, Intel Xeon, 2 cores, CPU), not the aarch64 raspberry-pi-5'."""
    here = f"this host ({facts['arch']}, {facts['cpu']}, {facts['cores']} cores, {facts['device']})"
    if facts["target_arch_matches"]:
        return here
    return f"{here}, not the {facts['target_arch']} {facts['target']}"


def where_words(facts: dict[str, Any] | None) -> str:
    """'on this machine' where the target is of this host's arch, else 'on this host (x86_64, not the device)'."""
    if not facts or facts.get("target_arch_matches", True):
        return "on this machine"
    return f"on this host ({facts['arch']}, not measured on the {facts['target_arch']} {facts['target']})"
