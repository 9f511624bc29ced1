"""Bundle: the unit that leaves the workstation (build target folder -> signed .tar.gz).

A bundle carries the engine, a manifest that is the contract with the device (files and
sha256, the whole target profile, runtime requirements, preprocessing, the report's
figures), a minimal runner, sample inputs with the outputs the workstation computed,
and a README. The archive is reproducible — sorted entries, fixed mtimes, owners and
modes, gzip mtime 0 — so the same build gives the same bytes and the bundle's sha256 can
name the release on the device.
"""

from __future__ import annotations

import gzip
import json
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgecompress import __version__
from edgecompress.pipeline.report_types import BuildReport, load_report
from edgecompress.core.artifacts import atomic_path, sha256_file
from edgecompress.core.errors import BundleError, TargetError
from edgecompress.core.targets import TargetProfile, load_profile
from edgecompress.device.unpack import MANIFEST_NAME, SIGNATURE_NAME

BUNDLE_FORMAT = "edgecompress-bundle/1"
_DEVICE = Path(__file__).resolve().parent.parent / "device"
RUNNER_FILES = {  # bundle name -> source; preprocess.py and unpack.py are copied, not re-implemented
    "run.py": _DEVICE / "run.py",
    "preprocess.py": _DEVICE / "preprocess.py",
    "unpack.py": _DEVICE / "unpack.py",
}
# TensorRT bundles also carry the device-side TensorRT code (GPU probe, plan build, plan runners)
TENSORRT_RUNNER_FILES = {"trt_device.py": _DEVICE / "trt_device.py"}
ORT_KINDS = ("ort-cpu", "ort-arm")
CPU_KINDS = (*ORT_KINDS, "openvino")  # engines this host runs for the self-test's expected outputs
_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
              "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(uint8)": "uint8", "tensor(int8)": "int8"}
FIGURE_KEYS = ("accuracy", "agreement", "fidelity", "latency_ms", "throughput_per_s", "memory", "speedup_vs_fp32", "measured_on")


@dataclass(frozen=True)
class BundleOptions:
    """What goes in besides the engine; `sign_key` is an ed25519 private key from `keygen`."""

    include_reference: bool = False
    sign_key: Path | None = None
    passphrase: str | None = None
    samples: int = 4
    selftest_atol: float | None = None  # None: derived from the expected outputs' scale


@dataclass(frozen=True)
class BundleArtifact:
    """A written bundle; its sha256 names the release on the device, `signed_by` the signing key's id (None: unsigned)."""

    path: Path
    sha256: str
    size_bytes: int
    engine_size_bytes: int
    signed_by: str | None
    manifest: dict[str, Any]


def resolve_profile(report: BuildReport) -> TargetProfile:
    """The whole profile the engine was built for: stored in the report, else loaded by name."""
    if report.profile:
        return TargetProfile.model_validate(report.profile)
    try:
        return load_profile(report.target)
    except TargetError as exc:
        raise BundleError(f"report names target '{report.target}': {exc.problem}", exc.fix) from None


def _resolve(target_dir: Path, name: str | None) -> Path | None:
    if not name:
        return None
    path = Path(name)
    for candidate in (path, target_dir / path, target_dir / path.name):
        if candidate.is_file():
            return candidate
    raise BundleError(f"report names '{name}' but no such file exists", "rebuild the target with `edgecompress build`")


def engine_files(report: BuildReport, target_dir: Path) -> tuple[Path | None, list[Path]]:
    """(the engine file or None for an on-device build kit, every engine-side file to ship)."""
    main = _resolve(target_dir, report.engine.path)
    extra = [_resolve(target_dir, name) for name in report.engine.files]
    files = sorted({p.resolve() for p in [main, *extra] if p is not None})
    if not files:
        raise BundleError("report lists no engine file or build kit", "rebuild the target with `edgecompress build`")
    return (main.resolve() if main else None), files


def reference_file(report: BuildReport, target_dir: Path) -> Path | None:
    if report.reference.path:
        return _resolve(target_dir, report.reference.path)
    for candidate in (target_dir.parent / "model.fp32.onnx", target_dir / "model.fp32.onnx"):
        if candidate.is_file():
            return candidate
    return None


def tensor_specs(model_path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Input and output names, shapes (None when dynamic) and dtypes, as ONNX Runtime sees them."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])

    def spec(arg: Any) -> dict[str, Any]:
        shape = [d if isinstance(d, int) else None for d in arg.shape]
        return {"name": arg.name, "shape": shape, "dtype": _ORT_TYPES.get(arg.type, arg.type)}

    return [spec(a) for a in session.get_inputs()], [spec(a) for a in session.get_outputs()]


def required_operators(engine_paths: list[Path]) -> list[str]:
    """`domain:Op@opset` the runtime must implement: from an ORT required-operators config (the ARM builder's
    parser, so type-reduced configs read right), else from the ONNX graph."""
    from edgecompress.engines.arm import required_operators as config_operators

    ops = {op for path in engine_paths if path.suffix == ".config" for op in config_operators(path)}
    if ops:
        return sorted(ops)
    import onnx

    for path in engine_paths:
        if path.suffix == ".onnx":
            model = onnx.load(str(path), load_external_data=False)
            opsets = {entry.domain or "ai.onnx": entry.version for entry in model.opset_import}
            for node in model.graph.node:
                domain = node.domain or "ai.onnx"
                ops.add(f"{domain}:{node.op_type}@{opsets.get(domain, '?')}")
    return sorted(ops)


def runtime_requirements(
    profile: TargetProfile, report: BuildReport, ops: list[str]
) -> dict[str, Any]:
    """What the device must have; the runner checks each of these before running.

    Facts come from the engine builder's metadata when it recorded them (the ARM builder's
    operator list and converter version, the TensorRT builder's version and GPU), else from
    the profile and this machine.
    """
    meta = report.engine.metadata
    runtime: dict[str, Any] = {
        "arch": profile.arch,
        "threads": profile.threads,
        "providers": list(profile.options.get("providers", ["CPUExecutionProvider"])),
        "required_operators": list(meta.get("required_operators") or ops),
    }
    if report.engine.kind == "openvino":
        import openvino

        built = str(meta.get("openvino") or openvino.__version__).split("-")[0]
        runtime["openvino"] = {"built_with": built, "min_version": ".".join(built.split(".")[:2]),
                               "compile_config": dict(meta.get("compile_config") or {})}
    elif report.engine.kind in ORT_KINDS:  # the shipped engine's kind: a profile may time several and ship the fastest
        import onnxruntime

        built = str(meta.get("converted_with_onnxruntime") or meta.get("onnxruntime")
                    or report.versions.get("onnxruntime") or onnxruntime.__version__)
        minimum = profile.options.get("onnxruntime_min") or ".".join(built.split(".")[:2])
        runtime["onnxruntime"] = {"built_with": built, "min_version": str(minimum)}
        if meta.get("session_config"):  # an ARM .ort with saved runtime optimizations needs them applied
            runtime["session_config"] = dict(meta["session_config"])
    else:
        plan = report.engine.path is not None
        runtime["tensorrt"] = {
            "version": meta.get("tensorrt_version"),
            "min_version": None if plan else str(profile.options.get("tensorrt_major", "")),
            "exact_version": plan,  # a plan loads only on the TensorRT version and GPU it was built with
            "compute_capability": meta.get("compute_capability"),
            "gpu_name": meta.get("gpu"),
            "build_on_device": not plan,  # `run.py --build-engine` turns the kit into a plan there
            "needs": "an NVIDIA GPU; trtexec (JetPack: /usr/src/tensorrt/bin) or the tensorrt Python module, "
                     "with cuda-python to run the plan through Python",
        }
        if profile.options.get("jetpack"):
            runtime["jetpack"] = profile.options["jetpack"]
    return runtime


def _arrays_for(path: Path, inputs: list[dict[str, Any]], count: int) -> dict[str, np.ndarray] | None:
    """The first `count` rows per input from an .npz keyed by input name (or one array for one input)."""
    with np.load(path) as data:
        keys = list(data.keys())
        if all(spec["name"] in keys for spec in inputs):
            return {spec["name"]: data[spec["name"]][:count] for spec in inputs}
        if len(inputs) == 1 and len(keys) == 1:
            return {inputs[0]["name"]: data[keys[0]][:count]}
    return None


def sample_inputs(
    report: BuildReport, target_dir: Path, inputs: list[dict[str, Any]], count: int
) -> dict[str, np.ndarray]:
    """Held-out samples the build kept, else calibration samples, else seeded random inputs."""
    candidates = [report.samples.path if report.samples else None, "../calib.npz"]
    for name in filter(None, candidates):
        path = target_dir / name
        if path.is_file() and (arrays := _arrays_for(path, inputs, count)) is not None:
            return arrays
    rng = np.random.default_rng(0)
    return {
        spec["name"]: rng.standard_normal([count] + [d or 1 for d in spec["shape"][1:]]).astype(spec["dtype"])
        for spec in inputs
    }


def _save_npy(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.ascontiguousarray(array), allow_pickle=False)


def write_samples(
    staging: Path, manifest: dict[str, Any], feeds: dict[str, np.ndarray], atol: float | None,
    reference: Path | None,
) -> None:
    """Store sample inputs and the outputs this workstation computes for them, with a tolerance.

    int8 kernels round differently per ISA (x86 u8s8 vs ARM dot-product differed by 2% of the
    logit range under aarch64 emulation), so the default allows 5% of the outputs' range, and for
    classifiers every sample's top-1 must also match.
    """
    from edgecompress.device.run import Engine

    manifest["selftest"] = {"inputs": {}, "expected": []}
    for index, (name, array) in enumerate(sorted(feeds.items())):
        manifest["selftest"]["inputs"][name] = f"samples/input_{index}.npy"
        _save_npy(staging / f"samples/input_{index}.npy", array)
    if manifest["engine"]["kind"] in CPU_KINDS:
        outputs, source = Engine(staging, manifest).run(feeds), "engine"
    elif reference is not None:  # a GPU engine cannot run here: compare against the fp32 reference
        import onnxruntime as ort

        outputs = ort.InferenceSession(str(reference), providers=["CPUExecutionProvider"]).run(None, feeds)
        source = "fp32 reference"
    else:
        manifest["selftest"] = None
        return
    for index, output in enumerate(outputs):
        manifest["selftest"]["expected"].append(f"samples/expected_{index}.npy")
        _save_npy(staging / f"samples/expected_{index}.npy", output)
    scale = max(float(np.max(np.abs(o))) for o in outputs)
    classifier = outputs[0].ndim == 2 and outputs[0].shape[1] > 1
    default_atol, top1 = max(1e-4, 0.05 * scale), bool(classifier)
    if source == "fp32 reference":
        default_atol, top1 = _quantization_allowance(staging, manifest, feeds, outputs, default_atol, top1)
    manifest["selftest"].update({"atol": atol if atol is not None else default_atol,
                                 "top1_must_match": top1, "source": source})


def _quantization_allowance(staging: Path, manifest: dict[str, Any], feeds: dict[str, np.ndarray],
                            reference: list[np.ndarray], atol: float, top1: bool) -> tuple[float, bool]:
    """Expected outputs are fp32, the device computes int8: allow at least twice the int8 model's own error.

    The kit's int8 ONNX runs here with Q/DQ simulated in float, as TensorRT computes it (integer
    accumulation); x86's fused u8/s8 kernels would overstate it (ship tests' digits model: max
    error 0.058 fused vs 0.0035 simulated, default tolerance 0.0196). Top-1 must match only where
    the int8 model itself keeps every sample's top-1.
    """
    import onnxruntime as ort

    models = [staging / name for name in manifest["engine"]["files"] if name.endswith(".onnx")]
    if not models:
        return atol, top1
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    simulated = ort.InferenceSession(str(models[0]), options, providers=["CPUExecutionProvider"]).run(None, feeds)
    error = max(float(np.max(np.abs(np.asarray(s, np.float64) - r))) for s, r in zip(simulated, reference))
    manifest["selftest"]["int8_error_here"] = error
    agrees = bool(np.all(np.argmax(simulated[0], axis=1) == np.argmax(reference[0], axis=1))) if top1 else False
    return max(atol, 2 * error), top1 and agrees


DEVICE_README = """# {model} for {target} ({kind}, {precision})

Files here were checked on the workstation and are listed with their sha256 in
manifest.json{signed}. Needs Python 3 with numpy and {runtime}
(Pillow to classify images).

    python3 run.py --verify            # files, signature, pinned signer, CPU arch, runtime, operators{build}
    python3 run.py --selftest          # bundled samples reproduce the workstation's outputs
    python3 run.py image.png --top-k 3 # top-k and latency (also takes .npy arrays)

Preprocessing (preprocess.py, the same code the workstation used): {preprocess}.
Installed by `edgecompress ship`, releases live in `releases/<sha>/` and `current`
points at the active one; `edgecompress rollback` points it back at the previous one.
`run.py --verify` pins the first signer it accepts in `known_signers` beside `releases/` and
refuses bundles from any other key unless given `--accept-new-signer`.
"""


def _runtime_needed(runtime: dict[str, Any]) -> str:
    if "onnxruntime" in runtime:
        return f"onnxruntime >= {runtime['onnxruntime']['min_version']}"
    if "openvino" in runtime:
        return f"openvino >= {runtime['openvino']['min_version']}"
    tensorrt = runtime.get("tensorrt", {})
    return f"TensorRT {tensorrt.get('version') or tensorrt.get('min_version')} ({tensorrt.get('needs', '')})"


def write_readme(staging: Path, manifest: dict[str, Any]) -> None:
    runtime = manifest["runtime"]
    text = DEVICE_README.format(
        model=manifest["model"]["name"], target=manifest["target"]["name"], kind=manifest["engine"]["kind"],
        precision=manifest["engine"]["precision"],
        signed=" (whose signature is manifest.sig)" if manifest.get("signed") else "",
        runtime=_runtime_needed(runtime),
        build="\n    python3 run.py --build-engine      # the kit in engine/ -> device-built/engine.plan (trtexec)"
        if runtime.get("tensorrt", {}).get("build_on_device") else "",
        preprocess=json.dumps(manifest.get("preprocess")) if manifest.get("preprocess") else "none (inputs are model-ready .npy)",
    )
    (staging / "README.md").write_text(text, encoding="utf-8")


def write_reproducible_tar(root: Path, out: Path) -> None:
    """tar.gz of every file under `root`: sorted names, mtime 0, root owner, fixed modes, gzip mtime 0."""
    names = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    with atomic_path(out) as tmp, open(tmp, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz:
            with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for name in names:
                    info = tarfile.TarInfo(name)
                    info.size = (root / name).stat().st_size
                    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "root", "root"
                    info.mode = 0o755 if name == "run.py" else 0o644
                    with open(root / name, "rb") as handle:
                        tar.addfile(info, handle)


def build_manifest(report: BuildReport, target_dir: Path, profile: TargetProfile,
                   engine: Path | None, files: list[Path]) -> dict[str, Any]:
    """Everything but `files` and `selftest`, which depend on the staged tree."""
    spec_source = engine if engine is not None and report.engine.kind in ORT_KINDS else reference_file(report, target_dir)
    inputs, outputs = tensor_specs(spec_source) if spec_source else (report.model.inputs, report.model.outputs)
    as_json = report.to_dict()  # the figures travel in report.json's shape: the device compares its own with them
    return {
        "format": BUNDLE_FORMAT,
        "model": {"name": report.model.name or target_dir.resolve().parent.name},
        "target": profile.model_dump(mode="json", exclude={"source"}),
        "engine": {
            "kind": report.engine.kind,
            "precision": report.engine.precision,
            "path": f"engine/{engine.name}" if engine else None,
            "files": [f"engine/{p.name}" for p in files],
            "note": report.engine.note,
        },
        "inputs": inputs,
        "outputs": outputs,
        "preprocess": report.preprocess,
        "labels": report.model.labels,
        "figures": {key: as_json[key] for key in FIGURE_KEYS if key in as_json},
        "runtime": runtime_requirements(profile, report, required_operators(files)),
        "calibration": {"sha256": report.quantization.calibration.sha256},
        "versions": {**report.versions, "edgecompress_bundle": __version__},
    }


def stage_bundle(target_dir: Path, staging: Path, options: BundleOptions) -> tuple[dict[str, Any], int]:
    """Lay the bundle tree out in `staging`; returns the manifest (with files) and the engine's size."""
    report = load_report(target_dir)
    if report.engine.kind == "executorch":  # phones run no sshd and no run.py: they get a release an app loads
        raise BundleError(f"{target_dir} holds an ExecuTorch engine for phones, which a device bundle cannot carry",
                          f"write a phone release: edgecompress release {target_dir} --out release --version 1.0.0 --sign KEY")
    profile = resolve_profile(report)
    engine, files = engine_files(report, target_dir)
    manifest = build_manifest(report, target_dir, profile, engine, files)
    for path in files:
        _copy(path, staging / "engine" / path.name)
    reference = reference_file(report, target_dir)
    if options.include_reference:
        if reference is None:
            raise BundleError("no fp32 reference model found for --include-reference", "rebuild with `edgecompress build`")
        _copy(reference, staging / "reference" / "model.fp32.onnx")
        manifest["reference"] = "reference/model.fp32.onnx"
    runner_files = RUNNER_FILES | (TENSORRT_RUNNER_FILES if manifest["engine"]["kind"] == "tensorrt" else {})
    for name, source in runner_files.items():
        _copy(source, staging / name)
    feeds = sample_inputs(report, target_dir, manifest["inputs"], options.samples) if manifest["inputs"] else {}
    write_samples(staging, manifest, feeds, options.selftest_atol, reference)
    manifest["signed"] = options.sign_key is not None
    write_readme(staging, manifest)
    manifest["files"] = {
        p.relative_to(staging).as_posix(): {"sha256": sha256_file(p), "size": p.stat().st_size}
        for p in sorted(staging.rglob("*")) if p.is_file()
    }
    return manifest, sum(p.stat().st_size for p in files)


def _copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    return (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()


def build_bundle(target_dir: Path, out: Path | None = None, options: BundleOptions = BundleOptions()) -> BundleArtifact:
    """Bundle one built target folder (`build/<run>/<target>`) into a reproducible, optionally signed archive."""
    from edgecompress.ship.signing import load_private_key, sign_manifest

    target_dir = Path(target_dir)
    out = Path(out) if out else target_dir / "bundle.tar.gz"
    private_key = load_private_key(options.sign_key, options.passphrase) if options.sign_key else None
    with tempfile.TemporaryDirectory(prefix="ec-bundle-") as tmp:
        staging = Path(tmp) / "bundle"
        manifest, engine_size = stage_bundle(target_dir, staging, options)
        raw = manifest_bytes(manifest)
        (staging / MANIFEST_NAME).write_bytes(raw)
        signature = sign_manifest(raw, private_key) if private_key else None
        if signature:
            (staging / SIGNATURE_NAME).write_text(json.dumps(signature, indent=2, sort_keys=True) + "\n")
        write_reproducible_tar(staging, out)
    return BundleArtifact(
        out, sha256_file(out), out.stat().st_size, engine_size, signature["key_id"] if signature else None, manifest
    )


__all__ = ["BundleArtifact", "BundleOptions", "build_bundle", "write_reproducible_tar"]
