#!/usr/bin/env python3
"""Run an edgecompress bundle on the device it was built for.

    python3 run.py --verify                 # device and files match the manifest?
    python3 run.py --selftest               # bundled samples give the stored outputs?
    python3 run.py --build-engine           # TensorRT kit -> engine.plan on this device
    python3 run.py photo.jpg [x.npy ...]    # top-k and latency

Needs only numpy and onnxruntime (Pillow for images); an OpenVINO bundle needs openvino instead of onnxruntime
(the manifest's runtime.openvino says which release built it). A TensorRT bundle needs JetPack's
TensorRT instead: `--build-engine` turns its on-device kit into a plan with `trtexec` (or the
TensorRT Python API), and the plan runs through the Python API (with cuda-python) or through
`trtexec --loadEngine`. Before running anything it checks the device against the manifest
(CPU arch, GPU, runtime versions, the engine's operators load) and every file's sha256, because an engine that
does not match its device fails in confusing ways or, worse, gives quietly wrong numbers.
Preprocessing is the bundle's `preprocess.py`: the same code that calibrated and
evaluated the engine on the workstation.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
IN_BUNDLE = (HERE / "unpack.py").is_file()
if IN_BUNDLE:  # inside a bundle: the copied siblings
    sys.dont_write_bytecode = True  # a __pycache__ would be a file the manifest does not list
    sys.path.insert(0, str(HERE))
    from unpack import DEVICE_BUILT_DIR, BundleError, safe_unpack, verify_tree  # type: ignore[import-not-found]
else:  # inside the edgecompress package (the workstation computes expected outputs with this file)
    from edgecompress.device.unpack import DEVICE_BUILT_DIR, BundleError, safe_unpack, verify_tree

ARCH_ALIASES = {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64", "armv8": "aarch64"}
ORT_KINDS = ("ort-cpu", "ort-arm")
TENSORRT = "tensorrt"
OPENVINO = "openvino"  # an OpenVINO IR (engine.xml + engine.bin), compiled for this CPU when the engine loads
CPU_KINDS = (*ORT_KINDS, OPENVINO)  # engines that load and run on the CPU with a Python runtime
DEVICE_PLAN = f"{DEVICE_BUILT_DIR}/engine.plan"
INSTALL_TENSORRT = ("install JetPack's TensorRT (trtexec in /usr/src/tensorrt/bin, or the tensorrt Python module "
                    "with cuda-python) on the device with the NVIDIA GPU the bundle is for, then ship again")


def normalize_arch(machine: str) -> str:
    machine = machine.strip().lower()
    return ARCH_ALIASES.get(machine, machine)


def version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split("+")[0].split("-")[0].split("."):  # openvino's: 2026.4.1-22982-<commit>-releases/...
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def load_manifest(root: Path) -> dict[str, Any]:
    try:
        return json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"no manifest.json in {root}", "run this from an unpacked bundle") from None


def device_problems(manifest: dict[str, Any], machine: str | None = None) -> list[str]:
    """Why this device cannot run the engine (empty when it can): arch, runtime, versions."""
    runtime = manifest["runtime"]
    problems = []
    here = normalize_arch(machine or platform.machine())
    if normalize_arch(runtime["arch"]) != here:
        problems.append(f"bundle is for {runtime['arch']} but this device is {here}")
    kind = manifest["engine"]["kind"]
    if kind == TENSORRT:
        return problems + tensorrt_problems(runtime)
    module = "openvino" if kind == OPENVINO else "onnxruntime"
    try:
        installed = __import__(module).__version__
    except ImportError:  # also when numpy, which onnxruntime needs, is missing
        return problems + [f"{module} is not installed (the engine needs {module} >= {_required_version(runtime, module)})"]
    needed = _required_version(runtime, module)
    if needed and version_tuple(installed) < version_tuple(needed):
        problems.append(f"{module} {installed} is older than the {needed} this engine needs")
    return problems


def tensorrt_helpers() -> Any:
    """The TensorRT helpers: the bundle's `trt_device.py`, a verbatim copy of edgecompress/device/trt_device.py."""
    if IN_BUNDLE:
        try:
            import trt_device  # type: ignore[import-not-found]
        except ImportError:
            raise BundleError("this bundle has no trt_device.py", "rebuild it with `edgecompress bundle`") from None
        return trt_device
    from edgecompress.device import trt_device

    return trt_device


def tensorrt_problems(runtime: dict[str, Any]) -> list[str]:
    """A TensorRT engine needs an NVIDIA GPU and TensorRT: the Python module, or at least trtexec."""
    device, problems = tensorrt_helpers(), []
    if device.gpu_info()["gpu"] == "unknown":
        problems.append("no NVIDIA GPU is visible (asked cuda-python, then looked for "
                        f"{', '.join(device.GPU_DEVICE_NODES)})")
    try:
        installed = __import__("tensorrt").__version__
    except ImportError:
        installed = None
    if installed is None and device.find_trtexec() is None:
        problems.append("TensorRT is not installed: no `tensorrt` Python module and no trtexec "
                        f"(looked in PATH and {', '.join(device.TRTEXEC_PLACES)})")
    needed, section = _required_version(runtime, TENSORRT), runtime.get(TENSORRT, {})
    if installed and needed and version_tuple(installed) < version_tuple(needed):
        problems.append(f"tensorrt {installed} is older than the {needed} this engine needs")
    if installed and section.get("exact_version") and version_tuple(installed)[:3] != version_tuple(section["version"])[:3]:
        problems.append(f"TensorRT plan built with {section['version']}, device has {installed}: "
                        "plans only load on the same version")
    return problems


def _required_version(runtime: dict[str, Any], module: str) -> str:
    section = runtime.get(module, {})
    return str(section.get("min_version") or section.get("version") or "")


class Engine:
    """The bundle's engine behind one `run(feeds) -> outputs` call."""

    def __init__(self, root: Path, manifest: dict[str, Any]) -> None:
        kind = manifest["engine"]["kind"]
        self.input_names = [spec["name"] for spec in manifest.get("inputs", [])]
        self.session: Any = None  # onnxruntime's, for ORT engines
        if kind == TENSORRT:
            self._plan = tensorrt_runner(root, manifest)
            return
        if kind == OPENVINO:
            self._compiled = openvino_model(root, manifest)
            self._request = self._compiled.create_infer_request()
            self.input_names = [port.get_any_name() for port in self._compiled.inputs]
            return
        if kind not in ORT_KINDS:
            raise BundleError(f"run.py cannot execute '{kind}' engines", "ship a bundle built by this edgecompress")
        import onnxruntime as ort

        runtime = manifest["runtime"]
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(runtime.get("threads") or 0)
        for key, value in (runtime.get("session_config") or {}).items():  # e.g. apply saved runtime optimizations
            options.add_session_config_entry(key, value)
        available = ort.get_available_providers()
        providers = [p for p in runtime.get("providers", ["CPUExecutionProvider"]) if p in available]
        try:
            self.session = ort.InferenceSession(
                str(root / manifest["engine"]["path"]), options, providers=providers or ["CPUExecutionProvider"]
            )
        except Exception as exc:  # ORT raises its own types; a missing op is NOT_IMPLEMENTED
            ops = ", ".join(runtime.get("required_operators", [])) or "see manifest"
            raise BundleError(
                f"onnxruntime {ort.__version__} cannot load the engine: {str(exc).splitlines()[0]}",
                f"install an onnxruntime build with these operators: {ops}",
            ) from None
        self.input_names = [i.name for i in self.session.get_inputs()]

    def run(self, feeds: dict[str, Any]) -> list[Any]:
        if self.session is not None:
            return self.session.run(None, feeds)
        if hasattr(self, "_compiled"):
            result = self._request.infer(feeds)
            return [result[port].copy() for port in self._compiled.outputs]
        try:
            return self._plan.run(feeds)
        except RuntimeError as exc:  # CUDA and trtexec failures
            raise BundleError(f"the TensorRT engine failed to run: {exc}", INSTALL_TENSORRT) from None


def openvino_model(root: Path, manifest: dict[str, Any]) -> Any:
    """The bundle's OpenVINO IR compiled for this CPU with the compile settings it was measured with."""
    import openvino as ov

    settings = manifest["runtime"].get(OPENVINO, {})
    try:
        return ov.Core().compile_model(str(root / manifest["engine"]["path"]), "CPU", dict(settings.get("compile_config") or {}))
    except Exception as exc:  # OpenVINO raises RuntimeError subclasses of its own
        raise BundleError(f"openvino {ov.__version__} cannot compile the engine: {str(exc).splitlines()[0]}",
                          f"install openvino >= {settings.get('min_version') or settings.get('built_with')}") from None


def plan_path(root: Path, manifest: dict[str, Any]) -> Path:
    """A plan built on a GPU host ships in the bundle; one built here from the kit lives in device-built/."""
    shipped = manifest["engine"].get("path")
    return root / (shipped or DEVICE_PLAN)


def tensorrt_runner(root: Path, manifest: dict[str, Any]) -> Any:
    """The TensorRT Python API where it and cuda-python are installed, else `trtexec --loadEngine`."""
    plan = plan_path(root, manifest)
    if not plan.is_file():
        raise BundleError(f"no TensorRT engine at {plan}: it is built on the device from the bundle's kit",
                          "run `python3 run.py --build-engine` first (`edgecompress ship` does)")
    device = tensorrt_helpers()
    try:
        import tensorrt  # noqa: F401 - probing only

        python_api = device.cuda_runtime() is not None
    except ImportError:
        python_api = False
    try:
        if python_api:
            return device.PlanRunner(plan)
    except RuntimeError as exc:
        raise BundleError(str(exc), "rebuild the engine on this device: python3 run.py --build-engine") from None
    trtexec = device.find_trtexec()
    if trtexec is None:
        raise BundleError("cannot run the TensorRT engine here: no `tensorrt` Python module with cuda-python, "
                          "and no trtexec", INSTALL_TENSORRT)
    return device.TrtexecRunner(plan, trtexec, [spec["name"] for spec in manifest["outputs"]])


def timing_cache_path() -> Path:
    """Kept outside the release, so the next release's build reuses this GPU's timings."""
    base = os.environ.get("EDGECOMPRESS_CACHE") or Path.home() / ".cache" / "edgecompress"
    return Path(base) / "tensorrt" / "timing.cache"


def plan_build_command(root: Path, settings: dict[str, Any], trtexec: str, timing_cache: Path) -> list[str]:
    """The `trtexec` line that turns the bundle's kit into `device-built/engine.plan` (the kit's own line)."""
    settings = {**settings, "timing_cache": str(timing_cache) if settings.get("timing_cache") else None}
    return tensorrt_helpers().trtexec_command(str(root / "engine" / "model.int8.onnx"), str(root / DEVICE_PLAN), settings,
                                        trtexec)


def kit_fingerprint(manifest: dict[str, Any]) -> dict[str, str]:
    """sha256 of every kit file: a plan is reused only if it was built from exactly this kit."""
    return {name: entry["sha256"] for name, entry in sorted(manifest["files"].items()) if name.startswith("engine/")}


def build_engine(root: Path, timing_cache: Path | None = None) -> str:
    """Turn the bundle's on-device kit into a plan here: trtexec where installed, else the TensorRT Python API."""
    manifest = load_manifest(root)
    if manifest["engine"]["kind"] != TENSORRT or manifest["engine"].get("path"):
        return "engine ships ready to run: nothing to build"
    problems = tensorrt_problems(manifest["runtime"])
    if problems:
        raise BundleError("cannot build the TensorRT engine on this device: " + "; ".join(problems), INSTALL_TENSORRT)
    plan, record = root / DEVICE_PLAN, root / DEVICE_BUILT_DIR / "plan.json"
    fingerprint = kit_fingerprint(manifest)
    if plan.is_file() and record.is_file() and json.loads(record.read_text())["kit"] == fingerprint:
        return f"{DEVICE_PLAN} is already built from this kit"
    settings = json.loads((root / "engine" / "build_settings.json").read_text(encoding="utf-8"))
    timing_cache = timing_cache or timing_cache_path()
    timing_cache.parent.mkdir(parents=True, exist_ok=True)
    plan.parent.mkdir(exist_ok=True)
    device, trtexec = tensorrt_helpers(), tensorrt_helpers().find_trtexec()
    if trtexec is not None:
        command = plan_build_command(root, settings, trtexec, timing_cache)
        done = subprocess.run(command, stdout=sys.stderr, stderr=subprocess.STDOUT)  # progress keeps SSH alive
        if done.returncode != 0 or not plan.is_file():
            raise BundleError(f"trtexec could not build the engine (exit status {done.returncode})",
                              "see the trtexec log above; check the preflight warnings in engine/preflight.json")
        how = shlex.join(command)
    else:
        try:
            device.build_plan(root / "engine" / "model.int8.onnx", plan, {**settings, "timing_cache": str(timing_cache)})
        except RuntimeError as exc:
            raise BundleError(str(exc), "check the preflight warnings in engine/preflight.json") from None
        how = "the TensorRT Python API (trtexec not found)"
    record.write_text(json.dumps({"kit": fingerprint, "built_with": how, "timing_cache": str(timing_cache)}, indent=2))
    return f"built {DEVICE_PLAN} on this device with {how}"


def verify(root: Path, public_key: Path | None = None, known_signers: Path | None = None,
           accept_new_signer: bool = False, allow_unsigned: bool = False) -> list[str]:
    """Checksums, signature (when `cryptography` is present), device checks, then the pinned signer; returns notes."""
    manifest = load_manifest(root)
    verify_tree(root, manifest)
    notes = [f"{len(manifest['files'])} files match their sha256"]
    notes.append(_signature_note(root, public_key))
    problems = device_problems(manifest)
    if problems:
        raise BundleError("device does not match the bundle: " + "; ".join(problems),
            "install the runtime it names, or ship a bundle built for this device",
        )
    if manifest["engine"]["kind"] in CPU_KINDS:
        Engine(root, manifest)
        notes.append("engine loads (all required operators available)")
    elif plan_path(root, manifest).is_file():
        Engine(root, manifest)
        notes.append("TensorRT engine loads on this GPU")
    known_signers = known_signers or default_known_signers(root)
    if known_signers is not None:
        notes.append(check_known_signer(known_signers, _signature_doc(root), accept_new_signer, allow_unsigned))
    return notes


KNOWN_SIGNERS_NAME = "known_signers"


def default_known_signers(root: Path) -> Path | None:
    """`<base>/known_signers` for a bundle installed as `<base>/releases/<sha>` (how `ship` installs), else None."""
    root = Path(root).resolve()
    return root.parent.parent / KNOWN_SIGNERS_NAME if root.parent.name == "releases" else None


def _signature_doc(root: Path) -> dict[str, Any] | None:
    path = root / "manifest.sig"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def signer_id(raw_key: bytes) -> str:
    """The same short id `edgecompress keygen` prints (sha256 of the raw key, 16 hex), for messages only."""
    return hashlib.sha256(raw_key).hexdigest()[:16]


def read_known_signers(path: Path) -> list[bytes]:
    """The raw public keys pinned in `path` (lines `ed25519 <base64 key> <id> <date>`; `#` comments)."""
    if not path.is_file():
        return []
    keys = []
    for line in path.read_text(encoding="utf-8").splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "ed25519":
            keys.append(base64.b64decode(fields[1]))
    return keys


def pin_signer(path: Path, raw_key: bytes) -> None:
    """Append one key to the known-signers file, replacing the file atomically."""
    from datetime import datetime, timezone

    existing = path.read_text(encoding="utf-8") if path.is_file() else (
        "# bundle signers this device accepts (edgecompress); the first one was pinned on first use\n")
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    line = f"ed25519 {base64.b64encode(raw_key).decode()} {signer_id(raw_key)} {stamp}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(existing + line, encoding="utf-8")
    os.replace(tmp, path)


def check_known_signer(path: Path, signature_doc: dict[str, Any] | None, accept_new_signer: bool,
                       allow_unsigned: bool) -> str:
    """SSH's known_hosts for bundle signers: the first signer this device accepts is pinned, another is refused.

    Without it, anyone who can produce a self-signed bundle could replace a device's engine;
    with it, a device trusts one release key from its first install on, whoever ships.
    """
    pinned = read_known_signers(path)
    names = ", ".join(signer_id(key) for key in pinned)
    if signature_doc is None:
        if pinned and not allow_unsigned:
            raise BundleError(f"bundle is UNSIGNED but this device accepts only bundles signed by {names} ({path})",
                              "ship a bundle signed with that key, or pass --allow-unsigned")
        return f"unsigned bundle: known signers in {path} not consulted"
    raw = base64.b64decode(signature_doc["public_key"])
    if raw in pinned:
        return f"signer {signer_id(raw)} is pinned in {path}"
    if pinned and not accept_new_signer:
        raise BundleError(
            f"bundle is signed by key {signer_id(raw)}, but this device accepts only {names} (pinned in {path})",
            "ship a bundle signed with the pinned key; if the release key really changed, pass --accept-new-signer "
            "(ship --accept-new-signer) to add the new one",
        )
    pin_signer(path, raw)
    how = "accepted as a new signer (--accept-new-signer)" if pinned else "pinned on first use"
    return f"signer {signer_id(raw)} {how} in {path}"


def _signature_note(root: Path, public_key: Path | None) -> str:
    doc = _signature_doc(root)
    if doc is None:
        return "bundle is UNSIGNED"
    try:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
        from cryptography.hazmat.primitives.serialization import load_ssh_public_key
    except ImportError:
        return "signature not checked here (no `cryptography`); it was checked before shipping"
    raw = base64.b64decode(doc["public_key"])
    signer = Ed25519PublicKey.from_public_bytes(raw)
    if public_key is not None:  # whole keys compared, and the trusted key itself checks the signature
        trusted = load_ssh_public_key(public_key.read_bytes().split(b"\n")[0])
        if not isinstance(trusted, Ed25519PublicKey) or trusted.public_bytes_raw() != raw:  # an RSA key is another key
            raise BundleError(f"bundle is signed by key {signer_id(raw)}, not by {public_key}", "ship a bundle you signed")
        signer = trusted
    try:
        signer.verify(base64.b64decode(doc["signature"]), (root / "manifest.json").read_bytes())
    except Exception:
        raise BundleError("manifest signature is invalid (manifest changed after signing)", "ship the bundle again") from None
    return f"signature valid (key {signer_id(raw)}{', trusted' if public_key else ''})"


def load_samples(root: Path, manifest: dict[str, Any]) -> tuple[dict[str, Any], list[Any]]:
    import numpy as np

    selftest = manifest["selftest"]
    feeds = {name: np.load(root / path) for name, path in selftest["inputs"].items()}
    expected = [np.load(root / path) for path in selftest["expected"]]
    return feeds, expected


def selftest(root: Path) -> str:
    """Run the bundled sample inputs and compare with the stored outputs within the stated tolerance."""
    import numpy as np

    manifest = load_manifest(root)
    feeds, expected = load_samples(root, manifest)
    outputs = Engine(root, manifest).run(feeds)
    atol = float(manifest["selftest"]["atol"])
    worst = max(float(np.max(np.abs(np.asarray(o, np.float64) - e))) for o, e in zip(outputs, expected))
    flipped = 0
    if manifest["selftest"].get("top1_must_match"):
        flipped = int(np.sum(np.argmax(outputs[0], axis=1) != np.argmax(expected[0], axis=1)))
    if worst > atol or flipped:
        raise BundleError(
            f"self-test FAILED: outputs differ from the workstation's by {worst:.3g} (tolerance {atol:.3g}), "
            f"{flipped} top-1 changes",
            "this device's runtime computes different results; rebuild for this device",
        )
    count = len(next(iter(feeds.values())))
    return f"self-test passed: {count} samples, max abs diff {worst:.3g} <= {atol:.3g}, top-1 unchanged"


def load_input(path: Path, manifest: dict[str, Any]) -> Any:
    """An image (decoded with the stored preprocessing) or a .npy (model-ready, or raw NHWC pixels)."""
    import numpy as np

    try:  # numpy-dependent, so imported only when inputs are classified (--verify needs the stdlib only)
        from preprocess import PreprocessSpec  # type: ignore[import-not-found]
    except ImportError:
        from edgecompress.device.preprocess import PreprocessSpec

    spec = PreprocessSpec.from_dict(manifest["preprocess"]) if manifest.get("preprocess") else None
    rank = len(manifest["inputs"][0]["shape"])
    if path.suffix == ".npy":
        array = np.load(path)
        if array.ndim == rank - 1:
            array = array[None]
        if spec is not None and array.ndim == rank and array.shape[-1] == spec.channels and spec.layout == "NCHW":
            array = spec.normalize(array)  # raw NHWC pixels -> model layout
        return array.astype(manifest["inputs"][0]["dtype"])
    if spec is None:
        raise BundleError(f"{path} is an image but the bundle has no preprocessing spec", "pass a model-ready .npy")
    from PIL import Image

    with Image.open(path) as image:
        return spec.images_to_batch([image])


def predict(root: Path, paths: list[Path], top_k: int, runs: int) -> list[str]:
    import numpy as np

    manifest = load_manifest(root)
    engine = Engine(root, manifest)
    labels = manifest.get("labels") or []
    lines = []
    for path in paths:
        feeds = {engine.input_names[0]: load_input(path, manifest)}
        engine.run(feeds)  # warm-up
        timings = []
        for _ in range(max(1, runs)):
            start = time.perf_counter()
            scores = engine.run(feeds)[0]
            timings.append((time.perf_counter() - start) * 1000)
        row = np.asarray(scores, np.float64).reshape(len(next(iter(feeds.values()))), -1)[0]
        best = np.argsort(-row)[:top_k]
        ranked = ", ".join(f"{labels[i] if i < len(labels) else i}={row[i]:.3f}" for i in best)
        lines.append(f"{path.name}: top-{top_k} [{ranked}]  latency p50 {float(np.median(timings)):.2f} ms")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run an edgecompress bundle on this device.")
    parser.add_argument("inputs", nargs="*", type=Path, help="images or .npy files to classify")
    parser.add_argument("--verify", action="store_true", help="check files, signature and device against the manifest")
    parser.add_argument("--build-engine", action="store_true",
                        help="TensorRT bundles: build the engine from the bundle's kit on this device (after --verify)")
    parser.add_argument("--selftest", action="store_true", help="run bundled samples and compare with stored outputs")
    parser.add_argument("--key", type=Path, help="trusted signing public key (.pub) for --verify")
    parser.add_argument("--known-signers", type=Path, help="file of pinned signer keys for --verify "
                        "(default: known_signers beside releases/ when installed by `edgecompress ship`)")
    parser.add_argument("--accept-new-signer", action="store_true",
                        help="accept and pin a signer other than the pinned one(s)")
    parser.add_argument("--allow-unsigned", action="store_true", help="accept an unsigned bundle where signers are pinned")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--runs", type=int, default=10, help="timed runs per input")
    parser.add_argument("--root", type=Path, default=HERE, help="unpacked bundle directory (default: beside run.py)")
    parser.add_argument("--unpack", nargs=2, metavar=("BUNDLE", "DEST"), help="safely unpack another bundle archive")
    args = parser.parse_args(argv)
    try:
        if args.unpack:
            manifest = safe_unpack(Path(args.unpack[0]), Path(args.unpack[1]))
            print(f"unpacked {manifest['model']['name']} ({manifest['target']['name']}) into {args.unpack[1]}")
        if args.verify:
            for note in verify(args.root, args.key, args.known_signers, args.accept_new_signer, args.allow_unsigned):
                print(f"verify: {note}")
        if args.build_engine:
            print(build_engine(args.root))
        if args.selftest:
            print(selftest(args.root))
        for line in predict(args.root, args.inputs, args.top_k, args.runs) if args.inputs else []:
            print(line)
        if not (args.unpack or args.verify or args.build_engine or args.selftest or args.inputs):
            parser.print_help()
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
