"""Reference loader for a phone release (`edgecompress release`): what an app does before it runs a model.

A model file is untrusted input until its signature and checksum pass (ExecuTorch's and ONNX Runtime's loaders
have had heap-overflow advisories), so the order is fixed and nothing reaches a runtime before step 3:

1. verify the ed25519 signature over manifest.json with the key the app trusts (pinned in the app, never the one
   the release carries);
2. check the size and sha256 of every file the engine needs, reading each once into memory (what was hashed is
   what gets loaded: no second read of a file that could have changed);
3. check the installed runtime against the engine's [min_version, max_version] (a .pte is guaranteed only on its
   own ExecuTorch minor release and the next), and a version older than the one installed is refused (rollback);
4. load the engine from the verified bytes;
5. run the golden inputs and compare with the golden outputs (tolerance and top-1 from the manifest).

The Kotlin and Swift snippets of docs/how-to/phones.md follow the same steps. Standard library + numpy + the engine's runtime, and
`cryptography` for ed25519 (the platform's own API on a phone: Android Tink/BouncyCastle, iOS CryptoKit).
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
RELEASE_FORMAT = "edgecompress-app-release/1"
INDEX_FORMAT = "edgecompress-app-index/1"


class ReleaseRefused(Exception):
    """The release must not be loaded: `reason` says which check failed, and nothing was loaded."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def version_tuple(version: str) -> tuple[int, ...]:
    """'1.4.1' -> (1, 4, 1); what follows the numbers ('1.5.0a0', '2.13.0+cpu') is ignored."""
    numbers = []
    for part in str(version).split("+")[0].split("."):
        digits = ""
        for char in part:
            if not char.isdigit():
                break
            digits += char
        if not digits:
            break
        numbers.append(int(digits))
        if digits != part:
            break
    return tuple(numbers)


def _within(version: str, minimum: str, maximum: str | None) -> bool:
    """`version` >= minimum and, where a maximum is given, no newer than its major.minor."""
    have = version_tuple(version)
    if have < version_tuple(minimum):
        return False
    return maximum is None or have[:2] <= version_tuple(maximum)[:2]


def read_trusted_key(key: bytes | str | Path) -> bytes:
    """The 32 raw bytes of an ed25519 public key: given raw, or as the `.pub` line `edgecompress keygen` writes."""
    if isinstance(key, bytes) and len(key) == 32:
        return key
    text = Path(key).read_text(encoding="utf-8") if not isinstance(key, bytes) else key.decode()
    fields = text.split()
    if len(fields) < 2 or fields[0] != "ssh-ed25519":
        raise ReleaseRefused("the trusted key is not an ed25519 public key (ssh-ed25519 ...)")
    blob = base64.b64decode(fields[1])
    return blob[-32:]  # the OpenSSH blob ends with the 32 key bytes


def verify_signature(manifest_bytes: bytes, signature_doc: dict[str, Any], trusted_key: bytes) -> None:
    """The manifest was signed by exactly the trusted key: the release's own key proves nothing about its signer."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        signer = base64.b64decode(signature_doc["public_key"])
        signature = base64.b64decode(signature_doc["signature"])
        algorithm = signature_doc.get("algorithm")
    except (KeyError, ValueError, TypeError):
        raise ReleaseRefused("manifest.sig is malformed") from None
    if algorithm != "ed25519":
        raise ReleaseRefused(f"manifest.sig uses {algorithm!r}, not ed25519")
    if signer != trusted_key:
        raise ReleaseRefused(f"the release is signed by another key ({_key_id(signer)}), not the trusted key "
                             f"({_key_id(trusted_key)}): not loaded")
    try:
        Ed25519PublicKey.from_public_bytes(trusted_key).verify(signature, manifest_bytes)
    except InvalidSignature:
        raise ReleaseRefused("the manifest signature is invalid (manifest.json changed after signing): not loaded") from None


def _key_id(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()[:16]


def read_verified(root: Path, manifest: dict[str, Any], names: list[str]) -> dict[str, bytes]:
    """Each named file's bytes, after its size and sha256 match the signed manifest."""
    listed = manifest.get("files", {})
    contents = {}
    for name in names:
        entry = listed.get(name)
        path = root / name
        if entry is None or Path(name).is_absolute() or ".." in Path(name).parts:
            raise ReleaseRefused(f"{name} is not a file the signed manifest lists: not loaded")
        try:
            data = path.read_bytes()
        except OSError:
            raise ReleaseRefused(f"{name} is missing from the release: not loaded") from None
        if len(data) != entry["size"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise ReleaseRefused(f"{name} does not match its sha256 in the signed manifest (changed or corrupt): not loaded")
        contents[name] = data
    return contents


def installed_runtime_version(runtime: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(runtime)
    except importlib.metadata.PackageNotFoundError:
        return None


def check_runtime(engine: dict[str, Any], runtime_version: str | None) -> str:
    """The installed (or given) runtime version, when it is one the engine is guaranteed to run on."""
    runtime = engine["runtime"]
    version = runtime_version or installed_runtime_version(runtime["name"])
    if version is None:
        raise ReleaseRefused(f"{engine['target']} needs the {runtime['name']} runtime, which is not installed")
    if not _within(version, runtime["min_version"], runtime.get("max_version")):
        span = f">= {runtime['min_version']}" + (f" and <= {runtime['max_version']}.x" if runtime.get("max_version") else "")
        older = version_tuple(version) < version_tuple(runtime["min_version"])
        raise ReleaseRefused(f"{runtime['name']} {version} is {'too old' if older else 'too new'} for {engine['target']}: "
                             f"the engine needs {runtime['name']} {span}: not loaded")
    return version


@dataclass
class LoadedModel:
    """A verified engine loaded from verified bytes; `run` takes and gives numpy arrays by the manifest's names."""

    manifest: dict[str, Any]
    engine: dict[str, Any]
    runtime_version: str
    _run: Any = field(repr=False, default=None)

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self._run(feeds)


def _executorch_runner(program_bytes: bytes, inputs: list[str], threads: int) -> Any:
    import torch
    from executorch.runtime import Runtime, Verification

    method = Runtime.get().load_program(program_bytes, verification=Verification.InternalConsistency).load_method("forward")

    def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        outputs = method.execute([torch.from_numpy(np.ascontiguousarray(feeds[name])) for name in inputs])
        return [np.asarray(o.detach().numpy() if hasattr(o, "detach") else o) for o in outputs]

    return run


def _ort_runner(model_bytes: bytes, engine: dict[str, Any]) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    for key, value in engine["runtime"].get("session_config", {}).items():
        options.add_session_config_entry(key, value)
    session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    return lambda feeds: session.run(None, feeds)


def golden_check(model: LoadedModel, root: Path, contents: dict[str, bytes]) -> None:
    """The engine reproduces the workstation's outputs on the golden inputs, within the manifest's tolerance."""
    import io

    golden = model.manifest["golden"]
    feeds = {name: np.load(io.BytesIO(contents[path]), allow_pickle=False) for name, path in golden["inputs"].items()}
    expected = [np.load(io.BytesIO(contents[path]), allow_pickle=False) for path in model.engine["golden"]["outputs"]]
    count = len(next(iter(feeds.values())))
    batch = int(model.engine.get("batch", 1))
    outputs: list[list[np.ndarray]] = [[] for _ in expected]
    for start in range(0, count, batch):
        for index, output in enumerate(model.run({name: a[start:start + batch] for name, a in feeds.items()})):
            outputs[index].append(output)
    tolerance = model.engine["golden"]
    for index, (parts, want) in enumerate(zip(outputs, expected)):
        got = np.concatenate(parts)
        error = float(np.max(np.abs(got.astype(np.float64) - want)))
        if got.shape != want.shape or error > tolerance["atol"]:
            raise ReleaseRefused(f"golden check failed: output {index} differs by {error:.4g} > {tolerance['atol']:.4g}")
        if index == 0 and tolerance.get("top1_must_match") and not np.array_equal(got.argmax(1), want.argmax(1)):
            raise ReleaseRefused("golden check failed: a golden input's top-1 class changed")


def load_release(root: Path, trusted_key: bytes | str | Path, target: str, runtime_version: str | None = None,
                 installed_version: str | None = None, threads: int = 0) -> LoadedModel:
    """Verify, check, load and golden-check one target's engine of the release in `root` (a version folder)."""
    root = Path(root)
    try:
        manifest_bytes = (root / MANIFEST).read_bytes()
        signature_doc = json.loads((root / SIGNATURE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise ReleaseRefused(f"{root} has no readable {MANIFEST} and {SIGNATURE}: not a signed release") from None
    verify_signature(manifest_bytes, signature_doc, read_trusted_key(trusted_key))
    manifest = json.loads(manifest_bytes)
    if manifest.get("format") != RELEASE_FORMAT:
        raise ReleaseRefused(f"unknown release format {manifest.get('format')!r} (this loader reads {RELEASE_FORMAT})")
    version = manifest["model"]["version"]
    if installed_version is not None and version_tuple(version) < version_tuple(installed_version):
        raise ReleaseRefused(f"release {version} is older than the installed {installed_version} (a rollback): not loaded")
    engine = next((e for e in manifest["engines"] if e["target"] == target), None)
    if engine is None:
        raise ReleaseRefused(f"release {version} has no engine for {target} (it has: "
                             f"{', '.join(e['target'] for e in manifest['engines'])})")
    golden_files = [*manifest["golden"]["inputs"].values(), *engine["golden"]["outputs"]]
    contents = read_verified(root, manifest, [*engine["files"], *golden_files])
    runtime = check_runtime(engine, runtime_version)
    data = contents[engine["path"]]
    if engine["kind"] == "executorch":
        run = _executorch_runner(data, [spec["name"] for spec in manifest["inputs"]], threads)
    elif engine["kind"] in ("ort-arm", "ort-cpu"):
        run = _ort_runner(data, engine)
    else:
        raise ReleaseRefused(f"this loader cannot run engine kind {engine['kind']!r}")
    model = LoadedModel(manifest, engine, runtime, run)
    golden_check(model, root, contents)
    return model


def latest_version(index_path: Path) -> dict[str, Any]:
    """index.json's latest entry (`version` added): what an app that polls for updates downloads next."""
    index = json.loads(Path(index_path).read_text(encoding="utf-8"))
    if index.get("format") != INDEX_FORMAT:
        raise ReleaseRefused(f"unknown index format {index.get('format')!r}")
    return {"version": index["latest"], **index["versions"][index["latest"]]}
