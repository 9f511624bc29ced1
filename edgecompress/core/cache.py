"""Stage cache: reuse an artifact only when every input that made it is unchanged.

Each cached file has a sidecar `<file>.key.json` holding the hash of the stage's key
(content hashes of the input model and data plus the stage's options) and the hash of
the file itself, so an edited, truncated or stale artifact is rebuilt, never reused.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

from edgecompress.core.artifacts import sha256_file, sha256_json, write_json_atomic


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".key.json")


def cached_artifact(path: Path, key: dict[str, Any], produce: Callable[[Path], dict[str, Any] | None]) -> tuple[dict[str, Any], bool]:
    """Return (the stage's recorded result, reused?) — running `produce(path)` when the key changed."""
    path = Path(path)
    key_hash = sha256_json(key)
    sidecar = _sidecar(path)
    if path.is_file() and sidecar.is_file():
        try:
            stored = json.loads(sidecar.read_text())
            if stored.get("key") == key_hash and stored.get("file_sha256") == sha256_file(path):
                return stored.get("result") or {}, True
        except (OSError, ValueError):
            pass
    sidecar.unlink(missing_ok=True)
    result = produce(path) or {}
    write_json_atomic(sidecar, {"key": key_hash, "inputs": key, "file_sha256": sha256_file(path), "result": result})
    return result, False


def module_hash(module) -> str:
    """Content hash of a torch module: its class and every parameter/buffer byte."""
    import hashlib

    digest = hashlib.sha256(type(module).__qualname__.encode())
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def cache_dir() -> Path:
    """Where trained teachers, logs and tool caches live: $EDGECOMPRESS_CACHE, else the XDG cache folder."""
    root = os.environ.get("EDGECOMPRESS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "edgecompress"
    )
    return Path(root)
