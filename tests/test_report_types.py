"""report.json is one BuildReport serialised: read back, it is the same report, and the bundle reads it by type."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edgecompress.pipeline.report_types import BuildReport, LatencyFigures, load_report
from tests.ship_support import cached_build_run


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """A real `edgecompress build` of the tiny digits CNN for this host's CPU: the target folder."""
    from edgecompress.pipeline.pipeline import build
    from edgecompress.core.config import make_config

    run = cached_build_run()
    out = tmp_path_factory.mktemp("build")
    config = make_config({}, {"model": str(run / "model.fp32.onnx"), "calib": run / "calib.npz", "out": out,
                              "bench_runs": 10, "bench_warmup": 0, "bench_max_seconds": 1.0})
    (returned,) = build(config)
    assert returned == json.loads((out / "cpu" / "report.json").read_text())  # build() returns what it wrote
    return out / "cpu"


def test_report_json_read_back_is_the_same_report(built: Path) -> None:
    written = json.loads((built / "report.json").read_text())
    report = load_report(built)
    assert report.to_dict() == written
    assert list(report.to_dict()) == list(written)  # the same key order too
    assert isinstance(report.latency, LatencyFigures) and report.latency.p50 == written["latency_ms"]["p50"] > 0
    assert report.quantization.calibration.sha256 == written["quantization"]["calibration"]["sha256"]


def test_report_json_keeps_the_stable_keys(built: Path) -> None:
    written = json.loads((built / "report.json").read_text())
    assert {"kind", "path", "precision", "size_bytes"} <= set(written["engine"])
    assert {"p50", "p90", "p99", "batch", "runs", "measured_on"} <= set(written["latency_ms"])
    assert {"top1", "max_abs_diff", "samples"} <= set(written["agreement"])
    assert {"task", "metric", "value", "budget", "met", "validated_on", "outputs"} <= set(written["fidelity"])
    assert {"fp32", "engine"} <= set(written["accuracy"]) and written["reference"]["size_bytes"] > 0
    assert written["target"] == "cpu" and written["throughput_per_s"] > 0 and "onnxruntime" in written["versions"]


def test_a_section_left_out_of_a_device_report_reads_back_as_none(built: Path) -> None:
    written = json.loads((built / "report.json").read_text())
    for key in ("fidelity", "speedup_vs_fp32", "measured_on", "samples"):
        del written[key]
    written |= {"agreement": None, "latency_ms": None, "throughput_per_s": None, "memory": {}}
    report = BuildReport.from_dict(written)
    assert (report.fidelity, report.measured_on, report.latency, report.memory) == (None, None, None, None)
    assert report.to_dict() == written


def test_bundle_manifest_is_read_from_the_typed_report(built: Path, tmp_path: Path) -> None:
    from edgecompress.ship.bundle import build_bundle

    report = load_report(built)
    manifest = build_bundle(built, tmp_path / "b.tar.gz").manifest
    assert manifest["model"]["name"] == report.model.name
    assert manifest["engine"]["kind"] == report.engine.kind and manifest["engine"]["precision"] == report.engine.precision
    assert manifest["calibration"]["sha256"] == report.quantization.calibration.sha256
    assert manifest["figures"]["latency_ms"] == report.latency.to_dict()
    assert manifest["figures"]["agreement"]["top1"] == report.agreement.top1
    assert manifest["figures"]["measured_on"]["summary"] == report.measured_on.summary


def test_a_report_missing_a_section_is_refused_with_a_fix(built: Path, tmp_path: Path) -> None:
    from edgecompress.core.errors import BuildDirError
    from edgecompress.ship.bundle import build_bundle

    target_dir = Path(shutil.copytree(built, tmp_path / "cpu"))
    written = json.loads((target_dir / "report.json").read_text())
    del written["engine"]
    (target_dir / "report.json").write_text(json.dumps(written))
    with pytest.raises(BuildDirError, match="is not a build report") as refused:
        build_bundle(target_dir, tmp_path / "b.tar.gz")
    assert "edgecompress build" in refused.value.fix
