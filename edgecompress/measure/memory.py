"""Peak memory of one engine, measured in a fresh process.

In the build process, memory freed by training and export is reused by the engine, so
RSS growth there says little. A child process that imports the runtime, notes its RSS,
loads the engine and runs it gives the engine's own footprint: peak RSS minus baseline.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from edgecompress.core.artifacts import save_npz
from edgecompress.engines.base import EngineArtifact
from edgecompress.core.targets import TargetProfile


def _status_mb(field: str) -> float:
    """VmRSS / VmHWM of this process (ru_maxrss would include the parent's, kept across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0
    raise OSError(f"{field} not in /proc/self/status")


def peak_memory_mb(artifact: EngineArtifact, profile: TargetProfile, feeds: dict[str, np.ndarray], runs: int = 5) -> float | None:
    """Peak RSS growth (MiB) of loading `artifact` and running it `runs` times; None if the probe fails."""
    with tempfile.TemporaryDirectory(prefix="edgecompress-mem-") as scratch:
        request = Path(scratch) / "request.json"
        save_npz(Path(scratch) / "feeds.npz", feeds)
        request.write_text(json.dumps({"artifact": artifact.to_dict(), "profile": profile.model_dump(mode="json"), "runs": runs}))
        try:
            completed = subprocess.run(
                [sys.executable, "-m", "edgecompress.measure.memory", scratch], capture_output=True, text=True, timeout=300
            )
            return float(json.loads(completed.stdout.strip().splitlines()[-1])["peak_mb"])
        except (subprocess.SubprocessError, OSError, ValueError, IndexError, KeyError):
            return None


def _probe(scratch: Path) -> dict[str, float]:
    import onnxruntime  # noqa: F401  (part of the baseline, not of the engine)

    from edgecompress.engines import get_builder

    request = json.loads((scratch / "request.json").read_text())
    data = request["artifact"]
    artifact = EngineArtifact(
        target=data["target"], kind=data["kind"], precision=data["precision"],
        path=Path(data["path"]) if data["path"] else None, files=[Path(p) for p in data["files"]],
        metadata=data["metadata"], note=data["note"], precision_layers=data.get("precision_layers", {}),
    )
    profile = TargetProfile.model_validate(request["profile"])
    if artifact.kind == "executorch":  # its runtime (torch + executorch.runtime) is baseline too, as onnxruntime is
        import executorch.runtime  # noqa: F401
    with np.load(scratch / "feeds.npz") as stored:
        feeds = {key: stored[key] for key in stored.files}
    baseline = _status_mb("VmRSS")
    runner = get_builder(artifact.kind).load(artifact, profile)
    for _ in range(request["runs"]):
        runner.run(feeds)
    peak = _status_mb("VmHWM")
    return {"baseline_mb": baseline, "peak_mb": max(0.0, peak - baseline)}


if __name__ == "__main__":
    print(json.dumps(_probe(Path(sys.argv[1]))))
