"""The shipping commands end to end, as a user types them: keygen, bundle, verify, ship, rollback, build --bundle."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ship_support import build_for_target, cached_build_run, copy_build, device  # noqa: F401 (fixture)


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, EDGECOMPRESS_QUIET="1", PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    return subprocess.run([sys.executable, "-m", "edgecompress", *args], capture_output=True, text=True, env=env,
                          timeout=300, cwd=cwd)


def ssh_args(device) -> list[str]:
    return ["--key", str(device.user_key), "--known-hosts", str(device.known_hosts), "--timeout", "5",
            "--remote-python", sys.executable]


@pytest.mark.slow  # the whole CLI journey against a loopback sshd
def test_keygen_bundle_verify_ship_rollback(device, tmp_path: Path) -> None:
    target = copy_build(tmp_path / "run")
    assert cli("keygen", "--out", str(tmp_path / "release-key")).returncode == 0
    signed = cli("bundle", str(target), "--out", str(tmp_path / "v1.tar.gz"), "--sign", str(tmp_path / "release-key"))
    assert signed.returncode == 0 and "signed by" in signed.stdout, signed.stderr
    checked = cli("verify", str(tmp_path / "v1.tar.gz"), "--key", str(tmp_path / "release-key.pub"))
    assert checked.returncode == 0 and "signed by the trusted key" in checked.stdout
    keyless = cli("verify", str(tmp_path / "v1.tar.gz"))
    assert keyless.returncode == 0 and "integrity only, signer not trusted" in keyless.stdout
    untrusted = cli("ship", str(tmp_path / "v1.tar.gz"), "--to", device.destination(device.root / "cli"), *ssh_args(device))
    assert untrusted.returncode != 0 and "--trust-on-first-use" in untrusted.stderr
    assert cli("bundle", str(target), "--out", str(tmp_path / "v2.tar.gz"), "--sign", str(tmp_path / "release-key"),
               "--samples", "2").returncode == 0
    root = device.root / "cli"
    for archive in ("v1.tar.gz", "v2.tar.gz"):
        shipped = cli("ship", str(tmp_path / archive), "--to", device.destination(root), "--verify-key",
                      str(tmp_path / "release-key.pub"), *ssh_args(device))
        assert shipped.returncode == 0, shipped.stdout + shipped.stderr
        assert "run.py --verify + --selftest" in shipped.stdout
    v2 = os.readlink(root / "current")
    back = cli("rollback", "--to", device.destination(root), *ssh_args(device)[:-2])
    assert back.returncode == 0, back.stdout + back.stderr
    assert os.readlink(root / "current") != v2 and os.readlink(root / "previous") == v2


def test_failed_host_exits_nonzero_with_its_reason(device, tmp_path: Path) -> None:
    arm = build_for_target(tmp_path / "run", "raspberry-pi-5")
    assert cli("bundle", str(arm), "--out", str(tmp_path / "arm.tar.gz")).returncode == 0
    shipped = cli("ship", str(tmp_path / "arm.tar.gz"), "--allow-unsigned", "--to", device.destination(device.root / "a"),
                  *ssh_args(device))
    assert shipped.returncode == 1 and "FAILED" in shipped.stdout
    assert "bundle is for aarch64 (raspberry-pi-5) but the device reports x86_64" in shipped.stderr
    assert not (device.root / "a").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["bundle", "/nonexistent/cpu"], "/nonexistent/cpu has no report.json"),
        (["verify", "/nonexistent.tar.gz", "--allow-unsigned"], "does not exist"),
        (["ship", "/nonexistent.tar.gz", "--to", "host-without-path"], "is not [user@]host[:port]:/path"),
        (["keygen", "--out", "/proc/nope/key"], "cannot write the key"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(args, message) -> None:
    result = cli(*args)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert message in result.stderr


@pytest.mark.slow  # a whole build, bundle and signature in a subprocess
def test_build_bundle_sign_writes_a_signed_bundle(tmp_path: Path) -> None:
    run = cached_build_run()
    assert cli("keygen", "--out", str(tmp_path / "k")).returncode == 0
    result = cli("build", "--model", str(run / "model.fp32.onnx"), "--calib", str(run / "calib.npz"),
                 "--out", str(tmp_path / "build"), "--bench-runs", "10", "--bundle", "--sign", str(tmp_path / "k"))
    assert result.returncode == 0, result.stderr
    bundle = tmp_path / "build" / "cpu" / "bundle.tar.gz"
    checked = cli("verify", str(bundle), "--key", str(tmp_path / "k.pub"), "--extract", str(tmp_path / "x"))
    assert checked.returncode == 0, checked.stderr
    manifest = json.loads((tmp_path / "x" / "manifest.json").read_text())
    assert manifest["engine"]["kind"] == "ort-cpu" and manifest["figures"]["agreement"]["samples"] > 0
    assert manifest["selftest"]["source"] == "engine"
