"""Config keys, target profiles and the stage cache."""

from __future__ import annotations

import pytest

from edgecompress.core.cache import cached_artifact
from edgecompress.core.config import load_config, make_config
from edgecompress.core.errors import ConfigError, TargetError
from edgecompress.core.targets import load_profile


def test_command_line_overrides_the_config_file(tmp_path):
    path = tmp_path / "edge.toml"
    path.write_text('target = "cpu"\ncalibration-method = "entropy"\nbench_runs = 50\n')
    config = load_config(path, {"bench_runs": 20, "out": None})
    assert config.target == ["cpu"] and config.calibration_method == "entropy" and config.bench_runs == 20


@pytest.mark.parametrize("values, message", [
    ({"targte": "cpu"}, "unknown key 'targte'"),
    ({"calibration_method": "median"}, "'calibration_method'"),
    ({"percentile": 101}, "'percentile'"),
    ({"opset": 11}, "'opset'"),
    ({"bias_correction": "maybe"}, "'bias_correction'"),
])
def test_bad_config_names_the_key(values, message):
    with pytest.raises(ConfigError, match=message):
        make_config(values, {})


def test_unknown_target_lists_the_known_ones():
    with pytest.raises(TargetError, match="unknown target 'jetsn'.*cpu"):
        load_profile("jetsn")


def test_user_profile_file_with_a_wrong_key_is_refused(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('engine = "ort-cpu"\narch = "x86_64"\nthreds = 4\n')
    with pytest.raises(TargetError, match="threds"):
        load_profile(str(path))
    path.write_text('engine = "ort-cpu"\narch = "x86_64"\nthreads = 4\n')
    assert load_profile(str(path)).threads == 4


def test_cache_reuses_only_for_identical_inputs_and_intact_files(tmp_path):
    calls = []

    def produce(path):
        calls.append(1)
        path.write_text("artifact")
        return {"n": len(calls)}

    target = tmp_path / "a.bin"
    assert cached_artifact(target, {"model": "h1"}, produce) == ({"n": 1}, False)
    assert cached_artifact(target, {"model": "h1"}, produce) == ({"n": 1}, True)
    assert cached_artifact(target, {"model": "h2"}, produce)[1] is False  # changed input
    target.write_text("tampered")
    assert cached_artifact(target, {"model": "h2"}, produce)[1] is False  # edited artifact
    assert len(calls) == 3
