"""Turn a source into a calibration set: seeded, class-stratified sampling without duplicates.

A recipe (source, count, seed, preprocessing) fully determines the set, so the same
recipe always yields the same arrays and the same sha256, and builds on every target
can reuse one set. The manifest written beside the arrays records all of it.
"""

from __future__ import annotations

import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgecompress import __version__
from edgecompress.calib.diagnostics import diagnose
from edgecompress.calib.load import CalibrationSet
from edgecompress.calib.manifest import arrays_sha256
from edgecompress.calib.manifest import MANIFEST_FORMAT, check_out_path, write_set
from edgecompress.calib.sources import Source, UnreadableSample, open_source
from edgecompress.core.errors import CalibrationError, ConfigError
from edgecompress.device.preprocess import PreprocessSpec
from edgecompress.core.progress import info, progress_bar, warn

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class CalibRecipe(BaseModel):
    """Everything that decides a set's contents; `calibration/*.toml` files hold these."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    source: str = Field(description="'digits', an image folder, or a .npy/.npz file")
    count: int = Field(128, ge=1, description="samples in the set")
    seed: int = Field(0, description="seed of the stratified draw")
    input_name: str = Field("x", description="key of the array in the .npz (the model's input name)")
    preprocess: dict[str, Any] | None = Field(None, description="PreprocessSpec fields; None: the source's default")

    def spec(self) -> PreprocessSpec | None:
        if self.preprocess is None:
            return None
        try:
            return PreprocessSpec.from_dict(self.preprocess)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"bad [preprocess] in calibration recipe: {exc}", "see calibration/README.md") from exc


def load_recipe(path: Path) -> CalibRecipe:
    """A recipe TOML; a relative `source` path is taken relative to the recipe file."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read calibration recipe '{path}': {exc}", "pass a readable TOML file") from exc
    source = data.get("source")
    if isinstance(source, str) and source != "digits" and not Path(source).is_absolute():
        data["source"] = str(path.parent / source)
    return make_recipe(data, f"calibration recipe '{path}'")


def make_recipe(values: dict[str, Any], where: str = "calibration options") -> CalibRecipe:
    """Validate recipe values (from a file, the command line or both), naming the bad key."""
    try:
        return CalibRecipe(**values)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"bad {where}: {problems}", "see calibration/README.md") from exc


@dataclass
class Draw:
    """What sampling kept and why it dropped the rest."""

    samples: list[dict[str, np.ndarray]]
    labels: list[str | None]
    unreadable: int = 0
    duplicates: int = 0
    conversions: Counter = field(default_factory=Counter)


def generate(recipe: CalibRecipe) -> CalibrationSet:
    """Sample `recipe.count` distinct, readable samples from the source, stratified by class."""
    source = open_source(recipe.source, recipe.spec(), recipe.input_name)
    for note in source.notes:
        warn(note)
    draw = draw_samples(source, recipe.count, recipe.seed)
    arrays = stack_samples(draw.samples, source.location)
    described = {
        "kind": source.kind,
        "location": source.location,
        "candidates": len(source.candidates),
        "unreadable_skipped": draw.unreadable,
        "duplicates_removed": draw.duplicates,
        "conversions": dict(draw.conversions),
    }
    per_class = dict(sorted(Counter(draw.labels).items())) if source.labelled else None
    manifest = describe(arrays, described, recipe.seed, source.spec, per_class)
    return CalibrationSet(arrays, manifest["sha256"], source.location, manifest=manifest)


def stratified_order(labels: list[str | None], seed: int) -> list[int]:
    """A seeded order of all candidates whose every prefix holds each class in proportion.

    Each class is shuffled and its members placed at evenly spaced positions in (0, 1);
    sorting by position (ties broken at random) interleaves the classes. Skipped samples
    are simply replaced by the next ones.
    """
    rng = np.random.default_rng(seed)
    members: dict[str | None, list[int]] = defaultdict(list)
    for index, label in enumerate(labels):
        members[label].append(index)
    order: list[int] = []
    positions: list[float] = []
    for indices in members.values():
        order.extend(int(i) for i in rng.permutation(indices))
        positions.extend((np.arange(len(indices)) + 0.5) / len(indices))
    ties = rng.random(len(order))
    return [order[i] for i in np.lexsort((ties, np.asarray(positions)))]


def draw_samples(source: Source, count: int, seed: int) -> Draw:
    """Decode candidates in stratified order until `count` distinct readable ones are kept."""
    total = len(source.candidates)
    if count > total:
        raise CalibrationError(
            f"--count {count} is larger than the source: '{source.location}' has only {total} samples",
            f"use --count {total} or fewer, or add data",
        )
    draw = Draw([], [])
    seen: set[str] = set()
    with progress_bar() as progress:
        task = progress.add_task("sampling calibration data", total=count)
        for index in stratified_order([c.label for c in source.candidates], seed):
            if len(draw.samples) == count:
                break
            candidate = source.candidates[index]
            try:
                decoded = candidate.decode()
            except UnreadableSample as exc:
                draw.unreadable += 1
                warn(f"skipped unreadable sample {exc}")
                continue
            digest = arrays_sha256(decoded.inputs)
            if digest in seen:
                draw.duplicates += 1
                continue
            seen.add(digest)
            draw.samples.append(decoded.inputs)
            draw.labels.append(candidate.label)
            if decoded.note:
                draw.conversions[decoded.note] += 1
            progress.update(task, advance=1)
    _check_enough(draw, count, total, source.location)
    return draw


def _check_enough(draw: Draw, count: int, total: int, location: str) -> None:
    kept = len(draw.samples)
    dropped = f"{draw.unreadable} unreadable, {draw.duplicates} duplicates"
    if kept == 0:
        raise CalibrationError(
            f"none of the {total} samples in '{location}' could be used ({dropped})",
            "check that the files are valid JPEG/PNG images",
        )
    if kept < count:
        raise CalibrationError(
            f"only {kept} usable samples exist in '{location}' ({total} found, {dropped}); --count {count} asked",
            f"use --count {kept} or fewer, or add data",
        )
    for note, times in draw.conversions.items():
        warn(f"{note}: {times} of {kept} samples (mixed colour modes in the source)")
    if draw.unreadable or draw.duplicates:
        info(f"kept {kept} samples; skipped {dropped}")


def stack_samples(samples: list[dict[str, np.ndarray]], location: str) -> dict[str, np.ndarray]:
    """(N, ...) arrays per input; differing sample shapes are a preprocessing mistake, said plainly."""
    arrays = {}
    for name in samples[0]:
        shapes = Counter(tuple(s[name].shape) for s in samples)
        if len(shapes) > 1:
            (common, _), (other, _) = shapes.most_common(2)
            raise CalibrationError(
                f"samples from '{location}' have different shapes after preprocessing, e.g. {common} and {other}",
                "give a fixed size: --size S (resize + center crop) or --resize H,W",
            )
        arrays[name] = np.stack([s[name] for s in samples])
    return arrays


def describe(
    arrays: Mapping[str, np.ndarray],
    source: dict[str, Any],
    seed: int,
    spec: PreprocessSpec | None,
    per_class: dict | None = None,
) -> dict[str, Any]:
    """The manifest body shared by every way of making a set (sampled or synthesized)."""
    return {
        "format": MANIFEST_FORMAT,
        "tool": {"name": "edgecompress", "version": __version__},
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": source,
        "count": len(next(iter(arrays.values()))),
        "seed": seed,
        "per_class_counts": per_class,
        "preprocess": spec.to_dict() if spec is not None else None,
        **_arrays_fields(arrays, 3 if spec is not None and spec.layout == "NHWC" else 1),
    }


def _arrays_fields(arrays: Mapping[str, np.ndarray], channel_axis: int = 1) -> dict[str, Any]:
    """The manifest fields computed from the arrays themselves (redone when they are renamed)."""
    return {
        "inputs": {name: {"shape": list(a.shape), "dtype": str(a.dtype)} for name, a in arrays.items()},
        "channel_stats": {name: channel_stats(a, channel_axis) for name, a in arrays.items()},
        "sha256": arrays_sha256(arrays),
    }


def channel_stats(array: np.ndarray, channel_axis: int = 1) -> dict[str, list[float]]:
    """Per-channel mean/std/min/max (one 'channel' for arrays without an image layout)."""
    if array.ndim == 4:
        values = np.moveaxis(array, channel_axis, 0).reshape(array.shape[channel_axis], -1)
    else:
        values = array.reshape(1, -1)
    values = values.astype(np.float64)
    return {
        stat: [round(float(v), 6) for v in getattr(values, stat)(axis=1)] for stat in ("mean", "std", "min", "max")
    }


def fit_to_model(calibration_set: CalibrationSet, model) -> CalibrationSet:
    """Prove the set fits `model` before it is written, and key its arrays by the model's input names.

    `model` is a `SourceModel` (ONNX: names, ranks, sizes and dtypes are checked), a torch
    module (checked by running it, in the BatchNorm diagnostics), or None (nothing to check).
    """
    onnx_path = getattr(model, "onnx_path", None)
    if onnx_path is None:
        return calibration_set
    from edgecompress.source.layout import batch_layout
    from edgecompress.calib.load import check_fits, match_inputs
    from edgecompress.export.graph import input_dims, model_io, read_onnx

    onnx_model = read_onnx(onnx_path)
    inputs, _ = model_io(onnx_model)
    batches = batch_layout(input_dims(onnx_model), getattr(model, "batch_axes", None))
    where = f"calibration set for {Path(onnx_path).name}"
    arrays = check_fits(match_inputs(calibration_set.arrays, inputs, where), inputs, where, batches)
    layout = (calibration_set.manifest.get("preprocess") or {}).get("layout")
    manifest = {**calibration_set.manifest, **_arrays_fields(arrays, 3 if layout == "NHWC" else 1),
                "batch_axis": batches.to_dict(), "count": batches.count(arrays)}  # None: a scalar, one value for all
    return replace(calibration_set, arrays=arrays, sha256=manifest["sha256"], manifest=manifest, layout=batches)


def save_set(calibration_set: CalibrationSet, out: Path, model=None) -> CalibrationSet:
    """Check against the model, run the diagnostics, record their warnings, then write atomically."""
    calibration_set = fit_to_model(calibration_set, model)
    torch_module = getattr(model, "module", model) if getattr(model, "onnx_path", None) is None else None
    findings = diagnose(calibration_set.arrays, torch_module)
    for finding in findings:
        warn(finding)
    manifest = {**calibration_set.manifest, "diagnostics": findings}
    write_set(out, calibration_set.arrays, manifest)
    return replace(calibration_set, manifest=manifest)


def make_calibration_set(recipe: CalibRecipe, out: Path, model=None) -> CalibrationSet:
    """`edgecompress calib --from …` as a function: sample, check, diagnose, write `<out>.npz` + `.json`."""
    check_out_path(out)
    return save_set(generate(recipe), out, model)
