import json

import numpy as np
import pytest

from edgecompress.compress.stage import compress_stage
from edgecompress.core.config import make_config
from edgecompress.core.errors import ConfigError, DistillationError
from edgecompress.presets.example import load_model_or_example
from tests.compress_fixtures import tiny_splits

FACTORY = "tests.compress_fixtures:tiny_digits_cnn"


@pytest.fixture
def digits_npz(tmp_path):
    splits = tiny_splits(200)
    path = tmp_path / "digits.npz"
    np.savez(path, x=np.concatenate([splits.train.x, splits.val.x]), y=np.concatenate([splits.train.y, splits.val.y]))
    return path


def options(tmp_path, data, **extra):
    return make_config({}, {"model": FACTORY, "input_shape": ["1,1,32,32"], "data": str(data), "out": tmp_path / "b",
                            "epochs": 1, "finetune_epochs": 1, "prune_steps": 1, "max_accuracy_drop": 100.0, **extra})


def test_teacher_student_pruned_stages_are_recorded_in_order(tmp_path, digits_npz):
    config = options(tmp_path, digits_npz, student="cnn-tiny", prune="channels")
    result = compress_stage(load_model_or_example(config.model, None, config.input_shape), config)
    names = [stage["name"] for stage in result.record["stages"]]
    assert names == ["teacher", "student", "pruned"]
    params = [stage["params"] for stage in result.record["stages"]]
    assert params[0] > params[1] > params[2] == sum(p.numel() for p in result.module.parameters())
    assert all({"accuracy", "flops", "size_bytes", "latency_ms"} <= set(stage) for stage in result.record["stages"])


def test_a_second_build_reuses_the_trained_student(tmp_path, digits_npz):
    config = options(tmp_path, digits_npz, prune="magnitude")
    source = load_model_or_example(config.model, None, config.input_shape)
    compress_stage(source, config)
    student = tmp_path / "b" / "compress" / "student.pt"
    first = student.stat().st_mtime_ns
    again = compress_stage(load_model_or_example(config.model, None, config.input_shape), config.model_copy(update={"target": ["other"]}))
    assert student.stat().st_mtime_ns == first
    assert json.loads((student.parent / "student.pt.key.json").read_text())["result"]["stopped"] == again.record["gate"]["stopped"]


def test_compressing_an_onnx_model_is_refused(tmp_path, digits_npz):
    onnx_file = tmp_path / "m.onnx"
    onnx_file.write_bytes(b"not used")
    config = options(tmp_path, digits_npz, model=str(onnx_file), prune="channels")
    with pytest.raises(ConfigError, match="PyTorch"):
        compress_stage(load_model_or_example(config.model, None, config.input_shape), config)


def test_compressing_a_user_model_without_data_is_refused(tmp_path):
    config = make_config({}, {"model": FACTORY, "input_shape": ["1,1,32,32"], "prune": "channels", "out": tmp_path})
    with pytest.raises(ConfigError, match="--data"):
        compress_stage(load_model_or_example(config.model, None, config.input_shape), config)


@pytest.mark.parametrize("ratio", [1.0, -0.5])
def test_a_prune_ratio_outside_zero_to_one_is_refused_by_the_config(tmp_path, digits_npz, ratio):
    with pytest.raises(ConfigError, match="prune_ratio"):
        options(tmp_path, digits_npz, prune="channels", prune_ratio=ratio)


def test_a_full_build_reports_compression_stages_through_the_engine(tmp_path, digits_npz):
    from edgecompress.pipeline.pipeline import build

    config = options(tmp_path, digits_npz, prune="channels", bench_runs=10, bench_warmup=1)
    (report,) = build(config)
    stages = report["compression"]["stages"]
    assert [s["name"] for s in stages] == ["teacher", "pruned", "engine"]
    assert stages[-1]["latency_ms"] > 0 and stages[-1]["size_bytes"] < stages[-2]["size_bytes"]
    assert "Compression" in (tmp_path / "b" / "cpu" / "report.md").read_text()


def test_unlabelled_data_with_a_hard_label_loss_is_refused(tmp_path):
    path = tmp_path / "x_only.npz"
    np.savez(path, x=tiny_splits(100).train.x)
    config = options(tmp_path, path, prune="channels")
    with pytest.raises(DistillationError, match="distill-alpha 0"):
        compress_stage(load_model_or_example(config.model, None, config.input_shape), config)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [({"y": np.zeros(20, dtype=np.int64)}, "no array 'x'"),
     ({"x": np.zeros((20, 1, 8, 8), np.float32), "y": np.zeros(19, dtype=np.int64)}, "one non-negative integer class"),
     ({"x": np.full((20, 1, 8, 8), np.nan, np.float32)}, "finite")],
)
def test_bad_training_data_files_are_refused(tmp_path, arrays, message):
    from edgecompress.compress.sources import load_labelled_data
    from edgecompress.core.errors import TrainingDataError

    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(TrainingDataError, match=message):
        load_labelled_data(str(tmp_path / "bad.npz"))


def test_missing_training_data_is_refused(tmp_path):
    from edgecompress.compress.sources import load_labelled_data
    from edgecompress.core.errors import TrainingDataError

    with pytest.raises(TrainingDataError, match="--data digits"):
        load_labelled_data(str(tmp_path / "nowhere"))


def test_the_cli_refuses_bad_compression_options_in_one_line(tmp_path):
    import subprocess
    import sys

    completed = subprocess.run(
        [sys.executable, "-m", "edgecompress", "build", "--prune", "random", "--prune-ratio", "1.5", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert completed.returncode == 2 and "Traceback" not in completed.stderr
    assert "'prune'" in completed.stderr and "'prune_ratio'" in completed.stderr


def test_an_unlabelled_data_set_is_judged_by_agreement_never_by_its_placeholder_labels(tmp_path):
    """--data with x only stores -1 as every label: scoring those gave 'top-1 0.00% vs fp32 0.00%, within budget'."""
    from edgecompress.pipeline.pipeline import build

    path = tmp_path / "x_only.npz"
    np.savez(path, x=tiny_splits(200).train.x)
    config = make_config({}, {"model": FACTORY, "input_shape": ["1,1,32,32"], "data": str(path), "out": tmp_path / "b",
                              "bench_runs": 10, "bench_warmup": 1})
    (report,) = build(config)
    assert report["accuracy"]["fp32"] is None and report["accuracy"]["engine"] is None
    assert report["fidelity"]["metric"] == "top-1 agreement" and "unlabelled" in report["accuracy"]["data"]
    assert not any("Top-1" in line and "0.00%" in line for line in report["verdict"])
