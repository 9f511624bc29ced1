"""Run an ORT-format model on whatever machine this file lands on (here: aarch64 under QEMU).

Self-contained on purpose (numpy + onnxruntime only): it is copied into the arm64 root
file system and run there by `scripts/arm64-emulated.sh run`. Reads JOB/settings.json
({"engines": {label: file}, "repeats", "threads"}) and JOB/feeds.npz; writes
JOB/outputs-<label>.npz and JOB/result.json. Timed runs of the engines are interleaved,
so a slow moment of the emulator hits all of them alike.
"""

import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort


def main(job: Path) -> None:
    settings = json.loads((job / "settings.json").read_text())
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(settings.get("threads", 0))
    feeds = dict(np.load(job / "feeds.npz"))
    sessions = {}
    for label, name in settings["engines"].items():
        sessions[label] = ort.InferenceSession(str(job / name), options, providers=["CPUExecutionProvider"])
        np.savez(job / f"outputs-{label}.npz", *sessions[label].run(None, feeds))
    latencies: dict[str, list[float]] = {label: [] for label in sessions}
    for _ in range(int(settings.get("repeats", 10))):
        for label, session in sessions.items():
            start = time.perf_counter()
            session.run(None, feeds)
            latencies[label].append((time.perf_counter() - start) * 1000.0)
    result = {"machine": platform.machine(), "onnxruntime": ort.__version__, "latency_ms": latencies}
    (job / "result.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
