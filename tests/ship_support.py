"""Real parts for the shipping tests: a tiny int8 ONNX build target and a loopback sshd "device".

The build target mirrors what `edgecompress build` writes (`<run>/<target>/report.json`,
the int8 engine, `<run>/model.fp32.onnx`, `<run>/calib.npz`), so bundling is tested on
real artifacts; targets other than the x86 CPU get their engine from that target's own
engine builder (the ARM .ort converter, the TensorRT kit writer), never by relabelling.
"""

from __future__ import annotations

import functools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest

from edgecompress.engines.arm64_emulated import arm64_root  # noqa: F401 - re-exported for test_ship
from edgecompress.engines.arm64_emulated import unavailable_reason as emulation_unavailable

SSH_USER = "ecship"


def make_build_target(run_dir: Path, target: str = "cpu") -> Path:
    """A real tiny digits CNN exported to ONNX and statically quantized to int8 (QDQ)."""
    import torch
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from edgecompress.source.data import digits_splits

    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3, stride=2, padding=1),
        torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 10),
    ).eval()
    run_dir.mkdir(parents=True, exist_ok=True)
    fp32 = run_dir / "model.fp32.onnx"
    torch.onnx.export(
        model, (torch.zeros(1, 1, 32, 32),), str(fp32), input_names=["input"], output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False,
    )
    calib = digits_splits().train.x[:16]
    np.savez(run_dir / "calib.npz", input=calib)

    target_dir = run_dir / target
    target_dir.mkdir(exist_ok=True)
    engine = target_dir / "engine.onnx"
    quantize_static(str(fp32), str(engine), rows_reader(calib), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True)
    from edgecompress.pipeline.report_types import EngineFacts
    from edgecompress.core.targets import load_profile

    engine_facts = EngineFacts("ort-cpu", engine.name, "int8", None, engine.stat().st_size)
    write_report(target_dir, engine_facts, run_dir, load_profile(target), measure=True)
    return target_dir


def write_report(target_dir: Path, engine, run_dir: Path, profile, measure: bool) -> None:
    """report.json as a build writes it (a BuildReport, through the build's own writer); with `measure`, the
    engine's accuracy, agreement and latency are measured here against the fp32 model, as the build measures them."""
    from edgecompress.pipeline.report import versions
    from edgecompress.pipeline.report import write_report as write_build_report
    from edgecompress.pipeline.report_types import (
        Accuracy, BuildFacts, BuildReport, CalibrationFacts, ModelFacts, QuantizationFacts, ReferenceFacts,
    )
    from edgecompress.core.artifacts import sha256_file
    from edgecompress.export.graph import model_io, read_onnx
    from edgecompress.source.data import DIGITS_SPEC

    fp32, calib = run_dir / "model.fp32.onnx", run_dir / "calib.npz"
    inputs, outputs = model_io(read_onnx(fp32))
    report = BuildReport(
        target=profile.name,
        model=ModelFacts("digits-tiny", str(fp32), [spec.to_dict() for spec in inputs], [spec.to_dict() for spec in outputs],
                         17, [str(d) for d in range(10)]),
        preprocess=DIGITS_SPEC.to_dict(),
        profile=profile.summary(),
        engine=engine,
        reference=ReferenceFacts(str(fp32), "fp32", fp32.stat().st_size),
        size_ratio_vs_fp32=fp32.stat().st_size / engine.size_bytes,
        quantization=QuantizationFacts({"label": "u8s8 per-channel minmax"}, str(run_dir / "cpu" / "engine.onnx"),
                                       CalibrationFacts(calib.name, sha256_file(calib), 16, False, None, {"batch_axis": {"input": 0}})),
        accuracy=Accuracy(None, None, "not measured: the engine runs on the device"),
        agreement=None,
        versions=versions(),
        build=BuildFacts("2026-01-01T00:00:00+00:00", {}),
    )
    if measure:
        report = replace(report, **measured_figures(target_dir / engine.path, fp32, profile))
    write_build_report(report, target_dir, {})


def measured_figures(engine: Path, fp32: Path, profile) -> dict:
    """The engine against fp32 on 64 held-out digits, and their latencies timed interleaved."""
    from edgecompress.pipeline.pipeline import measured_on_facts
    from edgecompress.engines import EngineArtifact
    from edgecompress.pipeline.report_types import Accuracy, Agreement, LatencyFigures
    from edgecompress.engines.ort_cpu import OrtRunner
    from edgecompress.measure.bench import benchmark
    from edgecompress.measure.evaluate import EvalSet, evaluate
    from edgecompress.source.data import digits_splits

    test = digits_splits().test
    runner, reference = OrtRunner(engine, threads=profile.threads), OrtRunner(fp32, threads=profile.threads)
    evaluation = evaluate(runner, reference, EvalSet({"input": test.x[:64]}, test.y[:64], "digits test split (64 samples)"))
    stats, _ = benchmark({"engine": runner, "fp32": reference}, {"input": test.x[:1]}, runs=20, warmup=2, max_seconds=5.0)
    where = measured_on_facts(profile, EngineArtifact(profile.name, "ort-cpu", "int8", engine))
    return {
        "accuracy": Accuracy(evaluation.accuracy_reference, evaluation.accuracy_engine, evaluation.data),
        "agreement": Agreement(**vars(evaluation.agreement)),
        "latency": LatencyFigures.measured(stats["engine"], where.summary),
        "throughput_per_s": stats["engine"].throughput_per_s,
        "speedup_vs_fp32": stats["fp32"].p50 / stats["engine"].p50,
        "measured_on": where,
    }


@functools.lru_cache(maxsize=None)
def cached_build_run() -> Path:
    """One real build per test process (quantizing is the slow part); tests copy it."""
    run_dir = Path(tempfile.mkdtemp(prefix="ec-build-")) / "digits-tiny"
    make_build_target(run_dir)
    return run_dir


def copy_build(dest_run: Path) -> Path:
    """A private copy of the cached build's x86 CPU target."""
    shutil.copytree(cached_build_run(), dest_run)
    return dest_run / "cpu"


def symmetric_int8(fp32: Path, out: Path) -> Path:
    """The int8 TensorRT takes: symmetric int8 activations and weights, float biases (its preflight checks this)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    calib = np.load(fp32.parent / "calib.npz")["input"]

    quantize_static(str(fp32), str(out), rows_reader(calib), quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8, per_channel=True,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False})
    return out


def build_for_target(dest_run: Path, target: str) -> Path:
    """A copy of the cached build with `target`'s engine made by that target's own engine builder.

    ARM targets get ONNX Runtime's .ort conversion of the int8 model, TensorRT targets the
    on-device build kit (no GPU here), each with the report entry the pipeline writes.
    """
    from edgecompress.engines import get_builder
    from edgecompress.core.targets import load_profile

    run_dir = copy_build(dest_run).parent
    profile = load_profile(target)
    int8 = run_dir / "cpu" / "engine.onnx"
    if profile.engine == "tensorrt":
        int8 = symmetric_int8(run_dir / "model.fp32.onnx", run_dir / "model.int8.tensorrt.onnx")
    from edgecompress.pipeline.pipeline import engine_facts

    target_dir = run_dir / profile.name
    artifact = get_builder(profile.engine).build(int8, profile, target_dir)
    write_report(target_dir, engine_facts(artifact), run_dir, profile, measure=False)  # figures come from the device
    return target_dir


# -- loopback sshd "device" ---------------------------------------------------------------------------


def find_sshd() -> str | None:
    return shutil.which("sshd") or next((p for p in ("/usr/sbin/sshd",) if os.path.exists(p)), None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def locked_for_sshd(user: str) -> bool:
    """sshd without PAM treats a '!'-prefixed password field as a locked account, keys or not."""
    try:
        for line in Path("/etc/shadow").read_text().splitlines():
            name, password = line.split(":")[:2]
            if name == user:
                return password.startswith("!")
    except OSError:
        pass
    return False


def unprivileged_user() -> str:
    """An account that file permissions apply to: a real non-root one when the tests run as root."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid()).pw_name
    try:
        pwd.getpwnam(SSH_USER)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", SSH_USER], check=True)
    subprocess.run(["usermod", "-p", "*", SSH_USER], check=True)  # no password, but not "locked" for sshd
    return SSH_USER


@dataclass
class SshDevice:
    """A running loopback sshd logging in as the current user; `root` is a scratch directory."""

    host: str
    port: int
    user: str
    user_key: Path
    known_hosts: Path
    root: Path
    process: subprocess.Popen

    def destination(self, path: Path | str, user: str | None = None) -> str:
        return f"{user or self.user}@{self.host}:{self.port}:{path}"

    def session_pids(self) -> list[int]:
        """Children of our sshd: one per open connection."""
        pids = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == self.process.pid:
                pids.append(int(stat.parent.name))
        return pids


def start_sshd(workdir: Path, chroot: Path | None = None) -> SshDevice:
    """sshd on a free loopback port; with `chroot`, every session runs inside that directory."""
    sshd = find_sshd()
    assert sshd is not None
    user = pwd.getpwuid(os.geteuid()).pw_name
    root = Path(tempfile.mkdtemp(prefix="ec-device-"))  # outside root's 0700 pytest dirs
    os.chmod(root, 0o755)
    host_key, user_key = workdir / "host_ed25519", workdir / "user_ed25519"
    for key in (host_key, user_key):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    authorized = root / "authorized_keys"
    shutil.copy(f"{user_key}.pub", authorized)
    os.chmod(authorized, 0o644)
    port = free_port()
    config = workdir / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\nAuthorizedKeysFile {authorized}\n"
        f"PidFile {workdir}/sshd.pid\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "UsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\nSubsystem sftp internal-sftp\n"
        "LogLevel ERROR\n" + (f"ChrootDirectory {chroot}\n" if chroot else "")
    )
    Path("/run/sshd").mkdir(exist_ok=True)
    process = subprocess.Popen([sshd, "-D", "-e", "-f", str(config)], stderr=open(workdir / "sshd.log", "wb"))
    known_hosts = workdir / "known_hosts"
    public = Path(f"{host_key}.pub").read_text().split()
    known_hosts.write_text(f"[127.0.0.1]:{port} {public[0]} {public[1]}\n")
    for _ in range(100):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            if process.poll() is not None:
                raise RuntimeError((workdir / "sshd.log").read_text()) from None
            time.sleep(0.05)
    return SshDevice("127.0.0.1", port, user, user_key, known_hosts, root, process)


def stop_sshd(device: SshDevice) -> None:
    device.process.terminate()
    device.process.wait(timeout=10)
    shutil.rmtree(device.root, ignore_errors=True)


@pytest.fixture(scope="module")
def device(tmp_path_factory):
    """A loopback OpenSSH "device" for one test module (skipped where sshd is not installed)."""
    if find_sshd() is None:
        pytest.skip("OpenSSH server (sshd) not installed: apt-get install openssh-server (see .ci/install-system-deps.sh)")
    if locked_for_sshd(pwd.getpwuid(os.geteuid()).pw_name):
        pytest.skip("this account's password field starts with '!': sshd (without PAM) refuses key logins to it")
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    stop_sshd(server)


def arm64_unavailable() -> str | None:
    """Why the emulated arm64 device cannot be used here (root, the arm64 root, binfmt, sshd), or None."""
    reason = emulation_unavailable()
    if reason:
        return reason
    if not Path("/proc/sys/fs/binfmt_misc/qemu-aarch64").exists():
        return "qemu-aarch64 binfmt handler not registered"
    return None if find_sshd() else "sshd not installed"


@pytest.fixture(scope="module")
def arm64_device(tmp_path_factory):
    """An aarch64 "device": sshd chrooting every session into the emulated arm64 root (QEMU user mode).

    sshd wants a root-owned chroot path with no world-writable parent, so the root is
    bind-mounted under /run for the duration.
    """
    reason = arm64_unavailable()
    if reason:
        pytest.skip(reason)
    mount_point = Path(f"/run/ec-arm64-{os.getpid()}")
    mount_point.mkdir(mode=0o755)
    subprocess.run(["mount", "--bind", str(arm64_root()), str(mount_point)], check=True)
    try:
        server = start_sshd(tmp_path_factory.mktemp("sshd-arm64"), chroot=mount_point)
        try:
            yield server
        finally:
            stop_sshd(server)
    finally:
        subprocess.run(["umount", "--lazy", str(mount_point)], check=False)  # sessions may still be exiting
        mount_point.rmdir()


def rows_reader(calib: np.ndarray):
    """ONNX Runtime's CalibrationDataReader over the rows of one input array, one sample at a time."""
    from onnxruntime.quantization import CalibrationDataReader

    class Rows(CalibrationDataReader):
        def __init__(self) -> None:
            self.rows = iter(calib[i : i + 1] for i in range(len(calib)))

        def get_next(self):  # noqa: ANN201
            row = next(self.rows, None)
            return None if row is None else {"input": row}

    return Rows()
