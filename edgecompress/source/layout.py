"""Where the batch is in each model input: one layout shared by calibration, evaluation and benchmarks.

A calibration or evaluation set holds each input as the model takes it at batch N. For most models
that is N on axis 0, but a recurrent state is often `[layers, batch, hidden]` (batch on axis 1) and a
sample rate is a 0-d scalar, one value used for every sample. The batch axis is the one the model
marks as batch: a `dim_param` shared by several inputs, or `--batch-axis NAME:AXIS`; otherwise axis 0.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from edgecompress.core.errors import InputShapeError


@dataclass(frozen=True)
class BatchLayout:
    """Input name → its batch axis, or None for a scalar input (one value for every sample).

    `fixed_batch`: a model that fixes its batch (YOLO exports: images [1, 3, 640, 640]) is fed that
    many samples at a time, whatever batch size a stage asks for.
    """

    axes: dict[str, int | None]
    fixed_batch: int | None = None

    def axis(self, name: str, array: np.ndarray) -> int | None:
        if np.ndim(array) == 0:
            return None
        return self.axes.get(name, 0)

    def count(self, arrays: dict[str, np.ndarray]) -> int:
        """Samples in a set: the size of every batched input's batch axis (1 when all are scalars)."""
        sizes = [array.shape[axis] for name, array in arrays.items() if (axis := self.axis(name, array)) is not None]
        return max(sizes, default=1)

    def take(self, arrays: dict[str, np.ndarray], start: int, stop: int) -> dict[str, np.ndarray]:
        """Samples [start, stop) of every batched input; scalars as they are."""
        taken = {}
        for name, array in arrays.items():
            axis = self.axis(name, array)
            taken[name] = array if axis is None else np.take(array, np.arange(start, min(stop, array.shape[axis])), axis=axis)
        return taken

    def batches(self, arrays: dict[str, np.ndarray], batch_size: int):
        batch_size = self.fixed_batch or batch_size
        for start in range(0, self.count(arrays), batch_size):
            yield self.take(arrays, start, start + batch_size)

    def repeated(self, arrays: dict[str, np.ndarray], count: int) -> dict[str, np.ndarray]:
        """Exactly `count` samples, cycling through the set (benchmark feeds at a batch size)."""
        have = self.count(arrays)
        index = np.arange(count) % have
        return {
            name: array if (axis := self.axis(name, array)) is None else np.ascontiguousarray(np.take(array, index, axis=axis))
            for name, array in arrays.items()
        }

    def to_dict(self) -> dict[str, int | None]:
        return dict(self.axes)


def batch_layout(inputs: dict[str, list[int | str | None]], overrides: dict[str, int] | None = None) -> BatchLayout:
    """The batch axis of each input from its dims (int fixed, str dim_param, None open).

    A dim_param that names an axis of more than one input is the batch; an input without it (or a
    model with one input) has its batch on axis 0; a rank-0 input has none. `overrides` win.
    """
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(inputs))
    if unknown:
        raise InputShapeError(f"--batch-axis names inputs the model does not have: {', '.join(unknown)}",
                              f"its inputs are: {', '.join(inputs)}")
    params = Counter(param for dims in inputs.values() for param in dict.fromkeys(d for d in dims if isinstance(d, str)))
    shared = [param for param, uses in params.most_common() if uses > 1]
    axes: dict[str, int | None] = {}
    for name, dims in inputs.items():
        if name in overrides:
            if not 0 <= overrides[name] < max(1, len(dims)):
                raise InputShapeError(f"--batch-axis {name}:{overrides[name]} is outside its rank {len(dims)}",
                                      f"give an axis from 0 to {len(dims) - 1}")
            axes[name] = overrides[name]
        elif not dims:
            axes[name] = None
        elif shared and shared[0] in dims:
            axes[name] = dims.index(shared[0])
        else:
            axes[name] = 0
    fixed = [dim for name, dims in inputs.items() if (axis := axes[name]) is not None and isinstance(dim := dims[axis], int)]
    return BatchLayout(axes, fixed[0] if fixed else None)


def parse_batch_axes(specs: list[str]) -> dict[str, int]:
    """`--batch-axis NAME:AXIS` (repeatable) → {name: axis}."""
    axes = {}
    for spec in specs:
        name, _, axis = spec.rpartition(":")
        if not name or not axis.strip().isdigit():
            raise InputShapeError(f"cannot read --batch-axis '{spec}'", "write it as NAME:AXIS, e.g. --batch-axis state:1")
        axes[name] = int(axis)
    return axes
