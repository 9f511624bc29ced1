"""Phone release: a versioned, signed folder (and zip) an app ships in its assets or downloads and verifies.

A phone runs no sshd, so the IoT route (bundle -> SSH -> self-test -> switch) does not reach it. An app instead
bundles the model or polls a static location. The release is what both need:

    OUT/index.json                    latest version; per version: relative paths and sha256 (for apps that poll)
    OUT/<version>/manifest.json       I/O spec, preprocessing, labels, per engine: quantization, runtime + version
                                      range, figures with where they were measured, golden tolerance;
                                      sha256 and size of every other file
    OUT/<version>/manifest.sig        ed25519 over manifest.json's exact bytes (the same signing as bundles)
    OUT/<version>/engines/<target>/   engine.pte (ExecuTorch) or engine.ort + required_operators.config (ORT Mobile)
    OUT/<version>/golden/             golden inputs, and each engine's outputs for them as computed here
    OUT/<version>.zip                 the version folder, reproducible (sorted, fixed times)

Versions are immutable: an existing version is never rewritten. `device/app_release.py` is the reference loader.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress.core.artifacts import atomic_path, sha256_file, write_json_atomic
from edgecompress.core.errors import BundleError
from edgecompress.device.app_release import INDEX_FORMAT, MANIFEST, RELEASE_FORMAT, SIGNATURE, version_tuple
from edgecompress.engines import EngineArtifact, get_builder
from edgecompress.pipeline.report_types import BuildReport, load_report
from edgecompress.ship.bundle import engine_files, manifest_bytes, resolve_profile, sample_inputs

APP_KINDS = ("executorch", "ort-arm")
_VERSION = re.compile(r"^\d+(\.\d+){0,2}$")


@dataclass(frozen=True)
class ReleaseArtifact:
    """A written phone release: the version folder, its zip and the index an app polls, signed by `signed_by`."""

    version_dir: Path
    archive: Path
    index: Path
    signed_by: str
    manifest: dict[str, Any]


def _runtime(report: BuildReport) -> dict[str, Any]:
    """The runtime and version range the engine needs, from what its builder recorded."""
    meta = report.engine.metadata
    if report.engine.kind == "executorch":
        runtime = dict(meta["runtime"])
        runtime.update(backend=meta.get("backend", "xnnpack"), ops_outside_delegate=meta.get("ops_outside_delegate", []))
        if report.profile.get("options", {}).get("app_runtime"):
            runtime["app_runtime"] = report.profile["options"]["app_runtime"]
        return runtime
    built = str(meta.get("converted_with_onnxruntime") or meta.get("onnxruntime"))
    minimum = report.profile.get("options", {}).get("onnxruntime_min") or ".".join(built.split(".")[:2])
    return {"name": "onnxruntime", "built_with": built, "min_version": str(minimum), "max_version": None,
            "providers": meta.get("device_providers", []), "session_config": meta.get("session_config", {}),
            "app_runtime": "com.microsoft.onnxruntime:onnxruntime-android / onnxruntime-objc (full build loads .ort)"}


def _figures(report: BuildReport) -> dict[str, Any]:
    """The build's figures with where they were measured: this host, never the phone."""
    fidelity = report.fidelity
    latency = report.latency
    return {
        "fidelity": None if fidelity is None else {"metric": fidelity.metric, "value": fidelity.value, "budget": fidelity.budget,
                                                   "met": fidelity.met, "validated_on": fidelity.validated_on},
        "latency_ms": None if latency is None else {"p50": latency.p50, "p90": latency.p90, "batch": latency.batch},
        "speedup_vs_fp32": report.speedup_vs_fp32,
        "size_bytes": report.engine.size_bytes,
        "measured_on": None if report.measured_on is None else report.measured_on.summary,
        "note": "measured on the build host, not on a phone",
    }


def _engine_entry(report: BuildReport, target_dir: Path, staging: Path, feeds: dict[str, np.ndarray]) -> dict[str, Any]:
    """Copy one target's engine into the release, run it here on the golden inputs, and describe it."""
    if report.engine.kind not in APP_KINDS:
        raise BundleError(f"{target_dir} holds a {report.engine.kind} engine, which phones do not run",
                          "build an app target: android-arm64-executorch, ios-arm64-executorch or android-arm64 (.ort)")
    main, files = engine_files(report, target_dir)
    assert main is not None, "app engines are built here"
    folder = f"engines/{report.target}"
    for path in files:
        (staging / folder).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, staging / folder / path.name)
    profile = resolve_profile(report)
    artifact = EngineArtifact(report.target, report.engine.kind, report.engine.precision, main, files,
                              dict(report.engine.metadata))
    outputs = get_builder(report.engine.kind).load(artifact, profile).run(feeds)
    golden = []
    for index, output in enumerate(outputs):
        name = f"golden/{report.target}/output_{index}.npy"
        _save(staging / name, output)
        golden.append(name)
    scale = max(float(np.max(np.abs(o))) for o in outputs)
    classifier = outputs[0].ndim == 2 and outputs[0].shape[1] > 1
    recipe = report.quantization.recipe
    return {
        "target": report.target,
        "kind": report.engine.kind,
        "arch": profile.arch,
        "path": f"{folder}/{main.name}",
        "files": [f"{folder}/{p.name}" for p in files],
        "precision": report.engine.precision,
        "precision_layers": report.engine.precision_layers,
        "batch": profile.batch.opt,
        "quantization": {"recipe": recipe.get("label"), "reason": recipe.get("reason"),
                         "quantizer": report.engine.metadata.get("quantizer"),
                         "calibration_sha256": report.quantization.calibration.sha256},
        "runtime": _runtime(report),
        "figures": _figures(report),
        # ARM kernels round int8 differently from this host's: 5% of the outputs' range, and top-1 for classifiers
        "golden": {"outputs": golden, "atol": max(1e-4, 0.05 * scale), "top1_must_match": bool(classifier),
                   "computed_on": "this host (the engine run here)"},
    }


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.ascontiguousarray(array), allow_pickle=False)


def _io_specs(report: BuildReport) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Names, shapes, dtypes and layout: the engine's fixed shapes where it has them (a .pte), else the model's."""
    shapes = report.engine.metadata.get("input_shapes", {})
    inputs = []
    for spec in report.model.inputs:
        shape = shapes.get(spec["name"], spec["shape"])
        inputs.append({**spec, "shape": shape, "layout": "NCHW" if len(shape) == 4 else None})
    return inputs, [dict(spec) for spec in report.model.outputs]


def write_reproducible_zip(root: Path, out: Path) -> None:
    """Every file under `root`, sorted, stored under `<root name>/`, with a fixed time: same release, same bytes."""
    with atomic_path(out) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            info = zipfile.ZipInfo(f"{root.name}/{path.relative_to(root).as_posix()}", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, path.read_bytes())


def _read_index(path: Path, model: str) -> dict[str, Any]:
    if not path.is_file():
        return {"format": INDEX_FORMAT, "model": model, "latest": None, "versions": {}}
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        raise BundleError(f"{path} is not valid JSON", "restore index.json or release into an empty folder") from None
    if index.get("format") != INDEX_FORMAT or index.get("model") != model:
        raise BundleError(f"{path} is the index of {index.get('model')!r} ({index.get('format')}), not of {model!r}",
                          "release each model into its own folder")
    return index


def build_release(target_dirs: list[Path], out: Path, version: str, sign_key: Path, passphrase: str | None = None,
                  samples: int = 4) -> ReleaseArtifact:
    """Write `out/<version>/` (engines of every target folder, manifest, signature, golden I/O), its zip, and add it
    to `out/index.json`."""
    from edgecompress.ship.signing import load_private_key, sign_manifest

    if not _VERSION.match(version):
        raise BundleError(f"release version {version!r} is not MAJOR[.MINOR[.PATCH]]", "pass e.g. --version 1.2.0")
    out = Path(out)
    version_dir = out / version
    if version_dir.exists():
        raise BundleError(f"release {version} already exists in {out} (releases are immutable)", "bump --version")
    private_key = load_private_key(sign_key, passphrase)
    reports = [(load_report(Path(d)), Path(d)) for d in target_dirs]
    model = reports[0][0].model.name
    if any(r.model.name != model for r, _ in reports):
        raise BundleError("the target folders hold different models", "release the targets of one build together")
    index = _read_index(out / "index.json", model)
    inputs, outputs = _io_specs(reports[0][0])
    feeds = sample_inputs(reports[0][0], reports[0][1], inputs, samples)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{version}.", dir=out) as tmp:
        staging = Path(tmp) / version
        golden_inputs = {}
        for index_number, (name, array) in enumerate(sorted(feeds.items())):
            golden_inputs[name] = f"golden/inputs/input_{index_number}.npy"
            _save(staging / golden_inputs[name], array)
        engines = [_engine_entry(report, target_dir, staging, feeds) for report, target_dir in reports]
        report = reports[0][0]
        manifest = {
            "format": RELEASE_FORMAT,
            "model": {"name": model, "version": version, "source": report.model.source},
            "inputs": inputs,
            "outputs": outputs,
            "preprocessing": report.preprocess,
            "labels": report.model.labels,
            "engines": engines,
            "golden": {"inputs": golden_inputs, "count": len(next(iter(feeds.values())))},
            "files": {p.relative_to(staging).as_posix(): {"sha256": sha256_file(p), "size": p.stat().st_size}
                      for p in sorted(staging.rglob("*")) if p.is_file()},
        }
        raw = manifest_bytes(manifest)
        (staging / MANIFEST).write_bytes(raw)
        signature = sign_manifest(raw, private_key)
        (staging / SIGNATURE).write_text(json.dumps(signature, indent=2, sort_keys=True) + "\n")
        archive = out / f"{version}.zip"
        write_reproducible_zip(staging, archive)
        os.replace(staging, version_dir)  # the folder appears whole, after its zip
    index["versions"][version] = {
        "manifest": f"{version}/{MANIFEST}", "manifest_sha256": sha256_file(version_dir / MANIFEST),
        "signature": f"{version}/{SIGNATURE}", "archive": archive.name, "archive_sha256": sha256_file(archive),
        "archive_size": archive.stat().st_size, "targets": [e["target"] for e in engines],
        "released": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    index["latest"] = max(index["versions"], key=version_tuple)
    write_json_atomic(out / "index.json", index)
    return ReleaseArtifact(version_dir, archive, out / "index.json", signature["key_id"], manifest)


__all__ = ["ReleaseArtifact", "build_release", "write_reproducible_zip"]
