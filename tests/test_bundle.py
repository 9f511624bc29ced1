"""Bundles: reproducible, self-describing, signed; every unsafe or tampered archive is refused."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from edgecompress.pipeline.report_types import load_report
from edgecompress.ship.bundle import BundleOptions, build_bundle
from edgecompress.core.errors import BundleError, SigningKeyError
from edgecompress.ship.signing import generate_keypair, key_id, load_private_key, load_public_key
from edgecompress.device.unpack import safe_unpack
from edgecompress.ship.verify import verify_bundle
from tests.ship_support import build_for_target, copy_build


@pytest.fixture()
def target_dir(tmp_path: Path) -> Path:
    return copy_build(tmp_path / "run")


@pytest.fixture()
def keys(tmp_path: Path):
    return generate_keypair(tmp_path / "keys" / "signing")


def rewrite_archive(source: Path, out: Path, change) -> Path:
    """Copy an archive member by member, letting `change(info, data)` alter, drop or add entries."""
    with tarfile.open(source, "r:gz") as tar, tarfile.open(out, "w:gz") as new:
        for info in tar.getmembers():
            data = tar.extractfile(info).read()
            for new_info, new_data in change(info, data):
                new.addfile(new_info, io.BytesIO(new_data) if new_data is not None else None)
    return out


def keep(info, data):
    return [(info, data)]


def test_same_build_gives_the_same_bytes(target_dir: Path, tmp_path: Path, keys) -> None:
    options = BundleOptions(sign_key=keys.private_path)
    first = build_bundle(target_dir, tmp_path / "a.tar.gz", options)
    second = build_bundle(target_dir, tmp_path / "b.tar.gz", options)
    assert first.path.read_bytes() == second.path.read_bytes()
    with tarfile.open(first.path) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == sorted(m.name for m in members)
    assert {(m.mtime, m.uid, m.gid) for m in members} == {(0, 0, 0)}
    assert gzip.open(first.path).read(1) and first.path.read_bytes()[4:8] == b"\0\0\0\0"  # gzip mtime 0


def test_manifest_describes_engine_device_and_figures(target_dir: Path, tmp_path: Path) -> None:
    manifest = build_bundle(target_dir, tmp_path / "b.tar.gz").manifest
    assert manifest["target"]["arch"] == "x86_64" and manifest["target"]["threads"] == 2  # the whole profile
    assert manifest["engine"] | {"note": None} == {
        "kind": "ort-cpu", "precision": "int8", "path": "engine/engine.onnx", "files": ["engine/engine.onnx"], "note": None
    }
    assert manifest["inputs"] == [{"name": "input", "shape": [None, 1, 32, 32], "dtype": "float32"}]
    operators = manifest["runtime"]["required_operators"]
    assert any(op.startswith("ai.onnx:QuantizeLinear@") for op in operators)
    assert all(op.rsplit("@", 1)[1].isdigit() for op in operators)  # domain:Op@opset, one format for every engine
    built_with = json.loads((target_dir / "report.json").read_text())["versions"]["onnxruntime"]
    assert manifest["runtime"]["onnxruntime"] == {"built_with": built_with, "min_version": ".".join(built_with.split(".")[:2])}
    report = load_report(target_dir)  # the build's figures, measured on this engine
    assert manifest["figures"]["agreement"]["top1"] == report.agreement.top1 and report.agreement.samples == 64
    assert manifest["figures"]["latency_ms"]["p50"] == report.latency.p50 > 0
    assert manifest["preprocess"]["color"] == "grayscale" and manifest["labels"][3] == "3"
    assert manifest["calibration"]["sha256"] == hashlib.sha256((target_dir.parent / "calib.npz").read_bytes()).hexdigest()
    assert {"run.py", "preprocess.py", "unpack.py", "README.md", "engine/engine.onnx"} <= set(manifest["files"])
    assert not any(name.startswith("reference/") for name in manifest["files"])


def test_reference_model_only_when_asked(target_dir: Path, tmp_path: Path) -> None:
    bundle = build_bundle(target_dir, tmp_path / "b.tar.gz", BundleOptions(include_reference=True))
    assert bundle.manifest["reference"] == "reference/model.fp32.onnx"
    with tarfile.open(bundle.path) as tar:
        assert tar.extractfile("reference/model.fp32.onnx").read() == (target_dir.parent / "model.fp32.onnx").read_bytes()
    assert bundle.engine_size_bytes == (target_dir / "engine.onnx").stat().st_size
    without = build_bundle(target_dir, tmp_path / "plain.tar.gz")
    assert "reference" not in without.manifest and not any(f.startswith("reference/") for f in without.manifest["files"])


def test_signed_bundle_verifies_with_its_key(target_dir: Path, tmp_path: Path, keys) -> None:
    bundle = build_bundle(target_dir, tmp_path / "b.tar.gz", BundleOptions(sign_key=keys.private_path))
    verified = verify_bundle(bundle.path, keys.public_path)
    assert verified.signer == keys.key_id and "trusted key" in verified.describe()


def test_unsigned_bundle_needs_allow_unsigned(target_dir: Path, tmp_path: Path) -> None:
    bundle = build_bundle(target_dir, tmp_path / "b.tar.gz")
    with pytest.raises(BundleError, match="not signed"):
        verify_bundle(bundle.path)
    assert "UNSIGNED" in verify_bundle(bundle.path, allow_unsigned=True).describe()


def test_bundle_signed_by_another_key_is_refused(target_dir: Path, tmp_path: Path, keys) -> None:
    other = generate_keypair(tmp_path / "other")
    bundle = build_bundle(target_dir, tmp_path / "b.tar.gz", BundleOptions(sign_key=other.private_path))
    with pytest.raises(BundleError, match=f"signed by key {other.key_id}, not by the trusted key {keys.key_id}"):
        verify_bundle(bundle.path, keys.public_path)


def test_one_changed_engine_byte_is_refused(target_dir: Path, tmp_path: Path, keys) -> None:
    bundle = build_bundle(target_dir, tmp_path / "b.tar.gz", BundleOptions(sign_key=keys.private_path))

    def flip(info, data):
        if info.name == "engine/engine.onnx":
            data = data[:100] + bytes([data[100] ^ 1]) + data[101:]
        return [(info, data)]

    tampered = rewrite_archive(bundle.path, tmp_path / "t.tar.gz", flip)
    dest = tmp_path / "out"
    with pytest.raises(BundleError, match="engine/engine.onnx' does not match its sha256"):
        verify_bundle(tampered, keys.public_path, extract_to=dest)
    assert not dest.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


def test_changed_manifest_breaks_the_signature(target_dir: Path, tmp_path: Path, keys) -> None:
    bundle = build_bundle(target_dir, tmp_path / "b.tar.gz", BundleOptions(sign_key=keys.private_path))

    def edit(info, data):
        if info.name == "manifest.json":
            edited = data.replace(b'"precision": "int8"', b'"precision": "fp32"')  # a claim about the engine
            assert edited != data
            data, info.size = edited, len(edited)
        return [(info, data)]

    with pytest.raises(BundleError, match="signature is invalid"):
        verify_bundle(rewrite_archive(bundle.path, tmp_path / "t.tar.gz", edit), keys.public_path)


@pytest.mark.parametrize(
    "entry, message",
    [
        ("../evil.py", r"'\.\.' component"),
        ("engine/../../evil.py", r"'\.\.' component"),
        ("/etc/evil.py", "absolute"),
        ("extra.py", "not listed in the manifest"),
    ],
)
def test_archive_entries_outside_the_manifest_are_refused(target_dir, tmp_path, entry, message) -> None:
    bundle = build_bundle(target_dir, tmp_path / "b.tar.gz")

    def add(info, data):
        out = [(info, data)]
        if info.name == "run.py":
            extra = tarfile.TarInfo(entry)
            extra.size = 5
            out.append((extra, b"evil\n"))
        return out

    with pytest.raises(BundleError, match=message):
        safe_unpack(rewrite_archive(bundle.path, tmp_path / "t.tar.gz", add), tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "evil.py").exists()


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE])
def test_links_out_of_the_tree_are_refused(target_dir: Path, tmp_path: Path, kind) -> None:
    bundle = build_bundle(target_dir, tmp_path / "b.tar.gz")

    def linkify(info, data):
        if info.name == "README.md":
            link = tarfile.TarInfo("README.md")
            link.type, link.linkname = kind, "/etc/passwd"
            return [(link, None)]
        return [(info, data)]

    with pytest.raises(BundleError, match="is a link"):
        safe_unpack(rewrite_archive(bundle.path, tmp_path / "t.tar.gz", linkify), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_devices_and_oversized_entries_are_refused(target_dir: Path, tmp_path: Path) -> None:
    bundle = build_bundle(target_dir, tmp_path / "b.tar.gz")

    def device(info, data):
        if info.name == "README.md":
            info = tarfile.TarInfo("README.md")
            info.type = tarfile.CHRTYPE
            return [(info, None)]
        return [(info, data)]

    def grow(info, data):
        if info.name == "README.md":
            data += b"x"
            info.size = len(data)
        return [(info, data)]

    with pytest.raises(BundleError, match="device"):
        safe_unpack(rewrite_archive(bundle.path, tmp_path / "d.tar.gz", device), tmp_path / "out")
    with pytest.raises(BundleError, match="more than the manifest"):
        safe_unpack(rewrite_archive(bundle.path, tmp_path / "g.tar.gz", grow), tmp_path / "out")


def test_truncated_archive_is_refused(target_dir: Path, tmp_path: Path) -> None:
    bundle = build_bundle(target_dir, tmp_path / "b.tar.gz")
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(bundle.path.read_bytes()[: bundle.size_bytes // 2])
    with pytest.raises(BundleError, match="truncated or corrupt"):
        safe_unpack(cut, tmp_path / "out")


def test_keygen_writes_private_key_mode_0600(keys) -> None:
    assert stat.S_IMODE(os.stat(keys.private_path).st_mode) == 0o600
    assert keys.public_path.read_text().startswith("ssh-ed25519 ")
    with pytest.raises(SigningKeyError, match="already exists"):
        generate_keypair(keys.private_path)


def test_bad_signing_keys_are_refused(tmp_path: Path) -> None:
    locked = generate_keypair(tmp_path / "locked", passphrase="right horse")
    with pytest.raises(SigningKeyError, match="wrong passphrase"):
        load_private_key(locked.private_path, "wrong")
    with pytest.raises(SigningKeyError, match="is encrypted"):
        load_private_key(locked.private_path)
    with pytest.raises(SigningKeyError, match="does not exist"):
        load_private_key(tmp_path / "missing")
    with pytest.raises(SigningKeyError, match="cannot be read"):
        load_private_key(tmp_path)  # a directory: unreadable as a key even for root
    (tmp_path / "junk").write_text("not a key")
    with pytest.raises(SigningKeyError, match="not a PEM private key"):
        load_private_key(tmp_path / "junk")
    unlocked = load_private_key(locked.private_path, "right horse")
    assert key_id(unlocked.public_key()) == locked.key_id  # the very key that keygen wrote
    load_public_key(locked.public_path).verify(unlocked.sign(b"manifest"), b"manifest")  # raises if it is not


def run_py(root: Path, *args: str) -> subprocess.CompletedProcess:
    """The bundled runner, as a device runs it: a fresh interpreter without edgecompress on its path."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "run.py", *args], cwd=root, env=env, capture_output=True, text=True, timeout=120)


def test_bundled_runner_refuses_a_trusted_key_of_another_type(target_dir: Path, tmp_path: Path, keys) -> None:
    """An RSA key given to the device as the trusted one is another key, said so (it used to raise AttributeError)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    rsa_public = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    rsa_path = tmp_path / "rsa.pub"
    rsa_path.write_bytes(rsa_public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH))
    bundle = build_bundle(target_dir, tmp_path / "b.tar.gz", BundleOptions(sign_key=keys.private_path))
    root = verify_bundle(bundle.path, keys.public_path, extract_to=tmp_path / "device").root
    result = run_py(root, "--verify", "--key", str(rsa_path))
    assert result.returncode != 0 and f"signed by key {keys.key_id}, not by {rsa_path}" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_bundled_runner_verifies_selftests_and_classifies(target_dir: Path, tmp_path: Path, keys) -> None:
    bundle = build_bundle(target_dir, tmp_path / "b.tar.gz", BundleOptions(sign_key=keys.private_path))
    root = verify_bundle(bundle.path, keys.public_path, extract_to=tmp_path / "device").root
    result = run_py(root, "--verify", "--selftest", "--key", str(keys.public_path))
    assert result.returncode == 0, result.stderr
    assert "signature valid" in result.stdout and "self-test passed: 4 samples" in result.stdout
    from PIL import Image

    from edgecompress.source.data import digits_images

    Image.fromarray(digits_images()[0][0]).save(tmp_path / "digit.png")
    np.save(tmp_path / "sample.npy", np.load(root / "samples/input_0.npy")[0])
    result = run_py(root, str(tmp_path / "digit.png"), str(tmp_path / "sample.npy"), "--top-k", "3", "--runs", "2")
    assert result.returncode == 0, result.stderr
    assert "digit.png: top-3 [" in result.stdout and "sample.npy: top-3 [" in result.stdout and "ms" in result.stdout


def test_runner_refuses_a_tree_changed_after_unpacking(target_dir: Path, tmp_path: Path) -> None:
    bundle = build_bundle(target_dir, tmp_path / "b.tar.gz")
    root = verify_bundle(bundle.path, allow_unsigned=True, extract_to=tmp_path / "device").root
    engine = root / "engine/engine.onnx"
    engine.write_bytes(engine.read_bytes()[:-1] + b"\0")
    result = run_py(root, "--verify")
    assert result.returncode == 1 and "engine/engine.onnx' does not match its sha256" in result.stderr


def test_runner_refuses_a_bundle_for_another_arch(tmp_path: Path) -> None:
    arm_dir = build_for_target(tmp_path / "run", "raspberry-pi-5")
    bundle = build_bundle(arm_dir, tmp_path / "b.tar.gz")
    root = verify_bundle(bundle.path, allow_unsigned=True, extract_to=tmp_path / "device").root
    result = run_py(root, "--verify")
    assert result.returncode == 1 and "bundle is for aarch64 but this device is x86_64" in result.stderr


def test_runner_refuses_a_newer_runtime_than_installed(target_dir: Path, tmp_path: Path) -> None:
    report = json.loads((target_dir / "report.json").read_text())
    report["profile"] = json.loads(json.dumps(build_bundle(target_dir, tmp_path / "x.tar.gz").manifest["target"]))
    report["profile"]["options"]["onnxruntime_min"] = "99.0"
    (target_dir / "report.json").write_text(json.dumps(report))
    root = verify_bundle(build_bundle(target_dir, tmp_path / "b.tar.gz").path, allow_unsigned=True,
                         extract_to=tmp_path / "device").root
    result = run_py(root, "--verify")
    assert result.returncode == 1 and "older than the 99.0 this engine needs" in result.stderr


def test_tensorrt_build_kit_bundle_states_what_the_device_needs(target_dir: Path, tmp_path: Path) -> None:
    """A GPU target built without a GPU ships its on-device build kit; the self-test compares with fp32."""
    (target_dir / "build_engine.sh").write_text("#!/bin/sh\ntrtexec --onnx=engine.onnx --int8 --saveEngine=engine.plan\n")
    report = json.loads((target_dir / "report.json").read_text())
    from edgecompress.core.targets import load_profile

    profile = load_profile("cpu").model_dump(mode="json", exclude={"source"})
    profile |= {"name": "jetson-orin-nano", "engine": "tensorrt", "arch": "aarch64", "options": {"tensorrt_major": 10}}
    report |= {"target": "jetson-orin-nano", "profile": profile}
    report["engine"] |= {"kind": "tensorrt", "path": None, "files": ["engine.onnx", "build_engine.sh"]}
    (target_dir / "report.json").write_text(json.dumps(report))
    manifest = build_bundle(target_dir, tmp_path / "kit.tar.gz").manifest
    assert manifest["engine"]["path"] is None
    assert manifest["engine"]["files"] == ["engine/build_engine.sh", "engine/engine.onnx"]
    requirements = manifest["runtime"]["tensorrt"]
    assert requirements | {"gpu_name": None, "needs": None} == {
        "version": None, "min_version": "10", "exact_version": False, "compute_capability": None, "gpu_name": None,
        "build_on_device": True, "needs": None}
    assert "NVIDIA GPU" in requirements["needs"] and "trtexec" in requirements["needs"]
    assert manifest["selftest"]["source"] == "fp32 reference" and "trt_device.py" in manifest["files"]
    root = verify_bundle(tmp_path / "kit.tar.gz", allow_unsigned=True, extract_to=tmp_path / "device").root
    result = run_py(root, "--verify")
    assert result.returncode == 1
    assert "bundle is for aarch64 but this device is x86_64; no NVIDIA GPU is visible" in result.stderr
    assert "TensorRT is not installed: no `tensorrt` Python module and no trtexec" in result.stderr


def test_selftest_fails_when_the_device_computes_other_classes(target_dir: Path, tmp_path: Path) -> None:
    bundle = build_bundle(target_dir, tmp_path / "b.tar.gz")
    root = verify_bundle(bundle.path, allow_unsigned=True, extract_to=tmp_path / "device").root
    expected = np.load(root / "samples/expected_0.npy")
    np.save(root / "samples/expected_0.npy", expected[:, ::-1])  # as if the device ranked classes differently
    result = run_py(root, "--selftest")
    assert result.returncode == 1 and "self-test FAILED" in result.stderr and "top-1 changes" in result.stderr


def test_verify_without_a_key_says_integrity_only_signer_not_trusted(target_dir: Path, tmp_path: Path, keys) -> None:
    bundle = build_bundle(target_dir, tmp_path / "b.tar.gz", BundleOptions(sign_key=keys.private_path))
    verified = verify_bundle(bundle.path)
    assert not verified.trusted_key
    assert "integrity only, signer not trusted" in verified.describe() and "trusted key" not in verified.describe()


def install_as_ship_does(bundle: Path, base: Path, name: str) -> Path:
    """Unpack into `base/releases/<name>`, the layout whose `base/known_signers` pins signers."""
    return verify_bundle(bundle, allow_unsigned=True, extract_to=base / "releases" / name).root


def test_device_pins_the_first_signer_and_refuses_another(target_dir: Path, tmp_path: Path, keys) -> None:
    other = generate_keypair(tmp_path / "keys" / "other")
    ours = build_bundle(target_dir, tmp_path / "ours.tar.gz", BundleOptions(sign_key=keys.private_path))
    theirs = build_bundle(target_dir, tmp_path / "theirs.tar.gz", BundleOptions(sign_key=other.private_path))
    base = tmp_path / "device"
    first = run_py(install_as_ship_does(ours.path, base, "ours"), "--verify")
    assert first.returncode == 0, first.stderr
    assert f"signer {keys.key_id} pinned on first use in {base / 'known_signers'}" in first.stdout
    again = run_py(base / "releases" / "ours", "--verify")
    assert again.returncode == 0 and f"signer {keys.key_id} is pinned" in again.stdout

    foreign = install_as_ship_does(theirs.path, base, "theirs")
    refused = run_py(foreign, "--verify")
    assert refused.returncode == 1
    assert f"signed by key {other.key_id}, but this device accepts only {keys.key_id}" in refused.stderr
    assert other.key_id not in (base / "known_signers").read_text()

    accepted = run_py(foreign, "--verify", "--accept-new-signer")
    assert accepted.returncode == 0 and "accepted as a new signer" in accepted.stdout
    assert run_py(foreign, "--verify").returncode == 0  # both keys are known now


def test_device_with_a_pinned_signer_refuses_unsigned_bundles(target_dir: Path, tmp_path: Path, keys) -> None:
    signed = build_bundle(target_dir, tmp_path / "signed.tar.gz", BundleOptions(sign_key=keys.private_path))
    unsigned = build_bundle(target_dir, tmp_path / "unsigned.tar.gz")
    base = tmp_path / "device"
    assert run_py(install_as_ship_does(signed.path, base, "signed"), "--verify").returncode == 0
    root = install_as_ship_does(unsigned.path, base, "unsigned")
    refused = run_py(root, "--verify")
    assert refused.returncode == 1 and "bundle is UNSIGNED but this device accepts only bundles signed by" in refused.stderr
    assert run_py(root, "--verify", "--allow-unsigned").returncode == 0
