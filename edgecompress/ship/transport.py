"""Ship: transport + remote verify + atomic switch, nothing else.

A bundle is verified here first (signature, checksums, safe unpack), so a bad bundle is
refused before any device is touched. Per host: `uname -m` must match the bundle's arch
(refused before copying); files go to `path/releases/.<sha>.partial/` over SFTP; the
device verifies them (`run.py --verify` and `--selftest` when it has Python, else
`sha256sum -c`), and a TensorRT kit bundle is built into a plan there (`--build-engine`,
between the two checks); only then is the release renamed into `releases/<sha>/` and `current`
switched by renaming a fresh symlink over it, so a cut connection or a failed check
leaves the old `current` in place. `previous` remembers the release to roll back to.
A signed bundle ships only with a trusted key or trust-on-first-use, and each device
checks the signer against the one it pinned (`known_signers`, see SignerTrust).
"""

from __future__ import annotations

import getpass
import json
import logging
import shlex
import socket
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import paramiko

from edgecompress.device.run import KNOWN_SIGNERS_NAME, normalize_arch
from edgecompress.core.errors import BundleError, ShipError, SigningKeyError
from edgecompress.core.progress import info
from edgecompress.device.unpack import SIGNATURE_NAME
from edgecompress.ship.verify import VerifiedBundle, verify_bundle

# (host label, bytes done, bytes total, stage) -> None
ProgressFn = Callable[[str, int, int, str], None]
_KNOWN_HOSTS_LOCK = threading.Lock()
# paramiko logs each failed handshake with a traceback; failures are reported per host instead
logging.getLogger("paramiko").addHandler(logging.NullHandler())
logging.getLogger("paramiko").propagate = False


@dataclass(frozen=True)
class Destination:
    """`[user@]host[:port]:/path` on a device."""

    host: str
    path: str
    user: str | None = None
    port: int = 22

    @classmethod
    def parse(cls, spec: str) -> "Destination":
        user, _, rest = spec.rpartition("@") if "@" in spec else ("", "", spec)
        parts = rest.split(":")
        try:
            if len(parts) == 3:
                host, port, path = parts[0], int(parts[1]), parts[2]
            elif len(parts) == 2:
                host, port, path = parts[0], 22, parts[1]
            else:
                raise ValueError
            if not host or not path or not 0 < port < 65536:
                raise ValueError
        except ValueError:
            raise ShipError(
                f"destination '{spec}' is not [user@]host[:port]:/path", "e.g. --to pi@10.0.0.7:22:/opt/models"
            ) from None
        return cls(host, path.rstrip("/") or "/", user or None, port)

    def __str__(self) -> str:
        user = f"{self.user}@" if self.user else ""
        return f"{user}{self.host}:{self.port}:{self.path}"


@dataclass(frozen=True)
class SshOptions:
    """How to reach devices. `key` is the SSH identity (not the bundle signing key)."""

    key: Path | None = None
    passphrase: str | None = None
    known_hosts: Path | None = None  # default ~/.ssh/known_hosts
    accept_new_host_key: bool = False
    timeout: float = 15.0  # connect, banner, auth and each SFTP operation
    command_timeout: float = 300.0  # a remote command silent this long is abandoned
    remote_python: str = "python3"


@dataclass
class HostResult:
    """What shipping did on one device: `ok`, else the `reason`; the release it now runs, the one before, the check
    that passed there and the seconds it took."""

    destination: Destination
    ok: bool
    reason: str = ""
    release: str | None = None
    previous: str | None = None
    checked_by: str = ""
    seconds: float = 0.0


@dataclass(frozen=True)
class SignerTrust:
    """What each device is told about bundle signers.

    The device's run.py keeps `known_signers` beside `releases/` (like SSH's known_hosts):
    the first signer it accepts is pinned there and any other is refused unless
    `accept_new_signer`, so once a device has a release, a self-signed bundle cannot replace
    it, even when shipped without --verify-key.
    """

    accept_new_signer: bool = False
    allow_unsigned: bool = False
    signature: dict[str, Any] | None = None  # the bundle's manifest.sig, for devices without Python

    def run_py_args(self, base: str) -> str:
        flags = [f"--known-signers {_q(base + '/' + KNOWN_SIGNERS_NAME)}"]
        flags += ["--accept-new-signer"] * self.accept_new_signer + ["--allow-unsigned"] * self.allow_unsigned
        return " ".join(flags)


class HostFailure(Exception):
    """One host failed; the message is the reason shown in the summary."""


def load_ssh_key(path: Path, passphrase: str | None) -> paramiko.PKey:
    """Load the SSH identity up front so a bad key fails once, clearly, before any host is tried."""
    path = Path(path)
    try:
        # the stubs say str, but paramiko hands it to cryptography's key loaders, which take bytes
        return paramiko.PKey.from_path(path, passphrase.encode() if passphrase else None)  # type: ignore[arg-type]
    except FileNotFoundError:
        raise SigningKeyError(f"SSH key {path} does not exist", "pass the private key your devices trust (--key)") from None
    except (PermissionError, IsADirectoryError) as exc:
        raise SigningKeyError(f"SSH key {path} cannot be read ({exc.strerror})", "check its path and permissions") from None
    except (paramiko.PasswordRequiredException, TypeError):  # TypeError: cryptography's "password not provided"
        raise SigningKeyError(f"SSH key {path} is encrypted", "give its passphrase with --passphrase") from None
    except (paramiko.SSHException, ValueError, UnicodeDecodeError) as exc:
        if passphrase:
            raise SigningKeyError(f"wrong passphrase for SSH key {path} ({exc})", "give the key's passphrase") from None
        raise SigningKeyError(f"{path} is not an SSH private key ({exc})", "pass an OpenSSH/PEM private key") from None


class Connection:
    """One SSH session to a device: commands with time-outs, and SFTP."""

    def __init__(self, dest: Destination, ssh: SshOptions, pkey: paramiko.PKey | None) -> None:
        self.dest, self.ssh = dest, ssh
        self.client = paramiko.SSHClient()
        known_hosts = ssh.known_hosts or Path.home() / ".ssh" / "known_hosts"
        self.known_hosts = Path(known_hosts)
        if self.known_hosts.is_file():
            self.client.load_host_keys(str(self.known_hosts))
        self.client.set_missing_host_key_policy(
            paramiko.AutoAddPolicy() if ssh.accept_new_host_key else paramiko.RejectPolicy()
        )
        try:
            self.client.connect(
                dest.host, dest.port, username=dest.user or getpass.getuser(), pkey=pkey,
                allow_agent=pkey is None, look_for_keys=pkey is None, timeout=ssh.timeout,
                banner_timeout=ssh.timeout, auth_timeout=ssh.timeout, channel_timeout=ssh.timeout,
            )
        except Exception as exc:
            self.client.close()
            raise HostFailure(connect_failure_reason(exc, dest, ssh)) from None
        if ssh.accept_new_host_key:
            self._save_host_keys()
        try:
            self.sftp = self.client.open_sftp()
        except (paramiko.SSHException, EOFError, OSError) as exc:
            self.client.close()
            raise HostFailure(f"{dest.host}:{dest.port} has no SFTP service ({exc}); enable the sftp subsystem") from None
        channel = self.sftp.get_channel()
        if channel is not None:  # an SFTP session opened over SSH always has one
            channel.settimeout(ssh.timeout)

    def _save_host_keys(self) -> None:
        with _KNOWN_HOSTS_LOCK:
            self.known_hosts.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            existing = paramiko.HostKeys(str(self.known_hosts)) if self.known_hosts.is_file() else paramiko.HostKeys()
            for host, keys in self.client.get_host_keys().items():
                for key_type, key in keys.items():
                    existing.add(host, key_type, key)
            existing.save(str(self.known_hosts))

    def run(self, command: str, stdin: str | None = None, timeout: float | None = None) -> tuple[int, str]:
        """Exit status and combined output; a command silent past the timeout raises HostFailure."""
        try:
            channel_in, channel_out, _ = self.client.exec_command(command, timeout=timeout or self.ssh.command_timeout)
            if stdin is not None:
                channel_in.write(stdin)
                channel_in.channel.shutdown_write()
            channel_out.channel.set_combine_stderr(True)
            output = channel_out.read().decode(errors="replace")
            return channel_out.channel.recv_exit_status(), output
        except socket.timeout:
            raise HostFailure(f"`{command.split()[0]}` on the device timed out") from None
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise HostFailure(f"connection lost ({exc or type(exc).__name__})") from None

    def check(self, command: str, what: str, stdin: str | None = None) -> str:
        status, output = self.run(command, stdin)
        if status != 0:
            last = output.strip().splitlines()[-1] if output.strip() else f"exit status {status}"
            raise HostFailure(f"{what}: {last}")
        return output

    def readlink(self, path: str) -> str | None:
        status, output = self.run(f"readlink {shlex.quote(path)}")
        return output.strip() if status == 0 and output.strip() else None

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> "Connection":
        return self

    def __exit__(self, *_exc: Any) -> None:
        self.close()


def connect_failure_reason(exc: Exception, dest: Destination, ssh: SshOptions) -> str:
    """One line a user can act on, for each way connecting fails."""
    where = f"{dest.host}:{dest.port}"
    if isinstance(exc, paramiko.BadHostKeyException):
        return f"host key of {where} does not match known_hosts (possible impostor); fix known_hosts if the device was reinstalled"
    if isinstance(exc, paramiko.AuthenticationException):
        return f"authentication as {dest.user or getpass.getuser()} failed on {where}; pass the right --key"
    silent = ("timeout", "timed out", "banner", "no existing session")  # paramiko's words for "no SSH answer"
    if isinstance(exc, (socket.timeout, TimeoutError)) or any(word in str(exc).lower() for word in silent):
        return f"{where} unreachable: no SSH answer within {ssh.timeout:g} s"
    if isinstance(exc, paramiko.SSHException) and "known_hosts" in str(exc):
        return f"{where} is not in known_hosts; check its fingerprint, then pass --accept-new-host-key"
    if isinstance(exc, OSError):
        return f"{where} unreachable: {exc.strerror or exc}"
    return f"cannot connect to {where}: {exc}"


def _q(path: str) -> str:
    return shlex.quote(path)


def check_arch(conn: Connection, manifest: dict[str, Any]) -> None:
    wanted = normalize_arch(manifest["runtime"]["arch"])
    reported = normalize_arch(conn.check("uname -m", "uname -m failed"))
    if reported != wanted:
        raise HostFailure(
            f"bundle is for {wanted} ({manifest['target']['name']}) but the device reports {reported} (uname -m); "
            "nothing was copied"
        )


def upload_tree(conn: Connection, tree: Path, remote_dir: str, label: str, progress: ProgressFn | None) -> None:
    """Copy every file of the unpacked bundle under `remote_dir`, reporting bytes as they go."""
    files = sorted(p for p in tree.rglob("*") if p.is_file())
    total, done = sum(p.stat().st_size for p in files), 0
    directories = sorted({f"{remote_dir}/{p.parent.relative_to(tree).as_posix()}" for p in files})
    conn.check("mkdir -p " + " ".join(_q(d) for d in directories), f"cannot create {remote_dir}")
    for path in files:
        name = path.relative_to(tree).as_posix()
        base = done

        def report(sent: int, _size: int, base: int = base) -> None:
            if progress:
                progress(label, base + sent, total, "uploading")

        try:
            conn.sftp.put(str(path), f"{remote_dir}/{name}", callback=report, confirm=True)
            if name == "run.py":
                conn.sftp.chmod(f"{remote_dir}/{name}", 0o755)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise HostFailure(f"transfer of {name} failed part-way ({exc or type(exc).__name__}); current release kept") from None
        done += path.stat().st_size


def builds_on_device(manifest: dict[str, Any]) -> bool:
    """A TensorRT bundle with a build kit instead of a plan: the device makes its own plan."""
    return manifest["engine"]["kind"] == "tensorrt" and not manifest["engine"].get("path")


def remote_verify(conn: Connection, remote_dir: str, manifest: dict[str, Any], trust: SignerTrust = SignerTrust()) -> str:
    """Run the bundle's own checks on the device (signer pinning included; a TensorRT kit's plan built first);
    sha256sum where there is no Python."""
    python = conn.ssh.remote_python
    status, _ = conn.run(f"command -v {_q(python)}")
    build = " --build-engine" if builds_on_device(manifest) else ""
    if status == 0:  # one interpreter start for all checks: devices are slow to import onnxruntime
        selftest = " --selftest" if manifest.get("selftest") else ""
        signers = trust.run_py_args(conn.dest.path)
        conn.check(f"cd {_q(remote_dir)} && {_q(python)} run.py --verify {signers}{build}{selftest}",
                   "checks on the device failed")
        return "run.py --verify" + (" + --build-engine" if build else "") + (" + --selftest" if selftest else "")
    if build:
        raise HostFailure(f"no {python} on the device: a TensorRT kit bundle needs Python 3 there to build and "
                          "self-test its engine; install python3 (JetPack has it) or pass --remote-python")
    sums = "".join(f"{entry['sha256']}  {name}\n" for name, entry in sorted(manifest["files"].items()))
    conn.check(f"cd {_q(remote_dir)} && sha256sum -c -", "sha256 check on the device failed", stdin=sums)
    pin_signer_from_here(conn, trust)
    return "sha256sum + signer pinned from here (no Python on the device)"


def pin_signer_from_here(conn: Connection, trust: SignerTrust) -> None:
    """Where run.py cannot run, apply its known_signers check to the device's file over SFTP."""
    from edgecompress.device.run import check_known_signer

    remote = f"{conn.dest.path}/{KNOWN_SIGNERS_NAME}"
    with tempfile.TemporaryDirectory(prefix="ec-signers-") as tmp:
        local = Path(tmp) / KNOWN_SIGNERS_NAME
        try:
            conn.sftp.get(remote, str(local))
        except FileNotFoundError:
            pass
        before = local.read_bytes() if local.is_file() else None
        try:
            check_known_signer(local, trust.signature, trust.accept_new_signer, trust.allow_unsigned)
        except BundleError as exc:
            raise HostFailure(f"checks on the device failed: {exc.problem}") from None
        if local.is_file() and local.read_bytes() != before:
            conn.sftp.put(str(local), f"{remote}.new")
            conn.sftp.posix_rename(f"{remote}.new", remote)


def switch_link(conn: Connection, base: str, name: str, target: str) -> None:
    """Point `base/name` at `target` atomically: make a new symlink, rename it over the old one."""
    temporary = f"{base}/.{name}.new"
    conn.check(f"rm -f {_q(temporary)} && ln -s {_q(target)} {_q(temporary)}", f"cannot write to {base}")
    try:
        conn.sftp.posix_rename(temporary, f"{base}/{name}")
    except (OSError, paramiko.SSHException) as exc:
        raise HostFailure(f"could not switch {base}/{name} ({exc}); the old one is still in place") from None


def install_release(conn: Connection, verified: VerifiedBundle, tree: Path, label: str,
                    progress: ProgressFn | None, trust: SignerTrust = SignerTrust()) -> HostResult:
    """Steps on one connected device; any HostFailure leaves `current` as it was."""
    dest, manifest = conn.dest, verified.manifest
    check_arch(conn, manifest)
    releases = f"{dest.path}/releases"
    conn.check(f"mkdir -p {_q(releases)} && test -w {_q(releases)}", f"cannot write to {releases} on the device")
    final, partial = f"{releases}/{verified.release}", f"{releases}/.{verified.release}.partial"
    previous = conn.readlink(f"{dest.path}/current")
    present, _ = conn.run(f"test -d {_q(final)}")
    staging = final if present == 0 else partial
    if present != 0:
        conn.check(f"rm -rf {_q(partial)}", f"cannot clean {partial}")
        upload_tree(conn, tree, partial, label, progress)
    if progress:
        progress(label, 1, 1, "verifying on device")
    try:
        checked_by = remote_verify(conn, staging, manifest, trust)
    except HostFailure:
        if staging == partial:
            conn.run(f"rm -rf {_q(partial)}")
        raise
    if staging == partial:
        conn.check(f"mv {_q(partial)} {_q(final)}", f"cannot move the release into {final}")
    new_target = f"releases/{verified.release}"
    switch_link(conn, dest.path, "current", new_target)
    if previous and previous != new_target:
        switch_link(conn, dest.path, "previous", previous)
    return HostResult(dest, True, "", verified.release, previous, checked_by)


def _timed(dest: Destination, action: Callable[[], HostResult]) -> HostResult:
    start = time.perf_counter()
    try:
        result = action()
    except HostFailure as exc:
        result = HostResult(dest, False, str(exc))
    except (paramiko.SSHException, EOFError, OSError) as exc:
        result = HostResult(dest, False, f"connection lost ({exc or type(exc).__name__}); current release kept")
    result.seconds = time.perf_counter() - start
    return result


def ship_to_host(verified: VerifiedBundle, tree: Path, dest: Destination, ssh: SshOptions,
                 pkey: paramiko.PKey | None, progress: ProgressFn | None = None,
                 trust: SignerTrust = SignerTrust()) -> HostResult:
    def action() -> HostResult:
        if progress:
            progress(str(dest), 0, 1, "connecting")
        with Connection(dest, ssh, pkey) as conn:
            return install_release(conn, verified, tree, str(dest), progress, trust)

    return _timed(dest, action)


def ship(archive: Path, destinations: list[Destination], ssh: SshOptions = SshOptions(),
         trusted_key: Path | None = None, allow_unsigned: bool = False, parallel: int = 1,
         progress: ProgressFn | None = None, trust_on_first_use: bool = False,
         accept_new_signer: bool = False) -> list[HostResult]:
    """Verify the bundle once here, then install it on every destination (`parallel` at a time).

    A signed bundle needs `trusted_key`, or `trust_on_first_use`: then only each device's
    pinned signer (known_signers) vouches for it, the first install pinning it.
    """
    pkey = load_ssh_key(ssh.key, ssh.passphrase) if ssh.key else None
    with tempfile.TemporaryDirectory(prefix="ec-ship-") as tmp:
        verified = verify_bundle(archive, trusted_key, allow_unsigned, extract_to=Path(tmp) / "bundle")
        if verified.signer is not None and not verified.trusted_key and not trust_on_first_use:
            raise ShipError(
                f"{Path(archive).name} is signed by key {verified.signer}, but no trusted key was named, so nothing "
                "says who made it (integrity only, signer not trusted); nothing was shipped",
                "pass --verify-key YOUR_KEY.pub, or --trust-on-first-use to let each device pin the signer of "
                "the first bundle it accepts",
            )
        info(f"verified here: {verified.describe()}")
        tree = Path(tmp) / "bundle"
        signature = tree / SIGNATURE_NAME
        trust = SignerTrust(accept_new_signer, allow_unsigned,
                            json.loads(signature.read_text(encoding="utf-8")) if signature.is_file() else None)
        with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
            return list(pool.map(lambda d: ship_to_host(verified, tree, d, ssh, pkey, progress, trust), destinations))


def rollback(dest: Destination, ssh: SshOptions = SshOptions(), release: str | None = None) -> HostResult:
    """Point `current` back at `previous` (or at `releases/<release>`); `previous` takes the old current."""
    pkey = load_ssh_key(ssh.key, ssh.passphrase) if ssh.key else None

    def action() -> HostResult:
        with Connection(dest, ssh, pkey) as conn:
            current = conn.readlink(f"{dest.path}/current")
            target = f"releases/{release}" if release else conn.readlink(f"{dest.path}/previous")
            if not target:
                raise HostFailure(f"no previous release recorded in {dest.path}; nothing to roll back to")
            status, _ = conn.run(f"test -d {_q(dest.path + '/' + target)}")
            if status != 0:
                raise HostFailure(f"{dest.path}/{target} does not exist on the device")
            switch_link(conn, dest.path, "current", target)
            if current and current != target:
                switch_link(conn, dest.path, "previous", current)
            return HostResult(dest, True, "", target.rsplit("/", 1)[-1], current, "rollback")

    return _timed(dest, action)
