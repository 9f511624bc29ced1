"""Shipping to a real OpenSSH server on 127.0.0.1: install, self-test, rollback, and every refusal."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from edgecompress.ship.bundle import BundleOptions, build_bundle
from edgecompress.core.errors import BundleError, ShipError, SigningKeyError
from edgecompress.ship.transport import Destination, SshOptions, rollback, ship
from edgecompress.ship.signing import generate_keypair
from tests.ship_support import arm64_device, build_for_target, copy_build, device, find_sshd, unprivileged_user  # noqa: F401 (fixtures)

pytestmark = pytest.mark.skipif(
    find_sshd() is None, reason="OpenSSH server (sshd) not installed: apt-get install openssh-server"
)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """Two different signed releases of the same build, an ARM bundle, and the keys."""
    work = tmp_path_factory.mktemp("bundles")
    keys = generate_keypair(work / "signing")
    target = copy_build(work / "run")
    signed = BundleOptions(sign_key=keys.private_path)
    first = build_bundle(target, work / "first.tar.gz", signed)
    second = build_bundle(target, work / "second.tar.gz", replace(signed, samples=2))
    arm = build_bundle(build_for_target(work / "arm", "raspberry-pi-5"), work / "arm.tar.gz", signed)
    return {"keys": keys, "first": first, "second": second, "arm": arm, "target": target, "work": work}


def ssh_options(device, **changes) -> SshOptions:
    """Real remote self-tests cost an onnxruntime start each; tests about transport use `quick`."""
    base = SshOptions(key=device.user_key, known_hosts=device.known_hosts, timeout=5, remote_python=sys.executable)
    return replace(base, **changes)


def quick(device, **changes) -> SshOptions:
    return ssh_options(device, remote_python="/no/python3", **changes)


def fresh_destination(device, name: str) -> tuple[Path, Destination]:
    path = device.root / name
    return path, Destination.parse(device.destination(path))


def snapshot(root: Path) -> dict[str, str]:
    """Every path under `root` with its link target or size: what 'nothing changed' compares."""
    if not root.exists():
        return {}
    return {
        p.relative_to(root).as_posix(): (os.readlink(p) if p.is_symlink() else str(p.stat().st_size))
        for p in sorted(root.rglob("*"))
    }


def current_release(root: Path) -> str:
    return os.readlink(root / "current")


def test_ship_installs_and_self_tests_on_the_device(device, bundles) -> None:
    root, dest = fresh_destination(device, "shipped")
    [result] = ship(bundles["first"].path, [dest], ssh_options(device), bundles["keys"].public_path)
    assert result.ok, result.reason
    assert result.checked_by == "run.py --verify + --selftest"
    assert current_release(root) == f"releases/{bundles['first'].sha256[:16]}"
    selftest = subprocess.run([sys.executable, "run.py", "--selftest"], cwd=root / "current",
                              capture_output=True, text=True, timeout=120)
    assert selftest.returncode == 0 and "self-test passed" in selftest.stdout
    assert not [p for p in (root / "releases").iterdir() if p.name.startswith(".")]


@pytest.mark.slow  # two full ships and a rollback over SSH
def test_two_releases_then_rollback(device, bundles) -> None:
    root, dest = fresh_destination(device, "rollback")
    options, key = quick(device), bundles["keys"].public_path
    first, second = (f"releases/{bundles[n].sha256[:16]}" for n in ("first", "second"))
    assert ship(bundles["first"].path, [dest], options, key)[0].ok
    [result] = ship(bundles["second"].path, [dest], options, key)
    assert result.ok and result.previous == first
    assert current_release(root) == second and os.readlink(root / "previous") == first
    back = rollback(dest, options)
    assert back.ok and current_release(root) == first and os.readlink(root / "previous") == second
    assert rollback(dest, options, release=bundles["second"].sha256[:16]).ok and current_release(root) == second


def test_rollback_without_a_previous_release_changes_nothing(device, bundles) -> None:
    root, dest = fresh_destination(device, "single")
    assert ship(bundles["first"].path, [dest], quick(device), bundles["keys"].public_path)[0].ok
    before = snapshot(root)
    result = rollback(dest, quick(device))
    assert not result.ok and "no previous release recorded" in result.reason
    missing = rollback(dest, quick(device), release="0123456789abcdef")
    assert not missing.ok and "releases/0123456789abcdef does not exist" in missing.reason
    assert snapshot(root) == before


def test_connection_killed_mid_transfer_keeps_the_old_release(device, bundles) -> None:
    root, dest = fresh_destination(device, "interrupted")
    options, key = quick(device), bundles["keys"].public_path
    assert ship(bundles["first"].path, [dest], options, key)[0].ok
    before = current_release(root)
    killed: list[int] = []

    def kill_connection(_host, done, _total, stage) -> None:
        if stage == "uploading" and done > 0 and not killed:
            for pid in device.session_pids():
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

    [result] = ship(bundles["second"].path, [dest], options, key, progress=kill_connection)
    assert killed and not result.ok
    assert "current release kept" in result.reason or "connection lost" in result.reason
    assert current_release(root) == before
    assert not (root / "releases" / bundles["second"].sha256[:16]).exists()


@pytest.fixture(scope="module")
def installed(device, bundles):
    """A device with the first release installed, to check that refusals change nothing."""
    root, dest = fresh_destination(device, "installed")
    assert ship(bundles["first"].path, [dest], quick(device), bundles["keys"].public_path)[0].ok
    return root, dest


def tampered(bundles) -> Path:
    from tests.test_bundle import rewrite_archive

    def flip(info, data):
        if info.name == "engine/engine.onnx":
            data = data[:200] + bytes([data[200] ^ 0xFF]) + data[201:]
        return [(info, data)]

    return rewrite_archive(bundles["first"].path, bundles["work"] / "tampered.tar.gz", flip)


def with_entry(bundles, name: str, link: str | None = None) -> Path:
    import tarfile

    from tests.test_bundle import rewrite_archive

    def add(info, data):
        if info.name != "run.py":
            return [(info, data)]
        extra = tarfile.TarInfo(name)
        if link:
            extra.type, extra.linkname = tarfile.SYMTYPE, link
            return [(info, data), (extra, None)]
        extra.size = 4
        return [(info, data), (extra, b"pwn\n")]

    return rewrite_archive(bundles["first"].path, bundles["work"] / f"entry-{abs(hash(name))}.tar.gz", add)


def other_key_bundle(bundles) -> Path:
    other = generate_keypair(bundles["work"] / f"other-{time.monotonic_ns()}")
    return build_bundle(bundles["target"], bundles["work"] / "other.tar.gz", BundleOptions(sign_key=other.private_path)).path


def unsigned_bundle(bundles) -> Path:
    return build_bundle(bundles["target"], bundles["work"] / "unsigned.tar.gz").path


@pytest.mark.parametrize(
    "make, message",
    [
        (tampered, "does not match its sha256"),
        (other_key_bundle, "signed by key .* not by the trusted key"),
        (unsigned_bundle, "is not signed"),
        (lambda b: with_entry(b, "../escape.sh"), r"'\.\.' component"),
        (lambda b: with_entry(b, "samples/link", "/etc/passwd"), "is a link"),
    ],
    ids=["tampered-engine", "other-key", "unsigned", "dotdot-entry", "symlink-out"],
)
def test_bad_bundles_are_refused_and_change_nothing(device, bundles, installed, make, message) -> None:
    root, dest = installed
    before = snapshot(root)
    with pytest.raises(BundleError, match=message):
        ship(make(bundles), [dest], ssh_options(device), bundles["keys"].public_path)
    assert snapshot(root) == before
    assert not (device.root / "escape.sh").exists()


def test_bundle_for_another_arch_is_refused_before_copying(device, bundles) -> None:
    root, dest = fresh_destination(device, "arch")
    [result] = ship(bundles["arm"].path, [dest], ssh_options(device), bundles["keys"].public_path)
    assert not result.ok
    assert "bundle is for aarch64 (raspberry-pi-5) but the device reports x86_64 (uname -m)" in result.reason
    assert not root.exists()


def test_failed_device_verification_keeps_current(device, bundles, installed) -> None:
    root, dest = installed
    before = snapshot(root)
    # a device whose Python cannot import onnxruntime fails `run.py --verify`
    [result] = ship(bundles["second"].path, [dest], ssh_options(device, remote_python="/usr/bin/python3"),
                    bundles["keys"].public_path)
    assert not result.ok and "checks on the device failed: error: device does not match the bundle: onnxruntime is not installed" in result.reason
    assert snapshot(root) == before


def test_device_without_python_gets_a_sha256_check(device, bundles) -> None:
    root, dest = fresh_destination(device, "nopython")
    [result] = ship(bundles["first"].path, [dest], ssh_options(device, remote_python="/no/python3"),
                    bundles["keys"].public_path)
    assert result.ok and result.checked_by == "sha256sum + signer pinned from here (no Python on the device)"
    assert (root / "current" / "run.py").is_file()
    assert bundles["keys"].key_id in (root / "known_signers").read_text()
    installed = current_release(root)
    [foreign] = ship(other_key_bundle(bundles), [dest], ssh_options(device, remote_python="/no/python3"),
                     trust_on_first_use=True)
    assert not foreign.ok and "this device accepts only " + bundles["keys"].key_id in foreign.reason
    assert current_release(root) == installed


def test_destination_without_write_permission_fails_clearly(device, bundles) -> None:
    locked = device.root / "locked"
    locked.mkdir(mode=0o755)
    user = unprivileged_user()
    if os.geteuid() != 0:
        locked.chmod(0o555)
    dest = Destination.parse(device.destination(locked / "models", user=user))
    [result] = ship(bundles["first"].path, [dest], ssh_options(device), bundles["keys"].public_path)
    assert not result.ok and f"cannot write to {locked}/models/releases on the device" in result.reason
    assert not (locked / "models").exists()


def test_unreachable_host_times_out_instead_of_hanging(bundles) -> None:
    silent = socket.socket()  # accepts TCP but never speaks SSH
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    dest = Destination("127.0.0.1", "/tmp/x", "root", silent.getsockname()[1])
    start = time.monotonic()
    [result] = ship(bundles["first"].path, [dest], SshOptions(timeout=1), bundles["keys"].public_path)
    silent.close()
    assert not result.ok and "no SSH answer within 1 s" in result.reason
    assert time.monotonic() - start < 15


def test_closed_port_is_reported(bundles) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    [result] = ship(bundles["first"].path, [Destination("127.0.0.1", "/tmp/x", "root", port)],
                    SshOptions(timeout=2), bundles["keys"].public_path)
    assert not result.ok and "unreachable" in result.reason


def test_unknown_host_key_is_refused_unless_accepted(device, bundles, tmp_path) -> None:
    root, dest = fresh_destination(device, "hostkey")
    empty = tmp_path / "known_hosts"
    [refused] = ship(bundles["first"].path, [dest], quick(device, known_hosts=empty), bundles["keys"].public_path)
    assert not refused.ok and "not in known_hosts" in refused.reason and not root.exists()
    [accepted] = ship(bundles["first"].path, [dest], quick(device, known_hosts=empty, accept_new_host_key=True),
                      bundles["keys"].public_path)
    assert accepted.ok and f"[127.0.0.1]:{device.port}" in empty.read_text()


def test_bad_ssh_keys_fail_before_any_host(device, bundles, tmp_path) -> None:
    locked = tmp_path / "id_locked"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "sesame", "-f", str(locked)], check=True)
    _, dest = fresh_destination(device, "badkey")
    cases = [(tmp_path / "missing", None, "does not exist"), (locked, "wrong", "wrong passphrase"),
             (locked, None, "is encrypted"), (tmp_path, None, "cannot be read")]
    for key, passphrase, message in cases:
        with pytest.raises(SigningKeyError, match=message):
            ship(bundles["first"].path, [dest], ssh_options(device, key=key, passphrase=passphrase),
                 bundles["keys"].public_path)


def test_parallel_ship_reports_every_host(device, bundles) -> None:
    roots = [device.root / f"parallel{i}" for i in range(3)]
    dests = [Destination.parse(device.destination(r)) for r in roots]
    seen: set[str] = set()
    lock = threading.Lock()

    def record(host, _done, _total, _stage) -> None:
        with lock:
            seen.add(host)

    results = ship(bundles["first"].path, dests, quick(device), bundles["keys"].public_path, parallel=3,
                   progress=record)
    assert [r.ok for r in results] == [True, True, True] and seen == {str(d) for d in dests}
    assert all((r / "current" / "manifest.json").is_file() for r in roots)


@pytest.mark.parametrize("spec", ["nohost", "host:notaport:/x", "user@:/x", "host:22:"])
def test_malformed_destinations_are_refused(spec) -> None:
    with pytest.raises(ShipError, match="is not \\[user@\\]host\\[:port\\]:/path"):
        Destination.parse(spec)


def test_destination_forms_parse() -> None:
    assert Destination.parse("pi@10.0.0.7:2222:/opt/models") == Destination("10.0.0.7", "/opt/models", "pi", 2222)
    assert Destination.parse("gateway:/srv/m/") == Destination("gateway", "/srv/m", None, 22)


def test_arm64_bundle_ships_and_self_tests_on_emulated_aarch64(arm64_device, bundles) -> None:
    """The real proof for an ARM bundle: `uname -m` says aarch64, and run.py self-tests on aarch64 code."""
    from tests.ship_support import arm64_root

    inside = f"/opt/ec-ship-test-{os.getpid()}"
    dest = Destination.parse(arm64_device.destination(inside))
    try:
        [result] = ship(bundles["arm"].path, [dest], ssh_options(arm64_device, remote_python="/opt/ec/bin/python",
                        command_timeout=600), bundles["keys"].public_path)
        assert result.ok, result.reason
        assert result.checked_by == "run.py --verify + --selftest"
        assert os.readlink(arm64_root() / inside.lstrip("/") / "current") == f"releases/{bundles['arm'].sha256[:16]}"
        [refused] = ship(bundles["first"].path, [dest], ssh_options(arm64_device), bundles["keys"].public_path)
        assert "bundle is for x86_64 (cpu) but the device reports aarch64" in refused.reason
    finally:
        import shutil

        shutil.rmtree(arm64_root() / inside.lstrip("/"), ignore_errors=True)


def test_arm_bundle_carries_the_arm_builders_ort_engine(bundles) -> None:
    """The ARM bundle these tests ship is ONNX Runtime's .ort conversion, with its operator config."""
    manifest = bundles["arm"].manifest
    assert manifest["engine"]["kind"] == "ort-arm" and manifest["engine"]["path"] == "engine/engine.ort"
    assert "engine/required_operators.config" in manifest["files"]
    assert "com.microsoft:QLinearConv@1" in manifest["runtime"]["required_operators"]


@pytest.fixture(scope="module")
def tensorrt_kit_bundle(bundles):
    """A TensorRT bundle for the x86-64 `gpu` target built without a GPU: the on-device kit, no plan."""
    target = build_for_target(bundles["work"] / "gpu", "gpu")
    return build_bundle(target, bundles["work"] / "gpu.tar.gz", BundleOptions(sign_key=bundles["keys"].private_path))


def test_tensorrt_kit_bundle_states_that_the_device_builds_its_engine(tensorrt_kit_bundle) -> None:
    manifest = tensorrt_kit_bundle.manifest
    assert manifest["engine"]["path"] is None and "engine/build_engine.sh" in manifest["files"]
    assert manifest["runtime"]["tensorrt"]["build_on_device"] is True and "trt_device.py" in manifest["files"]
    selftest = manifest["selftest"]
    assert selftest["source"] == "fp32 reference" and selftest["atol"] >= 2 * selftest["int8_error_here"] > 0


def test_tensorrt_kit_is_refused_on_a_device_without_gpu_or_trtexec(device, bundles, tensorrt_kit_bundle) -> None:
    """Ship runs `run.py --verify --build-engine --selftest`; this device has neither GPU nor TensorRT."""
    root, dest = fresh_destination(device, "gpu-kit")
    [result] = ship(tensorrt_kit_bundle.path, [dest], ssh_options(device), bundles["keys"].public_path)
    assert not result.ok
    assert "checks on the device failed: error: device does not match the bundle: no NVIDIA GPU is visible" \
        in result.reason
    assert "no `tensorrt` Python module and no trtexec" in result.reason and "install the runtime it names" in result.reason
    assert not (root / "current").exists() and list((root / "releases").iterdir()) == []


def test_tensorrt_kit_needs_python_on_the_device(device, bundles, tensorrt_kit_bundle) -> None:
    root, dest = fresh_destination(device, "gpu-kit-nopython")
    [result] = ship(tensorrt_kit_bundle.path, [dest], quick(device), bundles["keys"].public_path)
    assert not result.ok and "a TensorRT kit bundle needs Python 3 there to build and self-test" in result.reason
    assert not (root / "current").exists()


def test_ship_without_a_trusted_key_refuses_before_touching_a_device(device, bundles) -> None:
    root, dest = fresh_destination(device, "untrusted")
    with pytest.raises(ShipError, match="integrity only, signer not trusted"):
        ship(bundles["first"].path, [dest], quick(device))
    assert not root.exists()


@pytest.mark.slow  # three ships over SSH
def test_trust_on_first_use_pins_the_signer_and_the_device_refuses_another(device, bundles) -> None:
    root, dest = fresh_destination(device, "tofu")
    options = ssh_options(device)
    [first] = ship(bundles["first"].path, [dest], options, trust_on_first_use=True)
    assert first.ok, first.reason
    assert bundles["keys"].key_id in (root / "known_signers").read_text()
    installed = current_release(root)

    foreign = other_key_bundle(bundles)
    [refused] = ship(foreign, [dest], options, trust_on_first_use=True)
    assert not refused.ok and "but this device accepts only " + bundles["keys"].key_id in refused.reason
    assert current_release(root) == installed

    [accepted] = ship(foreign, [dest], options, trust_on_first_use=True, accept_new_signer=True)
    assert accepted.ok, accepted.reason
    assert current_release(root) != installed and len((root / "known_signers").read_text().split("ed25519 ")) == 3
