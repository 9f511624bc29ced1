"""Ed25519 signing of bundle manifests.

The signature covers the manifest's exact bytes; the manifest lists the sha256 of every
other file, so one signature vouches for the whole bundle. The private key is a PKCS#8
PEM file (optionally passphrase-encrypted) created with mode 0600; the public key is an
OpenSSH-style one-line `.pub` file that is easy to copy to devices and CI secrets.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edgecompress.core.artifacts import atomic_path
from edgecompress.core.errors import BundleError, SigningKeyError

ALGORITHM = "ed25519"


@dataclass(frozen=True)
class KeyPair:
    private_path: Path
    public_path: Path
    key_id: str


def key_id(public_key: Ed25519PublicKey) -> str:
    """A short fingerprint (sha256 of the raw key, 16 hex) to name keys in messages."""
    return hashlib.sha256(public_key_bytes(public_key)).hexdigest()[:16]


def generate_keypair(out: Path, passphrase: str | None = None, overwrite: bool = False) -> KeyPair:
    """Write `out` (private, mode 0600) and `out.pub`; refuses to clobber an existing key."""
    out = Path(out)
    public_path = out.with_name(out.name + ".pub")
    if not overwrite and (out.exists() or public_path.exists()):
        raise SigningKeyError(f"{out} or {public_path} already exists", "choose another --out or delete the old key")
    private = Ed25519PrivateKey.generate()
    encryption = (
        serialization.BestAvailableEncryption(passphrase.encode()) if passphrase else serialization.NoEncryption()
    )
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    public_line = private.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    try:
        _write_private(out, pem)
        with atomic_path(public_path) as tmp:
            tmp.write_bytes(public_line + b" edgecompress-signing\n")
    except OSError as exc:
        raise SigningKeyError(f"cannot write the key to {out} ({exc.strerror})", "pick a writable --out path") from None
    return KeyPair(out, public_path, key_id(private.public_key()))


def _write_private(path: Path, data: bytes) -> None:
    """Write via a mkstemp file (mode 0600 from birth) renamed into place: never readable by others.

    Not artifacts.atomic_path: that one gives artifacts ordinary (umask) modes on purpose.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _read_key_file(path: Path, what: str) -> bytes:
    path = Path(path)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise SigningKeyError(f"{what} {path} does not exist", "create one with `edgecompress keygen --out KEY`") from None
    except (PermissionError, IsADirectoryError) as exc:
        raise SigningKeyError(f"{what} {path} cannot be read ({exc.strerror})", "check the path and its permissions") from None


def load_private_key(path: Path, passphrase: str | None = None) -> Ed25519PrivateKey:
    data = _read_key_file(path, "signing key")
    try:
        key = serialization.load_pem_private_key(data, passphrase.encode() if passphrase else None)
    except TypeError:
        if passphrase:
            raise SigningKeyError(f"signing key {path} is not encrypted", "drop the passphrase") from None
        raise SigningKeyError(
            f"signing key {path} is encrypted", "give its passphrase (--passphrase or EDGECOMPRESS_KEY_PASSPHRASE)"
        ) from None
    except ValueError:
        if passphrase and b"ENCRYPTED" in data:
            raise SigningKeyError(f"wrong passphrase for signing key {path}", "give the passphrase it was made with") from None
        raise SigningKeyError(f"{path} is not a PEM private key", "pass the private key made by `edgecompress keygen`") from None
    except UnsupportedAlgorithm:
        raise SigningKeyError(f"{path} is not a supported key", "use an ed25519 key from `edgecompress keygen`") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"{path} is not an ed25519 key", "use a key made by `edgecompress keygen`")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    data = _read_key_file(path, "public key")
    try:
        key = (
            serialization.load_ssh_public_key(data.strip().split(b"\n")[0])
            if data.startswith(b"ssh-")
            else serialization.load_pem_public_key(data)
        )
    except (ValueError, UnsupportedAlgorithm):
        raise SigningKeyError(f"{path} is not a public key", "pass the .pub file written by `edgecompress keygen`") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SigningKeyError(f"{path} is not an ed25519 public key", "pass the .pub file written by `edgecompress keygen`")
    return key


def sign_manifest(manifest_bytes: bytes, private_key: Ed25519PrivateKey) -> dict[str, Any]:
    """The content of `manifest.sig`: algorithm, signer's public key and key id, signature."""
    public = private_key.public_key()
    return {
        "algorithm": ALGORITHM,
        "key_id": key_id(public),
        "public_key": base64.b64encode(
            public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        ).decode(),
        "signature": base64.b64encode(private_key.sign(manifest_bytes)).decode(),
    }


def public_key_bytes(public_key: Ed25519PublicKey) -> bytes:
    """The raw 32 key bytes: what trust is decided on (a short id only names a key in messages)."""
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def verify_manifest_signature(
    manifest_bytes: bytes, signature_doc: dict[str, Any], trusted: Ed25519PublicKey | None
) -> str:
    """Check the signature; with `trusted`, that this very key made it. Returns the signer's key id.

    The whole public key is compared and the signature is checked with the trusted key itself:
    a 64-bit fingerprint can be matched by a forged key, and the key embedded in the bundle
    proves nothing about who made it. Without a trusted key the signature only proves the
    manifest is intact; callers say so to the user.
    """
    try:
        if signature_doc.get("algorithm") != ALGORITHM:
            raise ValueError(f"algorithm {signature_doc.get('algorithm')!r}")
        signer = Ed25519PublicKey.from_public_bytes(base64.b64decode(signature_doc["public_key"]))
        signature = base64.b64decode(signature_doc["signature"])
    except (KeyError, ValueError, TypeError) as exc:
        raise BundleError(f"manifest.sig is malformed ({exc})", "re-sign the bundle with `edgecompress bundle --sign`") from None
    signer_id = key_id(signer)
    if trusted is not None and public_key_bytes(trusted) != public_key_bytes(signer):
        raise BundleError(
            f"bundle is signed by key {signer_id}, not by the trusted key {key_id(trusted)}",
            "ship only bundles signed with your own key, or name the right public key (verify --key, ship --verify-key)",
        )
    try:
        (trusted or signer).verify(signature, manifest_bytes)
    except InvalidSignature:
        raise BundleError(
            "manifest signature is invalid (the manifest was changed after signing)", "rebuild and re-sign the bundle"
        ) from None
    return signer_id


def read_signature_doc(path: Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except ValueError:
        raise BundleError("manifest.sig is not valid JSON", "re-sign the bundle with `edgecompress bundle --sign`") from None
