"""Evaluate stage: fidelity of an engine against the fp32 reference.

Written once against the `Runner` interface and applied to any pair of runners
(Polygraphy's comparator idea): every output is compared by its task's comparator
(edgecompress/measure/fidelity.py: top-1 for classifiers, F1 after NMS for detectors, mask IoU,
CTC character error rate, SQNR); the first output's top-1 agreement, max/mean absolute
difference and cosine are kept as raw figures (report.json's `agreement`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from edgecompress.source.layout import BatchLayout
from edgecompress.engines.base import Runner
from edgecompress.measure.fidelity import (
    FidelityOptions,
    OutputFidelity,
    compare_outputs_by_task,
    plan_fidelity,
)


@dataclass(frozen=True)
class EvalSet:
    """Held-out model inputs (by input name) with optional integer labels."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    description: str
    layout: BatchLayout | None = None  # batch axis per input; None: axis 0 (0-d inputs: one value for all)

    @property
    def batch_layout(self) -> BatchLayout:
        return self.layout or BatchLayout({})

    def __len__(self) -> int:
        return self.batch_layout.count(self.inputs)


@dataclass(frozen=True)
class Agreement:
    top1: float  # fraction of samples whose argmax matches the reference
    max_abs_diff: float
    mean_abs_diff: float
    cosine: float  # mean per-sample cosine similarity of the first output
    samples: int


@dataclass(frozen=True)
class Evaluation:
    accuracy_reference: float | None  # top-1 in percent, None without labels
    accuracy_engine: float | None
    agreement: Agreement
    data: str
    fidelity: tuple[OutputFidelity, ...] = ()  # per output, in the metric of its task

    def to_dict(self) -> dict:
        return asdict(self)


def run_all_batched(runner: Runner, inputs: dict[str, np.ndarray], batch_size: int,
                    layout: BatchLayout | None = None) -> list[np.ndarray]:
    """Every output of the runner over all samples, fed `batch_size` at a time (sliced along each input's batch axis)."""
    return _run_outputs(runner, inputs, batch_size, layout)[0]


def _run_outputs(runner: Runner, inputs: dict[str, np.ndarray], batch_size: int,
                 layout: BatchLayout | None = None) -> tuple[list[np.ndarray], list[int | None]]:
    """Every output over all samples, and the axis each one carries the batch on (None: a scalar per feed)."""
    layout = layout or BatchLayout({})
    feeds = list(layout.batches(inputs, batch_size))
    batches = [runner.run(feed) for feed in feeds]
    sizes = [layout.count(feed) for feed in feeds]
    joined = [_join([batch[index] for batch in batches], sizes) for index in range(len(batches[0]))]
    return [output for output, _ in joined], [axis for _, axis in joined]


def _join(parts: list[np.ndarray], sizes: list[int]) -> tuple[np.ndarray, int | None]:
    """One output's batches joined along the axis that carries the batch (axis 0 unless, like a recurrent state
    [layers, batch, hidden], another axis is the one whose size follows each feed's sample count), and that axis."""
    ranks = {part.ndim for part in parts}
    if ranks == {0}:
        return (parts[0] if len(parts) == 1 else np.stack(parts)), None
    axis = next((axis for axis in range(min(ranks))
                 if all(part.shape[axis] == size for part, size in zip(parts, sizes))), 0)
    return (parts[0] if len(parts) == 1 else np.concatenate(parts, axis=axis)), axis


def run_batched(runner: Runner, inputs: dict[str, np.ndarray], batch_size: int, layout: BatchLayout | None = None) -> np.ndarray:
    """The runner's first output over all samples, fed `batch_size` at a time."""
    return run_all_batched(runner, inputs, batch_size, layout)[0]


def top1_accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return 100.0 * float(np.mean(logits.reshape(len(labels), -1).argmax(1) == labels))


def compare_outputs(reference: np.ndarray, candidate: np.ndarray) -> Agreement:
    ref = reference.reshape(len(reference), -1).astype(np.float64)
    got = candidate.reshape(len(candidate), -1).astype(np.float64)
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1)
    cosine = np.sum(ref * got, axis=1) / np.where(norms == 0, 1.0, norms)
    return Agreement(
        top1=float(np.mean(ref.argmax(1) == got.argmax(1))),
        max_abs_diff=float(np.max(np.abs(ref - got))),
        mean_abs_diff=float(np.mean(np.abs(ref - got))),
        cosine=float(np.mean(cosine)),
        samples=len(ref),
    )


def evaluate(
    engine: Runner, reference: Runner, data: EvalSet, batch_size: int = 32, fidelity: FidelityOptions | None = None
) -> Evaluation:
    reference_outputs, batch_axes = _run_outputs(reference, data.inputs, batch_size, data.layout)
    engine_outputs = run_all_batched(engine, data.inputs, batch_size, data.layout)
    names = [spec.name for spec in reference.outputs] or [f"output{i}" for i in range(len(reference_outputs))]
    plan = plan_fidelity(names, reference_outputs, fidelity or FidelityOptions(), batch_axes)
    by_task = compare_outputs_by_task(plan, reference_outputs, engine_outputs, data.labels)
    # top-1 accuracy where a classification output took the labels (class ids make no sense for other tasks)
    labelled = next((f.result.details for f in by_task if "top-1 accuracy fp32" in f.result.details), None)
    return Evaluation(
        accuracy_reference=None if labelled is None else labelled["top-1 accuracy fp32"],
        accuracy_engine=None if labelled is None else labelled["top-1 accuracy engine"],
        agreement=compare_outputs(reference_outputs[0], engine_outputs[0]),
        data=data.description,
        fidelity=by_task,
    )
