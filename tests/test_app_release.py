"""The phone release (`edgecompress release`) and its reference loader (device/app_release.py): verify the signature,
check every hash and the runtime, load, golden check; refuse a flipped byte, another signer, a too-old runtime."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest

import edgecompress.device.app_release as app_release
from edgecompress.core.errors import BundleError
from edgecompress.device.app_release import ReleaseRefused, latest_version, load_release
from edgecompress.ship.release import build_release
from edgecompress.ship.signing import generate_keypair
from tests.test_executorch import needs_executorch

ORT_TARGET = "android-arm64"


def _build(tmp, model: str, target: str, calib: Path, input_shape: list[str] | None = None) -> Path:
    from edgecompress.core.config import BuildConfig
    from edgecompress.pipeline.pipeline import build

    config = BuildConfig(model=model, input_shape=input_shape or [], target=[target], calib=calib, out=tmp / "build",
                         bench_runs=10, bench_warmup=1, min_agreement=0.5, allow_over_budget=True)
    build(config)
    return config.out / target


@pytest.fixture(scope="module")
def release(tiny_onnx, tiny_calib, tmp_path_factory):
    """A signed release 1.0.0 of the tiny CNN's .ort engine for Android, and the key pair."""
    root = tmp_path_factory.mktemp("release")
    target_dir = _build(root, str(tiny_onnx), ORT_TARGET, tiny_calib)
    keys = generate_keypair(root / "release-key")
    made = build_release([target_dir], root / "out", "1.0.0", keys.private_path)
    return {"made": made, "keys": keys, "target_dir": target_dir, "root": root}


@pytest.fixture
def copy(release, tmp_path):
    """A copy of the release's version folder that a test may tamper with."""
    return Path(shutil.copytree(release["made"].version_dir, tmp_path / "1.0.0"))


@pytest.fixture
def loads(monkeypatch):
    """Counts engines handed to a runtime: a refused release must reach none."""
    calls = []
    original = app_release._ort_runner
    monkeypatch.setattr(app_release, "_ort_runner", lambda *args: calls.append(args) or original(*args))
    return calls


def test_the_release_verifies_loads_and_passes_its_golden_check(release, loads):
    made = release["made"]
    model = load_release(made.version_dir, release["keys"].public_path, ORT_TARGET)
    assert len(loads) == 1 and model.runtime_version
    golden = made.version_dir / model.manifest["golden"]["inputs"]["input"]
    (out,) = model.run({"input": np.load(golden)})
    assert out.shape == (4, 10)


def test_the_manifest_says_what_an_app_needs(release):
    manifest = release["made"].manifest
    (engine,) = manifest["engines"]
    assert manifest["inputs"][0]["name"] == "input" and manifest["inputs"][0]["layout"] == "NCHW"
    assert engine["runtime"]["name"] == "onnxruntime" and engine["runtime"]["min_version"]
    assert "not on a phone" in engine["figures"]["note"] and engine["figures"]["measured_on"].startswith("this host")
    assert engine["quantization"]["recipe"] and engine["golden"]["atol"] > 0
    listed = set(manifest["files"])
    assert {engine["path"], *engine["files"], *engine["golden"]["outputs"], *manifest["golden"]["inputs"].values()} <= listed
    on_disk = {p.relative_to(release["made"].version_dir).as_posix() for p in release["made"].version_dir.rglob("*") if p.is_file()}
    assert on_disk - listed == {"manifest.json", "manifest.sig"}


def test_a_flipped_byte_in_the_engine_is_refused_and_nothing_is_loaded(release, copy, loads):
    engine = copy / release["made"].manifest["engines"][0]["path"]
    data = bytearray(engine.read_bytes())
    data[len(data) // 2] ^= 0x01
    engine.write_bytes(bytes(data))
    with pytest.raises(ReleaseRefused, match="does not match its sha256"):
        load_release(copy, release["keys"].public_path, ORT_TARGET)
    assert loads == []


def test_a_flipped_byte_in_the_manifest_breaks_the_signature(release, copy, loads):
    manifest = copy / "manifest.json"
    manifest.write_bytes(manifest.read_bytes().replace(b'"version": "1.0.0"', b'"version": "1.0.1"'))
    with pytest.raises(ReleaseRefused, match="signature is invalid"):
        load_release(copy, release["keys"].public_path, ORT_TARGET)
    assert loads == []


def test_a_release_signed_by_another_key_is_refused(release, tmp_path, loads):
    other = generate_keypair(tmp_path / "other-key")
    made = build_release([release["target_dir"]], tmp_path / "other", "1.0.0", other.private_path)
    with pytest.raises(ReleaseRefused, match="signed by another key"):
        load_release(made.version_dir, release["keys"].public_path, ORT_TARGET)
    assert loads == []


def test_a_runtime_older_than_the_engine_needs_is_refused(release, loads):
    with pytest.raises(ReleaseRefused, match="onnxruntime 1.0.0 is too old .* needs onnxruntime >="):
        load_release(release["made"].version_dir, release["keys"].public_path, ORT_TARGET, runtime_version="1.0.0")
    assert loads == []


def test_an_older_release_than_the_installed_one_is_refused(release, loads):
    with pytest.raises(ReleaseRefused, match="older than the installed 2.0.0"):
        load_release(release["made"].version_dir, release["keys"].public_path, ORT_TARGET, installed_version="2.0.0")
    assert loads == []


def test_index_points_at_the_latest_version_and_versions_are_immutable(release, tiny_calib):
    out = release["made"].index.parent
    build_release([release["target_dir"]], out, "1.1.0", release["keys"].private_path)
    latest = latest_version(out / "index.json")
    index = json.loads((out / "index.json").read_text())
    assert latest["version"] == "1.1.0" and set(index["versions"]) == {"1.0.0", "1.1.0"}
    assert (out / latest["manifest"]).is_file() and (out / latest["archive"]).is_file()
    with pytest.raises(BundleError, match="already exists"):
        build_release([release["target_dir"]], out, "1.0.0", release["keys"].private_path)


def test_the_zip_holds_the_version_folder_byte_for_byte(release, tmp_path):
    made = release["made"]
    with zipfile.ZipFile(made.archive) as archive:
        archive.extractall(tmp_path)
    assert (tmp_path / "1.0.0" / "manifest.json").read_bytes() == (made.version_dir / "manifest.json").read_bytes()
    load_release(tmp_path / "1.0.0", release["keys"].public_path, ORT_TARGET)


def test_a_bad_version_string_is_refused_before_anything_is_written(release, tmp_path):
    with pytest.raises(BundleError, match="MAJOR"):
        build_release([release["target_dir"]], tmp_path / "out", "latest", release["keys"].private_path)
    assert not (tmp_path / "out").exists()


@needs_executorch
def test_an_executorch_release_loads_the_pte_and_refuses_a_runtime_outside_its_range(tmp_path):
    from sklearn.datasets import load_digits

    digits = load_digits()
    np.savez(tmp_path / "calib.npz", input=(digits.images[:16] / 16.0).astype(np.float32)[:, None])
    target_dir = _build(tmp_path, "tests.conftest:make_tiny_net", "android-arm64-executorch", tmp_path / "calib.npz", ["1,1,8,8"])
    keys = generate_keypair(tmp_path / "key")
    made = build_release([target_dir], tmp_path / "release", "1.0.0", keys.private_path)
    model = load_release(made.version_dir, keys.public_path, "android-arm64-executorch")
    (engine,) = made.manifest["engines"]
    assert engine["kind"] == "executorch" and engine["path"].endswith(".pte") and model.engine["runtime"]["name"] == "executorch"
    assert "x86 XNNPACK" in engine["figures"]["measured_on"] and made.manifest["inputs"][0]["shape"] == [1, 1, 8, 8]
    major, minor = (int(p) for p in engine["runtime"]["min_version"].split(".")[:2])
    with pytest.raises(ReleaseRefused, match="too old"):
        load_release(made.version_dir, keys.public_path, "android-arm64-executorch", runtime_version=f"{major}.{minor - 1}.0")
    with pytest.raises(ReleaseRefused, match="too new"):
        load_release(made.version_dir, keys.public_path, "android-arm64-executorch", runtime_version=f"{major}.{minor + 2}.0")
