"""`edgecompress keygen | bundle | verify | ship | rollback`: thin commands over bundle/signing/verify/ship."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Optional

import typer

from edgecompress.cli import app

KEY_PASSPHRASE_ENV = "EDGECOMPRESS_KEY_PASSPHRASE"
SSH_PASSPHRASE_ENV = "EDGECOMPRESS_SSH_PASSPHRASE"

SSH_PANEL = "SSH connection"
TRUST_PANEL = "Signature and trust"

# options shared by `ship` and `rollback` (declared once, used by both)
TO = typer.Option(..., "--to", metavar="DEVICE", help="Device as \\[user@]host\\[:port]:/path (repeatable).")
SSH_KEY = typer.Option(None, "--key", help="SSH private key for logging in (default: ssh-agent and ~/.ssh keys).", rich_help_panel=SSH_PANEL, metavar="FILE")
SSH_PASSPHRASE = typer.Option(None, "--ssh-passphrase", envvar=SSH_PASSPHRASE_ENV, help="Passphrase of --key.", show_default=False, rich_help_panel=SSH_PANEL, metavar="TEXT")
KNOWN_HOSTS = typer.Option(None, "--known-hosts", help="known_hosts file (default ~/.ssh/known_hosts).", rich_help_panel=SSH_PANEL, metavar="FILE")
ACCEPT_NEW = typer.Option(False, "--accept-new-host-key", help="Trust and record a host key not yet in known_hosts.", rich_help_panel=SSH_PANEL, metavar="")
TIMEOUT = typer.Option(15.0, "--timeout", help="Seconds to wait for a device to answer before giving up on it.", rich_help_panel=SSH_PANEL, metavar="SECONDS")
REMOTE_PYTHON = typer.Option("python3", "--remote-python", help="Python on the device that runs run.py checks.", rich_help_panel=SSH_PANEL, metavar="PATH")
SIGNING_PASSPHRASE = typer.Option(None, "--passphrase", envvar=KEY_PASSPHRASE_ENV, help="Passphrase of the signing key.", show_default=False)


def ssh_options(key, ssh_passphrase, known_hosts, accept_new_host_key, timeout, remote_python=None):
    from edgecompress.ship.transport import SshOptions

    return SshOptions(key=key, passphrase=ssh_passphrase, known_hosts=known_hosts, accept_new_host_key=accept_new_host_key,
                      timeout=timeout, remote_python=remote_python or "python3")


@app.command()
def keygen(
    out: Path = typer.Option(..., "--out", "-o", help="Private key file to write (mode 0600); the public key goes to OUT.pub."),
    passphrase: Optional[str] = SIGNING_PASSPHRASE,
) -> None:
    """Make an ed25519 key pair for signing bundles."""
    from edgecompress.core.progress import out_console
    from edgecompress.ship.signing import generate_keypair

    pair = generate_keypair(out, passphrase)
    out_console.print(f"private key {pair.private_path} (keep secret), public key {pair.public_path}, key id {pair.key_id}")


@app.command()
def bundle(
    target_dir: Path = typer.Argument(..., help="A built target folder, e.g. build/cpu."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Archive to write (default: TARGET_DIR/bundle.tar.gz)."),
    sign: Optional[Path] = typer.Option(None, "--sign", help="Sign with this private key (from `edgecompress keygen`)."),
    passphrase: Optional[str] = SIGNING_PASSPHRASE,
    include_reference: bool = typer.Option(False, "--include-reference", help="Also carry the fp32 reference ONNX."),
    samples: int = typer.Option(4, "--samples", min=1, help="Sample inputs kept for the device self-test."),
) -> None:
    """Pack one built target into a reproducible, self-describing (optionally signed) device bundle."""
    from edgecompress.ship.bundle import BundleOptions

    options = BundleOptions(include_reference=include_reference, sign_key=sign, passphrase=passphrase, samples=samples)
    make_bundles([target_dir], options, out)


def make_bundles(target_dirs: list[Path], options, out: Optional[Path] = None) -> None:
    """Bundle each target folder and say what was written (shared with `build --bundle`)."""
    from edgecompress.ship.bundle import build_bundle
    from edgecompress.core.progress import out_console

    for target_dir in target_dirs:
        made = build_bundle(target_dir, out, options)
        signed = f"signed by {made.signed_by}" if made.signed_by else "UNSIGNED"
        out_console.print(
            f"bundle {made.path} ({made.size_bytes / 1024:.0f} KiB, engine {made.engine_size_bytes / 1024:.0f} KiB, "
            f"{signed}) sha256 {made.sha256}"
        )


@app.command()
def release(
    target_dirs: list[Path] = typer.Argument(..., metavar="TARGET_DIR...", help="Built phone targets of one build, e.g. "
                                             "build/android-arm64-executorch build/ios-arm64-executorch build/android-arm64."),
    out: Path = typer.Option(..., "--out", "-o", help="Release folder an app polls or bundles: OUT/index.json, OUT/VERSION/, OUT/VERSION.zip."),
    version: str = typer.Option(..., "--version", help="This release's version (MAJOR[.MINOR[.PATCH]]); releases are immutable."),
    sign: Path = typer.Option(..., "--sign", help="Sign the manifest with this ed25519 private key (from `edgecompress keygen`)."),
    passphrase: Optional[str] = SIGNING_PASSPHRASE,
    samples: int = typer.Option(4, "--samples", min=1, help="Golden inputs (with each engine's outputs) for the app's self-check."),
) -> None:
    """Write a signed phone release: engines, manifest, golden I/O and index.json, for an app to verify, load and update."""
    from edgecompress.core.progress import out_console
    from edgecompress.ship.release import build_release

    made = build_release(target_dirs, out, version, sign, passphrase, samples)
    targets = ", ".join(f"{e['target']} ({e['kind']} {e['precision']})" for e in made.manifest["engines"])
    out_console.print(f"release {made.version_dir} ({targets}) signed by {made.signed_by}; archive {made.archive}; "
                      f"index {made.index}")


@app.command("check-release")
def check_release(
    version_dir: Path = typer.Argument(..., metavar="VERSION_DIR", help="A release version folder, e.g. release/1.2.0."),
    key: Path = typer.Option(..., "--key", help="The public key (.pub) the app trusts."),
    target: str = typer.Option(..., "--target", help="Which engine of the release to load (its target name)."),
) -> None:
    """Do what an app does (device/app_release.py): verify signature and hashes, check the runtime, load, golden check."""
    from edgecompress.core.errors import BundleError
    from edgecompress.core.logs import third_party_output
    from edgecompress.core.progress import out_console
    from edgecompress.device.app_release import ReleaseRefused, load_release

    try:
        with third_party_output("release"):  # the runtime's import and thread-pool noise (shown with --log-level debug)
            loaded = load_release(version_dir, key, target)
    except ReleaseRefused as refused:
        raise BundleError(f"release refused: {refused.reason}", "rebuild the release, or check the key and the runtime") from None
    out_console.print(f"OK {loaded.manifest['model']['name']} {loaded.manifest['model']['version']} {target}: signature, "
                      f"hashes, {loaded.engine['runtime']['name']} {loaded.runtime_version}, golden check")


@app.command()
def verify(
    bundle_path: Path = typer.Argument(..., metavar="BUNDLE", help="The .tar.gz to check."),
    key: Optional[Path] = typer.Option(None, "--key", help="Trusted signing public key (.pub) the bundle must be signed with."),
    allow_unsigned: bool = typer.Option(False, "--allow-unsigned", help="Accept a bundle without a signature (says so)."),
    extract: Optional[Path] = typer.Option(None, "--extract", help="Also unpack the verified bundle into this new folder."),
) -> None:
    """Check a bundle's signature, every checksum and every entry (no links, no escapes, nothing unlisted)."""
    from edgecompress.core.progress import out_console
    from edgecompress.ship.verify import verify_bundle

    verified = verify_bundle(bundle_path, key, allow_unsigned, extract)
    out_console.print(f"OK {verified.describe()}" + (f"; unpacked into {extract}" if extract else ""))


class HostProgress:
    """Per-host progress bars fed from worker threads."""

    def __init__(self, progress) -> None:
        self.progress, self.lock = progress, threading.Lock()
        self.tasks: dict[str, int] = {}  # host -> rich TaskID

    def __call__(self, host: str, done: int, total: int, stage: str) -> None:
        with self.lock:
            if host not in self.tasks:
                self.tasks[host] = self.progress.add_task(host, total=total)
            self.progress.update(self.tasks[host], description=f"{host} {stage}", completed=done, total=total)


def print_results(results, title: str) -> None:
    """Summary table on stdout; each failure's reason on stderr; exit 1 if any host failed."""
    from rich.markup import escape
    from rich.table import Table

    from edgecompress.core.progress import console, out_console

    table = Table(title=title)
    for column in ("device", "result", "release", "previous", "checked by", "seconds", "reason"):
        table.add_column(column)
    for r in results:
        table.add_row(str(r.destination), "[green]ok[/green]" if r.ok else "[red]FAILED[/red]", r.release or "-",
                      r.previous or "-", r.checked_by or "-", f"{r.seconds:.1f}", escape(r.reason))
    out_console.print(table)
    failed = [r for r in results if not r.ok]
    for r in failed:
        console.print(f"[bold red]error:[/bold red] {r.destination}: {escape(r.reason)}", highlight=False, soft_wrap=True)
    if failed:
        raise typer.Exit(1)


@app.command()
def ship(
    bundle_path: Path = typer.Argument(..., metavar="BUNDLE", help="The .tar.gz to install."),
    to: list[str] = TO,
    verify_key: Optional[Path] = typer.Option(None, "--verify-key", envvar="EDGECOMPRESS_TRUSTED_KEY", help="Trusted signing public key (.pub); required unless --trust-on-first-use.", rich_help_panel=TRUST_PANEL, metavar="KEY.pub"),
    allow_unsigned: bool = typer.Option(False, "--allow-unsigned", help="Ship a bundle without a signature.", rich_help_panel=TRUST_PANEL, metavar=""),
    trust_on_first_use: bool = typer.Option(False, "--trust-on-first-use", help="Without --verify-key: each device pins the signer of the first bundle it accepts (known_signers) and refuses others.", rich_help_panel=TRUST_PANEL, metavar=""),
    accept_new_signer: bool = typer.Option(False, "--accept-new-signer", help="Let devices accept and pin a signer other than the one they pinned (a new release key).", rich_help_panel=TRUST_PANEL, metavar=""),
    parallel: int = typer.Option(1, "--parallel", "-j", min=1, metavar="N", help="Devices to ship to at the same time."),
    key: Optional[Path] = SSH_KEY,
    ssh_passphrase: Optional[str] = SSH_PASSPHRASE,
    known_hosts: Optional[Path] = KNOWN_HOSTS,
    accept_new_host_key: bool = ACCEPT_NEW,
    timeout: float = TIMEOUT,
    remote_python: str = REMOTE_PYTHON,
) -> None:
    """Copy a verified bundle to devices over SSH, verify and self-test it there, then switch `current` atomically."""
    from edgecompress.core.progress import progress_bar
    from edgecompress.ship.transport import Destination
    from edgecompress.ship.transport import ship as ship_bundle

    destinations = [Destination.parse(spec) for spec in to]
    options = ssh_options(key, ssh_passphrase, known_hosts, accept_new_host_key, timeout, remote_python)
    with progress_bar() as progress:
        results = ship_bundle(bundle_path, destinations, options, verify_key, allow_unsigned, parallel, HostProgress(progress),
                              trust_on_first_use, accept_new_signer)
    print_results(results, f"ship {bundle_path.name}")


@app.command()
def rollback(
    to: list[str] = TO,
    release: Optional[str] = typer.Option(None, "--release", help="Release id to switch to (default: the previous one)."),
    key: Optional[Path] = SSH_KEY,
    ssh_passphrase: Optional[str] = SSH_PASSPHRASE,
    known_hosts: Optional[Path] = KNOWN_HOSTS,
    accept_new_host_key: bool = ACCEPT_NEW,
    timeout: float = TIMEOUT,
) -> None:
    """Point a device's `current` back at its previous release (atomically)."""
    from edgecompress.ship.transport import Destination
    from edgecompress.ship.transport import rollback as rollback_device

    options = ssh_options(key, ssh_passphrase, known_hosts, accept_new_host_key, timeout)
    print_results([rollback_device(Destination.parse(spec), options, release) for spec in to], "rollback")
