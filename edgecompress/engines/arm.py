"""ORT-format engines for ARM phones and boards (Raspberry Pi, Android, generic arm64).

Devices run ONNX Runtime's ORT format (`.ort`): it loads without protobuf and is what a
size-reduced minimal build of ONNX Runtime accepts. The conversion is ONNX Runtime's own
converter, and the required-operators config it writes is the input to that minimal
build (`--include_ops_by_config`). The same `.ort` file also runs on this x86 host, so
evaluation and benchmarks use it unchanged through the `Runner` interface.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import shutil
import tempfile
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
from pydantic import BaseModel, ConfigDict, Field

from edgecompress.core.artifacts import atomic_path, sha256_file
from edgecompress.engines.base import EngineArtifact, onnx_precision, profile_options
from edgecompress.source.specs import TensorSpec
from edgecompress.core.errors import EngineBuildError
from edgecompress.quantize.isa import Isa, host_isa
from edgecompress.core.targets import TargetProfile
from edgecompress.core.runtime import session_options

ENGINE_NAME = "engine.ort"
FALLBACK_PROVIDER = "CPUExecutionProvider"
# Runtime style saves optimizations the session must be told to apply (ONNX Runtime's own key)
APPLY_SAVED_OPTIMIZATIONS = {"optimization.minimal_build_optimizations": "apply"}


def session_config(optimization_style: str) -> dict[str, str]:
    """Session config entries an `.ort` of this optimization style needs to run as converted."""
    return dict(APPLY_SAVED_OPTIMIZATIONS) if optimization_style == "Runtime" else {}


class ArmOptions(BaseModel):
    """The `[options]` table of an `engine = "ort-arm"` profile (see targets/README.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    providers: tuple[str, ...] = Field(
        ("XNNPACKExecutionProvider", FALLBACK_PROVIDER),
        description="execution providers of the device's own ONNX Runtime build, in priority order",
    )
    optimization_style: Literal["Fixed", "Runtime"] = Field(
        "Fixed", description="Fixed bakes optimizations in; Runtime leaves some to the device (NNAPI/CoreML)"
    )
    type_reduction: bool = Field(False, description="also record op types, for a smaller minimal build")
    onnxruntime_min: str | None = Field(None, description="oldest onnxruntime the device may run (bundle requirement)")


def arm_options(profile: TargetProfile) -> ArmOptions:
    """Validate the profile's engine options; a misspelt key is named, not ignored."""
    return profile_options(ArmOptions, profile, "ort-arm")


def providers_here(wanted: tuple[str, ...]) -> tuple[list[str], str | None]:
    """The profile's providers this onnxruntime has, in order, and a notice for the missing ones."""
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    chosen = [p for p in wanted if p in available] or [FALLBACK_PROVIDER]
    missing = [p for p in wanted if p not in available]
    if not missing:
        return chosen, None
    return chosen, (
        f"{', '.join(missing)} not in this onnxruntime build (PyPI wheels have no XNNPACK); running on "
        f"{', '.join(chosen)} here. The device's ONNX Runtime build should include them"
    )


def _rejected_nodes(model: onnx.ModelProto, message: str) -> str:
    """Name the op and node(s) ONNX Runtime refused; its message names one or the other."""
    named = re.search(r"Node \((.*?)\) Op \((.*?)\)", message)
    if named:
        return f"op {named.group(2)} in node '{named.group(1)}'"
    op = re.search(r"(?:([\w.]+):)?(\w+)\(-?\d+\) is not a registered", message) or re.search(
        r"implementation for (\w+)\(", message
    )
    if not op:
        return "the model"
    op_type = op.group(op.lastindex or 1)
    nodes = [n.name or f"#{i}" for i, n in enumerate(model.graph.node) if n.op_type == op_type]
    return f"op {op_type} in node(s) {', '.join(repr(n) for n in nodes) or '(unknown)'}"


@contextlib.contextmanager
def _quiet_logger(name: str):
    """The converter logs INFO lines about temp paths; users only need its errors."""
    loggers = [logging.getLogger(n) for n in [name, *logging.root.manager.loggerDict] if n.startswith(name)]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def convert_to_ort(onnx_path: Path, options: ArmOptions, work_dir: Path) -> tuple[Path, Path]:
    """Run ONNX Runtime's converter; returns the .ort and the required-operators config."""
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    source = work_dir / "engine.onnx"
    shutil.copyfile(onnx_path, source)
    out = work_dir / "out"
    try:
        with contextlib.redirect_stdout(io.StringIO()), _quiet_logger("ort_format_model"):
            convert_onnx_models_to_ort(
                source, output_dir=out, optimization_styles=[OptimizationStyle[options.optimization_style]],
                target_platform="arm", enable_type_reduction=options.type_reduction,
            )
    except Exception as exc:  # the converter raises onnxruntime's own Fail/NotImplemented types
        where = _rejected_nodes(onnx.load(str(onnx_path), load_external_data=False), str(exc))
        raise EngineBuildError(
            f"ONNX Runtime's ORT-format converter rejected {where} of {onnx_path}: {str(exc).splitlines()[0][:300]}",
            "replace that op with standard ONNX ops (or register a custom-op library) and build again",
        ) from exc
    configs = sorted(out.glob("*.config"))
    # the converter names the file per style (engine.ort, engine.with_runtime_opt.ort): take what it wrote
    (converted,) = sorted(out.glob("*.ort"))
    return converted, configs[0]


def required_operators(config: Path) -> list[str]:
    """`domain;opset;Op1,Op2{types}` lines of the config, flattened to `domain:Op@opset`."""
    ops = []
    for line in config.read_text().splitlines():
        if line and not line.startswith("#"):
            domain, opset, names = line.split(";", 2)
            while "{" in names:  # type-reduced configs append a JSON type list to each op
                names = re.sub(r"\{[^{}]*\}", "", names)
            ops += [f"{domain}:{name}@{opset}" for name in names.split(",") if name]
    return ops


class ArmBuilder:
    """`engine.ort` plus its required-operators config; runs here on CPU, on the device as listed."""

    kind = "ort-arm"

    def available(self) -> str | None:
        return None  # the converter ships in every onnxruntime wheel

    def check(self, profile: TargetProfile) -> None:
        arm_options(profile)

    def describe(self, profile: TargetProfile) -> str:
        """One line for `edgecompress targets`: providers on the device and what runs here."""
        options = arm_options(profile)
        chosen, _ = providers_here(options.providers)
        device = "→".join(p.removesuffix("ExecutionProvider") for p in options.providers)
        return f".ort {device}; here: {'→'.join(p.removesuffix('ExecutionProvider') for p in chosen)}"

    def build(self, onnx_path: Path, profile: TargetProfile, out_dir: Path) -> EngineArtifact:
        options = arm_options(profile)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".ort-convert.", dir=out_dir))
        try:
            ort_file, config = convert_to_ort(Path(onnx_path), options, work)
            config_final = out_dir / "required_operators.config"
            with atomic_path(config_final) as tmp:  # config first: an .ort on disk always has its config
                # the converter names its scratch path in a comment; name the shipped file instead
                tmp.write_text(re.sub(r"(?m)^# - .*$", f"# - {ENGINE_NAME}", config.read_text()))
            with atomic_path(out_dir / ENGINE_NAME) as tmp:
                shutil.copyfile(ort_file, tmp)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return self._artifact(out_dir / ENGINE_NAME, config_final, profile, options, Path(onnx_path))

    def _artifact(self, engine: Path, config: Path, profile: TargetProfile, options: ArmOptions,
                  onnx_path: Path) -> EngineArtifact:
        import onnxruntime as ort

        _, notice = providers_here(options.providers)
        operators = required_operators(config)
        label = onnx_precision(onnx_path)
        return EngineArtifact(
            target=profile.name, kind=self.kind, precision=label.name, precision_layers=label.layers, path=engine,
            files=[engine, config], note=notice,
            metadata={
                "format": "ort", "converted_with_onnxruntime": ort.__version__,
                "runtime_requirement": f"onnxruntime >= {ort.__version__} (full or minimal build with "
                                       f"--include_ops_by_config {config.name})",
                "optimization_style": options.optimization_style, "target_platform": "arm",
                "session_config": session_config(options.optimization_style),
                "device_providers": list(options.providers), "threads": profile.threads,
                "required_operators": operators, "sha256": sha256_file(engine),
                "summary": [
                    f"ORT format ({options.optimization_style} optimizations for arm), converted with onnxruntime "
                    f"{ort.__version__}; the device needs onnxruntime >= {ort.__version__}",
                    f"device providers: {', '.join(options.providers)}" + (f" — here: {notice}" if notice else ""),
                    f"{len(operators)} operators in {config.name} (minimal build: --include_ops_by_config)",
                    *host_caveats(profile, onnx_path),
                ],
            },
        )

    def load(self, artifact: EngineArtifact, profile: TargetProfile) -> "OrtFormatRunner":
        if artifact.path is None or not Path(artifact.path).is_file():
            raise EngineBuildError(f"no ORT-format engine at {artifact.path}", "build the target first")
        options = arm_options(profile)
        return OrtFormatRunner(Path(artifact.path), options.providers, profile.threads,
                               session_config(options.optimization_style))


def _has_uint8_activations(onnx_path: Path) -> bool:
    model = onnx.load(str(onnx_path), load_external_data=False)
    zero_points = {node.input[2] for node in model.graph.node if node.op_type == "QuantizeLinear" and len(node.input) > 2}
    return any(t.name in zero_points and t.data_type == onnx.TensorProto.UINT8 for t in model.graph.initializer)


def host_caveats(profile: TargetProfile, onnx_path: Path, host: Isa | None = None) -> list[str]:
    """What the figures measured on this host (default: this machine) do and do not say about the device."""
    host = host or host_isa()
    if host.arch == profile.arch:
        return []
    lines = [f"accuracy and latency in this report come from running the .ort on this {host.arch} host, "
             "not from the device; scripts/arm64-emulated.sh runs it on aarch64 kernels (QEMU)"]
    if host.saturates_u8s8 and _has_uint8_activations(onnx_path):
        lines.append("this x86 CPU has no VNNI: its u8s8 kernels saturate 16-bit sums (vpmaddubsw) where ARM's "
                     "do not, so agreement here can be LOWER than on the device (measured: digits example "
                     "96.4% here vs 100% on emulated aarch64)")
    return lines


class OrtFormatRunner:
    """An `.ort` model in an ONNX Runtime session with the profile's providers, CPU as fallback."""

    def __init__(self, engine: Path, providers: tuple[str, ...], threads: int,
                 config: dict[str, str] | None = None) -> None:
        import onnxruntime as ort

        chosen, self.notice = providers_here(providers)
        if self.notice:  # the same for every engine this process loads: said once
            from edgecompress.core.progress import warn_once

            warn_once(self.notice)
        # the same session settings as the fp32 reference it is timed against (core.runtime.session_settings)
        options = session_options(threads)
        for key, value in (config or {}).items():
            options.add_session_config_entry(key, value)
        self.session = ort.InferenceSession(str(engine), options, providers=chosen)
        self.providers = self.session.get_providers()
        self.inputs = [_spec(arg) for arg in self.session.get_inputs()]
        self.outputs = [_spec(arg) for arg in self.session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(None, feeds)


_ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int64)": "int64",
              "tensor(int32)": "int32", "tensor(uint8)": "uint8", "tensor(int8)": "int8"}


def _spec(arg) -> TensorSpec:  # noqa: ANN001 - onnxruntime NodeArg
    shape = tuple(d if isinstance(d, int) else None for d in arg.shape)
    return TensorSpec(arg.name, shape, _ORT_TYPES.get(arg.type, arg.type))
