"""BuildReport: one target's build, typed; report.json is its one serialisation.

The pipeline assembles a BuildReport once, at the end of a target's build, from parts the
steps return; `to_dict()` writes today's report.json keys and value shapes (the stable ones
are listed in report.py), and `BuildReport.from_dict` / `load_report` read a report.json back,
so the bundle, `inspect` and users' tools read attributes instead of guessing dict keys.

A field's JSON key is its name unless `key` says otherwise; a section missing from a build
is written as null, or left out where `absent` says so (report.json has always left those
keys out, and tools test for them with `in`). Parts that are open by nature stay
`dict[str, Any]`: the target profile, the engine builder's metadata, the recipe, the build
config, per-output fidelity figures, the repair and precision-choice records, the
compression record.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar, get_args, get_type_hints

from edgecompress.core.errors import BuildDirError
from edgecompress.measure.bench import LatencyStats
from edgecompress.measure.evaluate import Agreement as MeasuredAgreement

Section = TypeVar("Section", bound="_Section")
OMIT, EMPTY = "omit", "empty"  # how a None field is written: key left out, or `{}`


def _opt(key: str | None = None, absent: str | None = None) -> Any:
    """A field that may be None (the default), written under `key`, left out or `{}` when None per `absent`."""
    return field(default=None, metadata={"key": key, "absent": absent})


def _json_key(f: Any) -> str:
    return f.metadata.get("key") or f.name


def _section_type(hint: Any) -> type[_Section] | None:
    """The section class in `Foo` or `Foo | None`, else None (a plain value)."""
    for candidate in (hint, *get_args(hint)):
        # get_args: a generic alias such as dict[str, Any] passes isinstance(..., type) on Python 3.10
        if isinstance(candidate, type) and not get_args(candidate) and issubclass(candidate, _Section):
            return candidate
    return None


class _Section:
    """Serialises a dataclass field by field; sections nest, everything else is already JSON."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if value is None and f.metadata.get("absent") == OMIT:
                continue
            if value is None and f.metadata.get("absent") == EMPTY:
                value = {}
            out[_json_key(f)] = value.to_dict() if isinstance(value, _Section) else value
        return out

    @classmethod
    def from_dict(cls: type[Section], data: dict[str, Any]) -> Section:
        hints = get_type_hints(cls)
        values: dict[str, Any] = {}
        for f in fields(cls):  # type: ignore[arg-type]
            key = _json_key(f)
            if key not in data:
                continue  # the field's default; a required one missing raises TypeError (not our report)
            value, section = data[key], _section_type(hints[f.name])
            if section is not None and f.metadata.get("absent") == EMPTY and value == {}:
                value = None
            values[f.name] = section.from_dict(value) if section is not None and value is not None else value
        return cls(**values)


@dataclass(frozen=True)
class ModelFacts(_Section):
    name: str
    source: str
    inputs: list[dict[str, Any]]  # TensorSpec.to_dict() per input
    outputs: list[dict[str, Any]]
    opset: int | None = None
    labels: list[str] | None = None


@dataclass(frozen=True)
class EngineFacts(_Section):
    kind: str
    path: str | None  # None: the engine is built on the device from `files` (a kit)
    precision: str
    precision_layers: dict[str, int] | None  # e.g. {"int8": 9, "fp32": 2}; None where the builder cannot tell
    size_bytes: int
    files: list[str] = field(default_factory=list)
    runnable_here: bool = True
    note: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)  # open: whatever the engine builder records


@dataclass(frozen=True)
class LatencyFigures(_Section, LatencyStats):
    """bench.LatencyStats in milliseconds, plus where it was measured (measured_on's summary)."""

    measured_on: str | None = _opt(absent=OMIT)

    @classmethod
    def measured(cls, stats: LatencyStats, measured_on: str) -> LatencyFigures:
        return cls(**asdict(stats), measured_on=measured_on)


@dataclass(frozen=True)
class ReferenceFacts(_Section):
    """The fp32 ONNX model everything is compared with."""

    path: str
    precision: str
    size_bytes: int
    latency: LatencyFigures | None = _opt(key="latency_ms")


@dataclass(frozen=True)
class CalibrationFacts(_Section):
    source: str
    sha256: str
    samples: int
    manifest_verified: bool
    made_from: str | None
    layout: dict[str, Any]  # {"batch_axis": {input: axis or None (a scalar)}}


@dataclass(frozen=True)
class QuantizationFacts(_Section):
    recipe: dict[str, Any]  # QuantRecipe.to_dict(): open, it grows with the recipe
    model_path: str
    calibration: CalibrationFacts
    # open: TargetQuantization.report_fields() less recipe/model_path — layers, repair tries, precision candidates;
    # written flat into `quantization` (inspect reads them there)
    decisions: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"recipe": self.recipe, "model_path": self.model_path, "calibration": self.calibration.to_dict(), **self.decisions}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantizationFacts:
        own = ("recipe", "model_path", "calibration")
        return cls(data["recipe"], data["model_path"], CalibrationFacts.from_dict(data["calibration"]),
                   {key: value for key, value in data.items() if key not in own})


@dataclass(frozen=True)
class Accuracy(_Section):
    """Top-1 in percent (None without labels) and the data it was measured on."""

    fp32: float | None
    engine: float | None
    data: str


@dataclass(frozen=True)
class Agreement(_Section, MeasuredAgreement):
    """measure.evaluate.Agreement as report.json writes it: the engine's outputs against fp32's on the same inputs."""


@dataclass(frozen=True)
class Fidelity(_Section):
    """measure.fidelity.fidelity_report: the headline output's task metric against the budget."""

    task: str
    output: str
    metric: str
    value: float
    higher_is_better: bool
    budget: str
    limit: float | None
    limit_source: str
    met: bool
    validated_on: str
    outputs: list[dict[str, Any]]  # per output: its task's figures (open per task), budget and met


@dataclass(frozen=True)
class MemoryFigures(_Section):
    engine_peak_mb: float | None
    reference_peak_mb: float | None
    how: str


@dataclass(frozen=True)
class MeasuredOn(_Section):
    """measure.measured_on.measured_on: this host, the device that ran the engine, the shared session settings."""

    where: str
    arch: str
    cpu: str
    cores: int | None
    device: str
    session: dict[str, Any] | None
    target: str
    target_arch: str
    target_arch_matches: bool
    summary: str


@dataclass(frozen=True)
class SimulatedAccuracy(_Section):
    fp32: float | None
    int8: float | None
    data: str


@dataclass(frozen=True)
class Int8ModelCheck(_Section):
    """What int8 does to the model as the device computes it, when this host cannot run the device's engine."""

    how: str
    accuracy: SimulatedAccuracy
    agreement: Agreement
    fidelity: Fidelity


@dataclass(frozen=True)
class SampleInputs(_Section):
    """Held-out inputs kept beside the engine for the device self-test."""

    path: str
    count: int
    source: str


@dataclass(frozen=True)
class BuildFacts(_Section):
    created: str
    config: dict[str, Any]  # BuildConfig.model_dump(): open, it grows with the options
    seconds: float | None = None


@dataclass(frozen=True)
class BuildReport(_Section):
    """One target's build. Field order is report.json's key order."""

    target: str
    model: ModelFacts
    preprocess: dict[str, Any] | None  # PreprocessSpec.to_dict(), when known
    profile: dict[str, Any]  # TargetProfile.summary(): the whole profile, open
    engine: EngineFacts
    reference: ReferenceFacts
    size_ratio_vs_fp32: float | None
    quantization: QuantizationFacts
    accuracy: Accuracy
    agreement: Agreement | None  # None: no engine ran here (a device kit)
    latency: LatencyFigures | None = _opt(key="latency_ms")
    throughput_per_s: float | None = None
    memory: MemoryFigures | None = _opt(absent=EMPTY)
    versions: dict[str, str] = field(default_factory=dict)
    build: BuildFacts | None = None
    samples: SampleInputs | None = _opt(absent=OMIT)
    fidelity: Fidelity | None = _opt(absent=OMIT)
    speedup_vs_fp32: float | None = _opt(absent=OMIT)
    measured_on: MeasuredOn | None = _opt(absent=OMIT)
    compression: dict[str, Any] | None = _opt(absent=OMIT)  # compress.stage.compression_report: open record
    int8_model_check: Int8ModelCheck | None = _opt(absent=OMIT)
    verdict: list[str] = field(default_factory=list)
    latency_plot: str | None = None


def load_report(target_dir: Path) -> BuildReport:
    """A built target's report.json read back into its type (for bundle, inspect and users' tools)."""
    path = Path(target_dir) / "report.json"
    fix = "pass a built target folder (e.g. build/cpu), or rebuild it with `edgecompress build`"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BuildDirError(f"{target_dir} has no report.json", fix) from None
    except ValueError as exc:
        raise BuildDirError(f"{path} is not valid JSON ({exc})", fix) from None
    try:
        return BuildReport.from_dict(data)
    except (TypeError, KeyError, AttributeError) as exc:  # a section missing or of another shape: not a build's report
        raise BuildDirError(f"{path} is not a build report ({exc})", fix) from None


__all__ = [
    "Accuracy", "Agreement", "BuildFacts", "BuildReport", "CalibrationFacts", "EngineFacts", "Fidelity", "Int8ModelCheck",
    "LatencyFigures", "MeasuredOn", "MemoryFigures", "ModelFacts", "QuantizationFacts", "ReferenceFacts", "SampleInputs",
    "SimulatedAccuracy", "load_report",
]
