"""The one safe way to open a bundle: `safe_unpack`.

`verify`, `ship` and the device runner all open bundles through this function. A
bundle is untrusted until its manifest checks out, so the archive is never handed to
`tarfile.extract`: each member's name and type is checked (no absolute paths, no `..`,
no links or devices), only files listed in the manifest are accepted, each is streamed
out with its size capped at the manifest's and hashed on the way, and the result lands
in a temporary directory that is moved into place only after everything (and the
caller's own check, e.g. the signature) passes.

Standard library only on purpose: bundles copy this file next to `run.py`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Any, Callable

try:  # inside the package the error is an EdgecompressError; on a device a plain exception
    from edgecompress.core.errors import BundleError
except ImportError:  # pragma: no cover - exercised on devices

    class BundleError(Exception):  # type: ignore[no-redef]
        def __init__(self, problem: str, fix: str = "") -> None:
            super().__init__(problem)
            self.problem, self.fix = problem, fix

        def __str__(self) -> str:
            return f"{self.problem} — {self.fix}" if self.fix else self.problem


MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.sig"
MAX_MANIFEST_BYTES = 4 << 20
MAX_MEMBERS = 10_000
_UNLISTED_ALLOWED = (MANIFEST_NAME, SIGNATURE_NAME)
# what the device makes from a verified bundle (a TensorRT plan from the kit): not in the manifest, and
# never read from an archive (bundles may not contain it), only written by run.py on the device
DEVICE_BUILT_DIR = "device-built"
_REFUSED_FIX = "do not use this bundle; rebuild it with `edgecompress bundle` and ship it again"


def _mismatch(name: str) -> BundleError:
    return BundleError(f"'{name}' does not match its sha256 in the manifest (tampered or corrupt)", _REFUSED_FIX)


def check_member_name(name: str) -> str:
    """The member's normalized relative path, or BundleError when it could escape the tree."""
    if not name or name.startswith("/") or "\\" in name or "\x00" in name:
        raise BundleError(f"bundle entry '{name}' has an absolute or malformed path", _REFUSED_FIX)
    parts = [part for part in PurePosixPath(name).parts if part != "."]
    if not parts or any(part == ".." for part in parts):
        raise BundleError(f"bundle entry '{name}' has a '..' component (path traversal)", _REFUSED_FIX)
    return "/".join(parts)


def _check_member_type(member: tarfile.TarInfo) -> None:
    if member.issym() or member.islnk():
        raise BundleError(
            f"bundle entry '{member.name}' is a link (to '{member.linkname}'); bundles hold only files", _REFUSED_FIX
        )
    if not (member.isfile() or member.isdir()):
        raise BundleError(f"bundle entry '{member.name}' is a device, FIFO or other special file", _REFUSED_FIX)


def _open_archive(archive: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(archive, "r:gz")
    except FileNotFoundError:
        raise BundleError(f"bundle {archive} does not exist", "check the path") from None
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise BundleError(f"{archive} is not a readable bundle ({exc})", "it is truncated or corrupt: copy it again") from None


def _checked_members(tar: tarfile.TarFile) -> dict[str, tarfile.TarInfo]:
    """All file members by normalized name, after name/type/duplicate checks."""
    files: dict[str, tarfile.TarInfo] = {}
    try:
        members = tar.getmembers()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise BundleError(f"bundle is truncated or corrupt ({exc})", "copy it again") from None
    if len(members) > MAX_MEMBERS:
        raise BundleError(f"bundle has {len(members)} entries (limit {MAX_MEMBERS})", _REFUSED_FIX)
    for member in members:
        name = check_member_name(member.name)
        _check_member_type(member)
        if member.isdir():
            continue
        if name in files:
            raise BundleError(f"bundle entry '{name}' appears twice", _REFUSED_FIX)
        files[name] = member
    return files


def _read_manifest(tar: tarfile.TarFile, files: dict[str, tarfile.TarInfo]) -> tuple[bytes, dict[str, Any]]:
    member = files.get(MANIFEST_NAME)
    if member is None:
        raise BundleError("bundle has no manifest.json", "build bundles with `edgecompress bundle`")
    if member.size > MAX_MANIFEST_BYTES:
        raise BundleError(f"manifest.json is {member.size} bytes (limit {MAX_MANIFEST_BYTES})", _REFUSED_FIX)
    raw = tar.extractfile(member).read(MAX_MANIFEST_BYTES + 1)  # type: ignore[union-attr]
    try:
        manifest = json.loads(raw)
        listed = manifest["files"]
        assert isinstance(listed, dict)
    except (ValueError, KeyError, TypeError, AssertionError):
        raise BundleError("manifest.json is not a valid bundle manifest", _REFUSED_FIX) from None
    return raw, manifest


def _check_against_manifest(files: dict[str, tarfile.TarInfo], listed: dict[str, Any]) -> None:
    for name, member in files.items():
        if name in _UNLISTED_ALLOWED:
            continue
        if name.startswith(f"{DEVICE_BUILT_DIR}/"):
            raise BundleError(f"bundle entry '{name}' is in {DEVICE_BUILT_DIR}/, which only the device writes",
                              _REFUSED_FIX)
        if name not in listed:
            raise BundleError(f"bundle entry '{name}' is not listed in the manifest", _REFUSED_FIX)
        if member.size > int(listed[name]["size"]):
            raise BundleError(
                f"bundle entry '{name}' is {member.size} bytes, more than the manifest's {listed[name]['size']}",
                _REFUSED_FIX,
            )
    missing = sorted(set(listed) - set(files))
    if missing:
        raise BundleError(f"bundle is missing files listed in its manifest: {', '.join(missing)}", _REFUSED_FIX)


def _extract_file(tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path, limit: int) -> str:
    """Stream one member to `target` (never following links), capped at `limit` bytes; return its sha256."""
    target.parent.mkdir(parents=True, exist_ok=True)
    digest, written = hashlib.sha256(), 0
    source = tar.extractfile(member)
    assert source is not None
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    mode = 0o755 if member.mode & 0o111 else 0o644
    with os.fdopen(os.open(target, flags, mode), "wb") as sink:
        for chunk in iter(lambda: source.read(1 << 20), b""):
            written += len(chunk)
            if written > limit:
                raise BundleError(f"bundle entry '{member.name}' is larger than the manifest says", _REFUSED_FIX)
            digest.update(chunk)
            sink.write(chunk)
    return digest.hexdigest()


def verify_tree(root: Path, manifest: dict[str, Any]) -> None:
    """Check an unpacked tree: every listed file present with its sha256, and nothing else."""
    listed = manifest["files"]
    present = {
        p.relative_to(root).as_posix() for p in Path(root).rglob("*") if p.is_file() or p.is_symlink()
    }
    extra = sorted(name for name in present - set(listed) - set(_UNLISTED_ALLOWED)
                   if not name.startswith(f"{DEVICE_BUILT_DIR}/"))
    if extra:
        raise BundleError(f"files not listed in the manifest: {', '.join(extra)}", _REFUSED_FIX)
    for name, entry in sorted(listed.items()):
        path = Path(root) / name
        if path.is_symlink() or not path.is_file():
            raise BundleError(f"'{name}' is missing or not a regular file", _REFUSED_FIX)
        if sha256_of(path) != entry["sha256"]:
            raise _mismatch(name)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def safe_unpack(
    archive: Path, dest: Path, check: Callable[[Path, dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """Unpack `archive` into the new directory `dest` only if every check passes; return the manifest.

    `check(tmp_dir, manifest)` runs on the fully unpacked temporary tree before the move
    (verify and ship pass the signature check here). `dest` must not exist yet.
    """
    archive, dest = Path(archive), Path(dest)
    if dest.exists():
        raise BundleError(f"{dest} already exists", "unpack into a new directory")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".unpacking", dir=dest.parent))
    try:
        with _open_archive(archive) as tar:
            manifest = _unpack_checked(tar, tmp)
        if check is not None:
            check(tmp, manifest)
        os.replace(tmp, dest)
        return manifest
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise BundleError(f"bundle {archive} is truncated or corrupt ({exc})", "copy it again") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _unpack_checked(tar: tarfile.TarFile, tmp: Path) -> dict[str, Any]:
    """Check every member against the manifest, then stream each out and compare its sha256."""
    files = _checked_members(tar)
    _raw, manifest = _read_manifest(tar, files)
    listed = manifest["files"]
    _check_against_manifest(files, listed)
    for name, member in sorted(files.items()):
        limit = MAX_MANIFEST_BYTES if name in _UNLISTED_ALLOWED else int(listed[name]["size"])
        digest = _extract_file(tar, member, tmp / name, limit)
        if name in listed and digest != listed[name]["sha256"]:
            raise _mismatch(name)
    return manifest
