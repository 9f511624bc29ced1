"""Run an ORT-format model on whatever machine this file lands on (here: aarch64 under QEMU).

Self-contained on purpose (numpy + onnxruntime only): it is copied into the arm64 root
file system and run there by `scripts/arm64-emulated.sh run`. Reads JOB/engine.ort,
JOB/feeds.npz and JOB/settings.json; writes JOB/outputs.npz and JOB/result.json.
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
    session = ort.InferenceSession(str(job / "engine.ort"), options, providers=["CPUExecutionProvider"])
    feeds = dict(np.load(job / "feeds.npz"))
    outputs = session.run(None, feeds)
    np.savez(job / "outputs.npz", *outputs)
    latencies = []
    for _ in range(int(settings.get("repeats", 10))):
        start = time.perf_counter()
        session.run(None, feeds)
        latencies.append((time.perf_counter() - start) * 1000.0)
    result = {"machine": platform.machine(), "onnxruntime": ort.__version__, "latency_ms": latencies}
    (job / "result.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
