"""Calibration and evaluation data held in a Python session: arrays, tensors, DataLoaders, any iterable of batches.

The in-memory counterpart of the .npz reader (load.py). Batches are read as an nncf.Dataset reads them (a batch, or
what `transform_fn` makes of it, is the model's input(s); y of an (x, y) pair is the labels), joined on each input's
batch axis and checked for what needs no model (a batch at all, joinable shapes, finite values): a bad set fails
before the model is exported. load.check_fits checks the rest against the exported model's inputs.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from edgecompress.calib.load import LABEL_KEYS, check_finite
from edgecompress.core.errors import CalibrationError
from edgecompress.source.layout import BatchLayout


@dataclass(frozen=True)
class InMemoryData:
    """Batches joined into arrays: inputs by name, or by position (keys "0", "1", ...) until the model names them."""

    inputs: dict[str, np.ndarray]
    positional: bool
    labels: np.ndarray | None  # 1-D integer class ids, when every batch had them
    source: str

    def named(self, names: list[str]) -> dict[str, np.ndarray]:
        """The inputs under the model's input names (positional ones in forward's order)."""
        if not self.positional:
            return self.inputs
        if len(names) != len(self.inputs):
            raise CalibrationError(f"{self.source} gives {len(self.inputs)} inputs per batch, the model takes "
                                   f"{len(names)} ({', '.join(names)})",
                                   "return one array per model input from transform_fn, or a dict by input name")
        return dict(zip(names, self.inputs.values()))


def read_batches(data: Any, transform_fn: Callable[[Any], Any] | None, layout: BatchLayout, limit: int | None,
                 what: str) -> InMemoryData:
    """Read batches until `limit` samples (the rest of a DataLoader is never loaded), join and check them."""
    parts: list[tuple[dict[str, np.ndarray], bool]] = []
    labels: list[np.ndarray | None] = []
    count = 0
    for batch in _batches_of(data, what):
        parts.append(model_inputs(transform_fn(batch) if transform_fn else _inputs_of(batch, what)))
        labels.append(_labels_of(batch))
        count += layout.count(parts[-1][0])
        if limit is not None and count >= limit:
            break
    if not parts:
        raise CalibrationError(f"{what} gave no batches", "pass at least one batch of model inputs")
    inputs = layout.take(_joined(parts, layout, what), 0, limit or count)
    _check_finite(inputs, what)
    count = layout.count(inputs)
    return InMemoryData(inputs, parts[0][1], _joined_labels(labels, count),
                        f"{what}: in-memory {type(data).__name__} ({count} samples)")


def model_inputs(value: Any) -> tuple[dict[str, np.ndarray], bool]:
    """(arrays, positional?): a dict is by input name (labels left out), a tuple in forward's order, else one input."""
    if isinstance(value, Mapping):
        return {str(name): as_array(item) for name, item in value.items() if name not in LABEL_KEYS}, False
    items = value if isinstance(value, (tuple, list)) else [value]
    return {str(index): as_array(item) for index, item in enumerate(items)}, True


def as_array(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor (torch is never imported for numpy users)
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _batches_of(data: Any, what: str) -> Iterable[Any]:
    if _is_array(data) or isinstance(data, Mapping):
        return [data]  # one batch: the whole set
    if isinstance(data, Iterable):
        return data
    raise CalibrationError(f"{what} is a {type(data).__name__}",
                           "pass arrays, a dict of arrays, a tensor, a DataLoader or an iterable of batches, or a .npz path")


def _is_array(value: Any) -> bool:
    torch = sys.modules.get("torch")  # whoever holds a tensor has imported torch
    return isinstance(value, np.ndarray) or (torch is not None and isinstance(value, torch.Tensor))


def _inputs_of(batch: Any, what: str) -> Any:
    """A batch's model input(s) without a transform_fn: the batch itself, or x of an (x, y) pair."""
    if not isinstance(batch, (tuple, list)):
        return batch
    if len(batch) in (1, 2):
        return batch[0]
    raise CalibrationError(f"{what} batches hold {len(batch)} items, not (x,) or (x, y)",
                           "pass transform_fn=lambda batch: <the model's inputs> to pick them")


def _labels_of(batch: Any) -> np.ndarray | None:
    """y of an (x, y) batch or a dict's `y`/`labels`, kept only as 1-D integer class ids (what accuracy needs)."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        labels = batch[1]
    elif isinstance(batch, Mapping):
        labels = next((batch[key] for key in LABEL_KEYS if key in batch), None)
    else:
        return None
    array = None if labels is None else as_array(labels)
    return array if array is not None and array.ndim == 1 and np.issubdtype(array.dtype, np.integer) else None


def _joined(parts: list[tuple[dict[str, np.ndarray], bool]], layout: BatchLayout, what: str) -> dict[str, np.ndarray]:
    """Every batch's arrays joined on their batch axis; a 0-d input (one value for all samples) is kept once."""
    first = parts[0][0]
    if any(list(arrays) != list(first) for arrays, _ in parts):
        raise CalibrationError(f"{what} batches hold different inputs", "give every batch the same inputs")
    joined = {}
    for name, array in first.items():
        axis = layout.axis(name, array)
        try:
            joined[name] = array if axis is None else np.concatenate([arrays[name] for arrays, _ in parts], axis=axis)
        except ValueError as error:
            raise CalibrationError(f"{what}: the batches of input '{name}' do not join ({error})",
                                   "give every batch the same sample shape") from None
    return joined


def _joined_labels(labels: list[np.ndarray | None], count: int) -> np.ndarray | None:
    if any(part is None for part in labels):
        return None
    joined = np.concatenate([part for part in labels if part is not None])[:count]
    return joined if len(joined) == count else None


def _check_finite(arrays: Mapping[str, np.ndarray], what: str) -> None:
    """NaN/Inf fail here, before the model is exported (load.check_fits says the same, after it)."""
    for name, array in arrays.items():
        if array.dtype == object:
            raise CalibrationError(f"{what}: input '{name}' is not numeric ({array.dtype})", "pass arrays or tensors")
        check_finite(name, array, what)
