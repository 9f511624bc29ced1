"""examples/student_two_targets.py's build, by the Python API and by the CLI on the same inputs, makes the same engines.

The built-in example's student (cnn-wide) as an in-memory module with DataLoaders of digits, and as `--model
package.module:factory --weights FILE` with the same arrays as `--calib` and `--eval-data` .npz files, for cpu and
android-arm64-executorch: the same cache keys, the same engine bytes and the same fidelity figures in the reports."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import edgecompress
from edgecompress.core.artifacts import sha256_file
from edgecompress.core.config import BuildConfig
from edgecompress.engines import get_builder
from edgecompress.pipeline.pipeline import build as cli_build
from edgecompress.source.data import digits_splits
from edgecompress.source.zoo import build_model

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "student_two_targets.py"
STUDENT = "cnn-wide"
TARGETS = ["cpu", "android-arm64-executorch"]
SAMPLES = 64  # calibration and evaluation samples each: enough to compare the routes, few enough for a minute's build
# quick and single-path: few timed runs, int8 forced (no latency-dependent choice), no QAT, the quick exporter, and a
# budget the untrained student meets without repair (the routes are compared here, not the student's accuracy)
OPTIONS: dict[str, Any] = {"bench_runs": 10, "bench_warmup": 0, "bench_max_seconds": 1.0, "precision": "int8", "qat": "off",
                           "exporter": "torchscript", "diagnose": False, "max_accuracy_drop": 100.0}

needs_executorch = pytest.mark.skipif(get_builder("executorch").available() is not None,
                                      reason='needs the mobile extra (pip install -e ".[mobile]"): executorch is not installed')
per_target = pytest.mark.parametrize("target", TARGETS)


def example_student() -> torch.nn.Module:
    """The built-in example's student, seeded; the CLI route's `--model tests.test_api_matches_cli:example_student`."""
    torch.manual_seed(0)
    return build_model(STUDENT).eval()


def digits_loader(part: Any) -> torch.utils.data.DataLoader:
    x, y = torch.from_numpy(part.x[:SAMPLES]), torch.from_numpy(part.y[:SAMPLES])
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)


@pytest.fixture(scope="module")
def outs(tmp_path_factory) -> dict[str, Path]:
    """The build folders by route ("api", "cli"): the same student, weights and arrays through each."""
    root = tmp_path_factory.mktemp("api_vs_cli")
    digits, student = digits_splits(), example_student()
    edgecompress.build(student, calib=digits_loader(digits.train), eval_data=digits_loader(digits.test), targets=TARGETS,
                       out=root / "api", progress=False, **OPTIONS)
    torch.save(student.state_dict(), root / "student.pt")
    for name, part in (("calib", digits.train), ("eval", digits.test)):
        np.savez(root / f"{name}.npz", x=part.x[:SAMPLES], y=part.y[:SAMPLES])
    cli_build(BuildConfig(model=f"{__name__}:example_student", weights=root / "student.pt", input_shape=["1,1,32,32"],
                          calib=root / "calib.npz", eval_data=root / "eval.npz", target=TARGETS, out=root / "cli", **OPTIONS))
    return {"api": root / "api", "cli": root / "cli"}


def report(out: Path, target: str) -> dict[str, Any]:
    return json.loads((out / target / "report.json").read_text())


def cache_inputs(artifact: Path) -> dict[str, Any]:
    """What a cached artifact was made from: its sidecar's key inputs (core/cache.py)."""
    return json.loads(artifact.with_name(artifact.name + ".key.json").read_text())["inputs"]


def test_the_example_script_builds_this_student_for_these_targets_in_at_most_15_lines():
    source = EXAMPLE.read_text()
    tree = ast.parse(source)
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call)]
    built = next(call for call in calls if isinstance(call.func, ast.Attribute) and call.func.attr == "build")
    assert ast.literal_eval(next(k.value for k in built.keywords if k.arg == "targets")) == TARGETS
    assert any(isinstance(call.func, ast.Name) and call.func.id == "build_model" and ast.literal_eval(call.args[0]) == STUDENT
               for call in calls)
    after_docstring = source.splitlines()[tree.body[0].end_lineno or 0:]
    assert len([line for line in after_docstring if line.strip()]) <= 15


@pytest.mark.slow
@needs_executorch
@per_target
def test_the_int8_model_has_the_same_cache_key_by_either_route(outs, target):
    api, cli = (report(outs[route], target)["quantization"] for route in ("api", "cli"))
    assert api["calibration"]["sha256"] == cli["calibration"]["sha256"]
    assert Path(api["model_path"]).relative_to(outs["api"]) == Path(cli["model_path"]).relative_to(outs["cli"])
    if target == "cpu":  # an ONNX Runtime target: the int8 file is named by its key's hash (pipeline.quantize_stage)
        assert cache_inputs(Path(api["model_path"])) == cache_inputs(Path(cli["model_path"]))


@pytest.mark.slow
@needs_executorch
@per_target
def test_the_engine_is_the_same_file_by_either_route(outs, target):
    api, cli = (report(outs[route], target)["engine"] for route in ("api", "cli"))
    assert api["precision"] == cli["precision"] == "int8"
    assert sha256_file(Path(api["path"])) == sha256_file(Path(cli["path"]))


@pytest.mark.slow
@needs_executorch
@per_target
def test_the_engine_has_the_same_fidelity_by_either_route(outs, target):
    api, cli = report(outs["api"], target), report(outs["cli"], target)
    assert api["fidelity"] == cli["fidelity"] and api["fidelity"]["value"] is not None
    assert {k: v for k, v in api["accuracy"].items() if k != "data"} == {k: v for k, v in cli["accuracy"].items() if k != "data"}


@pytest.mark.slow
@needs_executorch
def test_the_fp32_export_is_the_same_file_made_from_the_same_module(outs):
    """Its key differs in one entry: `source` names where the module came from (the factory and weights file, or
    module_hash of the module in memory); `module`, the hash of the weights exported, is the same."""
    assert sha256_file(outs["api"] / "model.fp32.onnx") == sha256_file(outs["cli"] / "model.fp32.onnx")
    api, cli = (cache_inputs(outs[route] / "model.fp32.onnx") for route in ("api", "cli"))
    assert {k: v for k, v in api.items() if k != "source"} == {k: v for k, v in cli.items() if k != "source"}
