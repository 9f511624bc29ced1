"""Evaluate stage: accuracy and agreement of an engine against the fp32 reference.

Written once against the `Runner` interface and applied to any pair of runners
(Polygraphy's comparator idea): top-1 accuracy when labels exist, and always top-1
agreement, max/mean absolute difference and logit cosine on held-out inputs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from edgecompress.calib.layout import BatchLayout
from edgecompress.engines.base import Runner


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

    def to_dict(self) -> dict:
        return asdict(self)


def run_batched(runner: Runner, inputs: dict[str, np.ndarray], batch_size: int, layout: BatchLayout | None = None) -> np.ndarray:
    """The runner's first output over all samples, fed `batch_size` at a time."""
    outputs = [runner.run(feed)[0] for feed in (layout or BatchLayout({})).batches(inputs, batch_size)]
    return np.concatenate(outputs, axis=0)


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


def evaluate(engine: Runner, reference: Runner, data: EvalSet, batch_size: int = 32) -> Evaluation:
    reference_out = run_batched(reference, data.inputs, batch_size, data.layout)
    engine_out = run_batched(engine, data.inputs, batch_size, data.layout)
    has_labels = data.labels is not None
    return Evaluation(
        accuracy_reference=top1_accuracy(reference_out, data.labels) if has_labels else None,
        accuracy_engine=top1_accuracy(engine_out, data.labels) if has_labels else None,
        agreement=compare_outputs(reference_out, engine_out),
        data=data.description,
    )
