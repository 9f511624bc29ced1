"""`edgecompress verify`: a bundle is intact, signed by the trusted key, and safe to unpack.

Verification is the safe unpack with the signature check plugged in before the move,
so `verify`, `ship` and `--extract` cannot disagree about what a good bundle is.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgecompress.core.artifacts import sha256_file
from edgecompress.core.errors import BundleError
from edgecompress.ship.signing import load_public_key, read_signature_doc, verify_manifest_signature
from edgecompress.device.unpack import MANIFEST_NAME, SIGNATURE_NAME, safe_unpack


@dataclass(frozen=True)
class VerifiedBundle:
    """A bundle that passed: its sha256 names the release; `signer` is None when unsigned."""

    archive: Path
    sha256: str
    manifest: dict[str, Any]
    signer: str | None
    trusted_key: bool
    root: Path | None  # the unpacked tree when extracted

    @property
    def release(self) -> str:
        return self.sha256[:16]

    def describe(self) -> str:
        if self.signer is None:
            how = "UNSIGNED (accepted because --allow-unsigned was given)"
        elif self.trusted_key:
            how = f"signed by the trusted key {self.signer}"
        else:
            how = (f"integrity only, signer not trusted: the signature by key {self.signer} is intact, but nothing "
                   "says who made that key (name your .pub with verify --key / ship --verify-key)")
        files = len(self.manifest["files"])
        return f"{self.archive.name}: {files} files match their sha256; {how}"


def verify_bundle(
    archive: Path, key: Path | None = None, allow_unsigned: bool = False, extract_to: Path | None = None
) -> VerifiedBundle:
    """Check every entry, checksum and the signature; with `extract_to`, leave the tree there."""
    archive = Path(archive)
    trusted = load_public_key(key) if key is not None else None
    signer: list[str | None] = [None]

    def check_signature(tree: Path, _manifest: dict[str, Any]) -> None:
        if not (tree / SIGNATURE_NAME).is_file():
            if not allow_unsigned:
                raise BundleError(f"{archive.name} is not signed", "sign it with `bundle --sign KEY`, or pass --allow-unsigned")
            return
        signer[0] = verify_manifest_signature(
            (tree / MANIFEST_NAME).read_bytes(), read_signature_doc(tree / SIGNATURE_NAME), trusted
        )

    if extract_to is not None:
        manifest = safe_unpack(archive, extract_to, check_signature)
    else:
        with tempfile.TemporaryDirectory(prefix="ec-verify-") as tmp:
            manifest = safe_unpack(archive, Path(tmp) / "bundle", check_signature)
    return VerifiedBundle(archive, sha256_file(archive), manifest, signer[0], trusted is not None, extract_to)
