"""Run an ORT-format engine on real aarch64 code under QEMU user-mode emulation (opt-in).

The ARM engine's promise is that the `.ort` file runs on the device's onnxruntime; the
x86 run alone cannot show that. This runs the aarch64 onnxruntime wheel inside a Debian
arm64 root file system (made by `scripts/arm64-emulated.sh setup`) and returns its
outputs for comparison with the x86 run. Its latencies are EMULATED: they prove nothing
about a board's speed and are always labelled so.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgecompress.engines import _ort_job
from edgecompress.core.artifacts import save_npz
from edgecompress.core.errors import EngineBuildError

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "arm64-emulated.sh"


@dataclass
class EmulatedRun:
    """Outputs and per-run latencies of one engine on aarch64 under QEMU."""

    outputs: list[np.ndarray]
    latency_ms: list[float]
    machine: str
    onnxruntime: str
    label: str = "emulated (QEMU user-mode aarch64): not device speed"


def arm64_root() -> Path:
    from edgecompress.core.cache import cache_dir

    return Path(os.environ.get("EDGECOMPRESS_ARM64_ROOT") or cache_dir() / "arm64-root")


def unavailable_reason(root: Path | None = None) -> str | None:
    """None when an emulated run can start now, else why not (used to skip tests)."""
    root = root or arm64_root()
    if not SCRIPT.is_file():
        return f"{SCRIPT} is missing (run from a source checkout)"
    if os.geteuid() != 0:
        return "needs root (chroot and mount)"
    if not (root / "opt" / "ec" / "bin" / "python").exists():
        return f"no arm64 root at {root}: run `sudo scripts/arm64-emulated.sh setup` first"
    return None


def setup_root(root: Path | None = None) -> Path:
    """Build the arm64 root once (debootstrap + aarch64 onnxruntime); minutes the first time."""
    root = root or arm64_root()
    _script("setup", str(root))
    return root


def _script(*args: str) -> None:
    done = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise EngineBuildError(f"arm64 emulation failed: {done.stderr.strip()[-500:]}",
                               "see scripts/arm64-emulated.sh (needs root, qemu-user-static, debootstrap)")


def run_emulated(engines: dict[str, Path], feeds: dict[str, np.ndarray], repeats: int = 10, threads: int = 1,
                 root: Path | None = None) -> dict[str, EmulatedRun]:
    """Run each labelled .ort engine once for outputs, then `repeats` interleaved timed runs, on aarch64."""
    root = root or arm64_root()
    reason = unavailable_reason(root)
    if reason:
        raise EngineBuildError(f"cannot run on emulated aarch64: {reason}", "see docs/concepts/targets.md, 'Real aarch64 under QEMU'")
    with tempfile.TemporaryDirectory(prefix="ec-arm64-job.") as job_name:
        job = Path(job_name)
        for label, engine in engines.items():
            shutil.copyfile(engine, job / f"{label}.ort")
        shutil.copyfile(_ort_job.__file__, job / "job.py")
        save_npz(job / "feeds.npz", feeds)
        settings = {"engines": {label: f"{label}.ort" for label in engines}, "repeats": repeats, "threads": threads}
        (job / "settings.json").write_text(json.dumps(settings))
        _script("run", str(root), str(job))
        result = json.loads((job / "result.json").read_text())
        return {label: EmulatedRun(_load_outputs(job / f"outputs-{label}.npz"), result["latency_ms"][label],
                                   result["machine"], result["onnxruntime"]) for label in engines}


def _load_outputs(path: Path) -> list[np.ndarray]:
    with np.load(path) as saved:
        return [saved[f"arr_{i}"] for i in range(len(saved.files))]
