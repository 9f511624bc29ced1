"""Benchmark stage: latency percentiles, throughput and peak memory over any Runner.

Several runners are timed interleaved (one run each, round-robin) so that machine noise
hits all of them alike and their ratio is meaningful; percentiles come from the
per-run times after warm-up.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

from edgecompress.engines.base import Runner


@dataclass(frozen=True)
class LatencyStats:
    p50: float
    p90: float
    p99: float
    mean: float
    min: float
    batch: int
    runs: int
    throughput_per_s: float  # samples per second at this batch size, from the median

    def to_dict(self) -> dict:
        return asdict(self)


def _stats(times_ms: list[float], batch: int) -> LatencyStats:
    values = np.asarray(times_ms)
    p50 = float(np.percentile(values, 50))
    return LatencyStats(
        p50=p50,
        p90=float(np.percentile(values, 90)),
        p99=float(np.percentile(values, 99)),
        mean=float(values.mean()),
        min=float(values.min()),
        batch=batch,
        runs=len(values),
        throughput_per_s=batch * 1000.0 / p50 if p50 > 0 else 0.0,
    )


def benchmark(
    runners: dict[str, Runner],
    feeds: dict[str, np.ndarray],
    runs: int = 200,
    warmup: int = 20,
    max_seconds: float = 30.0,
) -> tuple[dict[str, LatencyStats], dict[str, list[float]]]:
    """Time every runner on the same feeds, interleaved; stop early after `max_seconds`."""
    batch = len(next(iter(feeds.values())))
    for runner in runners.values():
        for _ in range(warmup):
            runner.run(feeds)
    samples: dict[str, list[float]] = {name: [] for name in runners}
    deadline = time.perf_counter() + max_seconds
    for index in range(runs):
        for name, runner in runners.items():
            start = time.perf_counter()
            runner.run(feeds)
            samples[name].append((time.perf_counter() - start) * 1000.0)
        if index >= 10 and time.perf_counter() > deadline:
            break
    return {name: _stats(times, batch) for name, times in samples.items()}, samples
