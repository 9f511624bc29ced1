"""Target profiles: the built-in devices, aliases, user files and the mistakes users make."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgecompress.engines import check_profile, get_builder
from edgecompress.core.errors import TargetError
from edgecompress.core.targets import known_target_names, load_profile

ISSUE_TARGETS = ["cpu", "gpu", "jetson", "jetson-orin-nano", "jetson-agx-orin", "raspberry-pi-5",
                 "raspberry-pi-4", "android-arm64", "arm64"]


def test_every_device_of_the_issue_has_a_profile():
    assert set(ISSUE_TARGETS) <= set(known_target_names())


# What each device of the issue runs, stated here rather than read back from the profiles.
DEVICE_ENGINES = {
    "cpu": ("ort-cpu", "x86_64"),
    "gpu": ("tensorrt", "x86_64"),
    "jetson": ("tensorrt", "aarch64"),
    "jetson-orin-nano": ("tensorrt", "aarch64"),
    "jetson-agx-orin": ("tensorrt", "aarch64"),
    "raspberry-pi-5": ("ort-arm", "aarch64"),
    "raspberry-pi-4": ("ort-arm", "aarch64"),
    "android-arm64": ("ort-arm", "aarch64"),
    "arm64": ("ort-arm", "aarch64"),
}


@pytest.mark.parametrize("name", ISSUE_TARGETS)
def test_each_device_runs_its_engine_on_its_arch_with_valid_options(name):
    profile = load_profile(name)
    assert (profile.engine, profile.arch) == DEVICE_ENGINES[name]
    check_profile(profile)  # raises on a misspelt or out-of-range engine option


def test_each_engine_kind_is_built_by_its_own_builder():
    from edgecompress.engines.arm import ArmBuilder
    from edgecompress.engines.ort_cpu import OrtCpuBuilder
    from edgecompress.engines.tensorrt import TensorRTBuilder

    expected = {"ort-cpu": OrtCpuBuilder, "ort-arm": ArmBuilder, "tensorrt": TensorRTBuilder}
    assert {kind: type(get_builder(kind)) for kind in expected} == expected
    assert {kind: builder.kind for kind, builder in expected.items()} == {kind: kind for kind in expected}  # reports name it


def test_alias_keeps_its_own_name_and_inherits_the_rest():
    alias, base = load_profile("jetson"), load_profile("jetson-orin-nano")
    assert alias.name == "jetson" and alias.alias_of == "jetson-orin-nano"
    assert (alias.engine, alias.precisions, alias.batch, alias.options) == (
        base.engine, base.precisions, base.batch, base.options)
    assert alias.source.endswith("jetson.toml")


def _write(tmp_path: Path, text: str, name: str = "my-board.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_user_profile_is_accepted_by_path(tmp_path):
    path = _write(tmp_path, 'engine = "ort-arm"\narch = "aarch64"\nthreads = 2\n[options]\nproviders = ["CPUExecutionProvider"]\n')
    profile = load_profile(str(path))
    check_profile(profile)
    assert (profile.name, profile.threads, profile.source) == ("my-board", 2, str(path))


def test_user_profile_may_alias_a_builtin_one(tmp_path):
    path = _write(tmp_path, 'alias_of = "raspberry-pi-5"\nthreads = 2\n')
    profile = load_profile(str(path))
    assert (profile.engine, profile.threads, profile.alias_of) == ("ort-arm", 2, "raspberry-pi-5")


def test_unknown_target_lists_the_known_ones():
    with pytest.raises(TargetError) as error:
        load_profile("jetson-nano-2gb")
    assert "unknown target 'jetson-nano-2gb'" in str(error.value)
    assert "raspberry-pi-5" in error.value.fix and "jetson-agx-orin" in error.value.fix


@pytest.mark.parametrize("text, named", [
    ('arch = "aarch64"\n', "engine"),  # a required key is missing
    ('engine = "ort-arm"\narch = "aarch64"\nprecision = ["int8"]\n', "precision"),  # misspelt key
    ('engine = "tensorrt"\narch = "armv7"\n', "arch"),  # value outside the allowed ones
])
def test_bad_profile_file_names_the_key(tmp_path, text, named):
    with pytest.raises(TargetError, match=named):
        load_profile(str(_write(tmp_path, text)))


@pytest.mark.parametrize("text, named", [
    ('alias_of = "jetson-agx-orin"\n[options]\ndla_cores = 1\n', r"options\.dla_cores"),
    ('alias_of = "raspberry-pi-5"\n[options]\nprovider = ["CPUExecutionProvider"]\n', r"options\.provider"),
    ('alias_of = "jetson-agx-orin"\nprecisions = ["fp32"]\n', "fp32 on DLA"),  # DLA runs int8/fp16 only
    ('alias_of = "jetson-agx-orin"\n[batch]\nmin = 1\nopt = 1\nmax = 4\n', "static shapes"),  # DLA
])
def test_bad_engine_options_are_rejected_up_front(tmp_path, text, named):
    with pytest.raises(TargetError, match=named):
        check_profile(load_profile(str(_write(tmp_path, text))))


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    repo = Path(__file__).resolve().parents[1]
    return subprocess.run([sys.executable, "-m", "edgecompress", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(repo)}, timeout=120)


def test_cli_build_with_an_unknown_target_fails_before_any_work(tmp_path):
    done = _cli("build", "--target", "jetson-nano-2gb", "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "unknown target 'jetson-nano-2gb'" in done.stderr and "raspberry-pi-5" in done.stderr
    assert not (tmp_path / "out").exists()


def test_cli_build_with_a_misspelt_engine_option_fails_before_any_work(tmp_path):
    path = _write(tmp_path, 'alias_of = "jetson-agx-orin"\n[options]\ndla_cores = 1\n')
    done = _cli("build", "--target", str(path), "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert done.returncode == 2 and "options.dla_cores" in done.stderr
    assert not (tmp_path / "out").exists()


def test_cli_targets_lists_every_profile_with_its_alias():
    done = _cli("targets", cwd=Path.cwd())
    table = done.stdout + done.stderr
    assert done.returncode == 0
    assert all(name in table for name in ISSUE_TARGETS) and "jetson-orin-nano" in table and "device kit" in table
