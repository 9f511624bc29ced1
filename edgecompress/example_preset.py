"""The built-in example as options: what `edgecompress build` without `--model` compresses, and how.

A preset is values for BuildConfig's keys, laid under the config file and the command line,
so every choice can be overridden and shows in report.json's `build.config`. The numbers
are chosen so that int8 pays on a CPU and the first build stays under two minutes on 2 cores:
cnn-wide (64-128-256 channels) loses a quarter of its channels in one step, to 48-96-192 —
multiples of 16, which int8 GEMM kernels tile without remainder, and still wide enough that
int8 beats fp32 (a 50% cut to 32-64-128 measured int8 at only 1.3x fp32).
"""

from __future__ import annotations

from typing import Any

EXAMPLE_OPTIONS: dict[str, Any] = {
    "student": "cnn-wide",
    "prune": "channels",
    "prune_ratio": 0.25,
    "prune_steps": 1,
    "epochs": 4,
    "finetune_epochs": 2,
}


def with_example_options(values: dict[str, Any]) -> dict[str, Any]:
    """The example's options under `values` when they build the example (no model given)."""
    return values if values.get("model") is not None else EXAMPLE_OPTIONS | values
