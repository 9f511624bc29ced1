"""The build is BUILD_STEPS walked in order: each step adds its artifact and exposes the key it is cached under."""

from __future__ import annotations

import json
from pathlib import Path

from edgecompress.pipeline.pipeline import BUILD_STEPS, BuildContext
from edgecompress.core.artifacts import sha256_json
from edgecompress.core.config import make_config
from tests.ship_support import cached_build_run


def walk(out: Path) -> BuildContext:
    run = cached_build_run()
    context = BuildContext(make_config({}, {"model": str(run / "model.fp32.onnx"), "calib": run / "calib.npz", "out": out}))
    for step in BUILD_STEPS:
        context = step.run(context)
    return context


def test_walking_the_steps_gives_every_target_what_it_shares(tmp_path: Path) -> None:
    context = walk(tmp_path)
    assert context.source.is_onnx and context.compression is None  # an ONNX model is not compressed
    assert context.fp32.path == tmp_path / "model.fp32.onnx" and context.fp32.path.is_file()
    assert [spec.name for spec in context.fp32.inputs] == ["input"]
    assert len(context.calibration) == 16 and len(context.calibration.sha256) == 64
    # no --eval-data and no labelled data: agreement is measured on the calibration inputs, and says so
    assert context.eval_set.inputs["input"].shape == (16, 1, 32, 32) and "not held out" in context.eval_set.description


def test_a_steps_cache_key_is_the_key_its_artifact_is_stored_under(tmp_path: Path) -> None:
    context = walk(tmp_path)
    (export,) = [step for step in BUILD_STEPS if step.cache_key is not None]
    stored = json.loads((tmp_path / "model.fp32.onnx.key.json").read_text())
    assert stored["key"] == sha256_json(export.cache_key(context))
    second = walk(tmp_path)  # the same inputs: the artifact is reused, not rewritten
    assert second.fp32.path.stat().st_mtime_ns == context.fp32.path.stat().st_mtime_ns
