"""The one-step functions of the Python API on tiny real models: each writes the file its CLI step writes, and a user's
mistake is the project's typed error."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import edgecompress
from edgecompress.core.errors import (
    BuildDirError, BundleError, CalibrationError, ConfigError, InputShapeError, ModelLoadError, ShipError, TargetError,
)
from edgecompress.export.graph import OnnxModelInfo
from tests.conftest import make_tiny_net
from tests.ship_support import build_for_target, copy_build, device  # noqa: F401 (fixture: a loopback sshd)

REPO = Path(__file__).resolve().parent.parent
SHAPE = (1, 1, 8, 8)  # TinyNet's input
STAGES = ("export_onnx", "quantize_int8", "make_calibration", "bundle", "release", "ship_bundle")


def digits_8x8(count: int) -> np.ndarray:
    """Real digits images at TinyNet's 8×8, scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    return (load_digits().images[:count] / 16.0).astype(np.float32)[:, None]


def run_onnx(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[OnnxModelInfo, torch.nn.Module, Path]:
    out = tmp_path_factory.mktemp("stages") / "build"
    module = make_tiny_net()
    fp32 = edgecompress.export_onnx(module, input_shape=SHAPE, out=out, exporter="torchscript", progress=False)
    return fp32, module, out


@pytest.fixture(scope="module")
def quantized(exported) -> edgecompress.QuantizeResult:
    fp32, _, out = exported
    return edgecompress.quantize_int8(fp32, calib=digits_8x8(64), target="cpu", out=out, progress=False)


# --- export_onnx ------------------------------------------------------------------------------------------------------


def test_export_writes_the_builds_fp32_file_and_its_outputs_are_the_modules(exported):
    fp32, module, out = exported
    assert fp32.path == out / "model.fp32.onnx" and fp32.path.is_file()
    assert [(spec.name, spec.shape) for spec in fp32.inputs] == [("input", (None, 1, 8, 8))]
    assert [spec.shape for spec in fp32.outputs] == [(None, 10)]
    assert fp32.export_max_abs_diff is not None and fp32.export_max_abs_diff < 1e-4
    x = digits_8x8(5)  # batch 5: the batch axis is dynamic
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(run_onnx(fp32.path, x), expected, atol=1e-4)


def test_export_again_reuses_the_file_and_an_example_input_gives_the_same_bytes(exported, tmp_path):
    fp32, module, out = exported
    written = fp32.path.stat().st_mtime_ns
    again = edgecompress.export_onnx(module, input_shape=SHAPE, out=out, exporter="torchscript", progress=False)
    assert again == fp32 and fp32.path.stat().st_mtime_ns == written  # the build's cache: nothing exported twice
    from_example = edgecompress.export_onnx(module, example_input=torch.zeros(SHAPE), out=tmp_path, exporter="torchscript",
                                            progress=False)
    assert from_example.path.read_bytes() == fp32.path.read_bytes()


def test_export_of_a_module_without_a_shape_is_an_input_shape_error(tmp_path):
    with pytest.raises(InputShapeError, match="example input shape"):
        edgecompress.export_onnx(make_tiny_net(), out=tmp_path, progress=False)
    assert not (tmp_path / "model.fp32.onnx").exists()


def test_export_names_a_misspelt_option_and_the_closest_one(tmp_path):
    with pytest.raises(ConfigError, match="'opst'") as error:
        edgecompress.export_onnx(make_tiny_net(), input_shape=SHAPE, out=tmp_path, opst=18)
    assert "'opset'" in error.value.fix and "edgecompress.export_onnx()" in error.value.problem


# --- quantize_int8 ----------------------------------------------------------------------------------------------------


def test_quantize_writes_a_qdq_int8_file_that_runs_close_to_fp32(exported, quantized):
    fp32, _, out = exported
    assert quantized.path.is_file() and quantized.path.parent == out / "int8" and quantized.target == "cpu"
    ops = {node.op_type for node in onnx.load(str(quantized.path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    x = digits_8x8(64)
    reference, int8 = run_onnx(fp32.path, x), run_onnx(quantized.path, x)
    assert int8.shape == (64, 10) and np.abs(int8 - reference).max() < 0.1 * np.abs(reference).max()


def test_quantize_uses_the_targets_recipe(exported, quantized):
    """x86 CPUs take ORT's u8 activations; TensorRT (jetson) symmetric int8 activations placed by its rules."""
    fp32, _, out = exported
    assert quantized.recipe.activation_type == "uint8" and quantized.recipe.placement == "onnxruntime"
    jetson = edgecompress.quantize_int8(fp32, calib=digits_8x8(64), target="jetson", out=out, progress=False)
    assert jetson.recipe.activation_type == "int8" and jetson.recipe.placement == "tensorrt"
    assert jetson.path != quantized.path
    zero_points = [init for init in onnx.load(str(jetson.path)).graph.initializer if init.name.endswith("_zero_point")]
    assert zero_points and {init.data_type for init in zero_points} == {onnx.TensorProto.INT8}


def test_quantize_options_reach_the_recipe(exported, quantized):
    fp32, _, out = exported
    per_tensor = edgecompress.quantize_int8(fp32, calib=digits_8x8(64), out=out, per_channel=False, progress=False)
    assert quantized.recipe.per_channel and not per_tensor.recipe.per_channel and per_tensor.path != quantized.path


def test_an_onnx_path_and_a_calibration_npz_make_the_same_int8_file_as_the_export_and_arrays(exported, quantized, tmp_path):
    """The path is prepared as a build prepares an ONNX file (into the new build folder: the same bytes), and the int8
    file is named by the content of the fp32 model, the calibration arrays and the recipe: the same name."""
    fp32 = exported[0]
    np.savez(tmp_path / "calib.npz", input=digits_8x8(64))
    from_files = edgecompress.quantize_int8(str(fp32.path), calib=tmp_path / "calib.npz", out=tmp_path / "build",
                                            progress=False)
    assert (tmp_path / "build" / "model.fp32.onnx").read_bytes() == fp32.path.read_bytes()
    assert from_files.path == tmp_path / "build" / "int8" / quantized.path.name
    assert from_files.path.read_bytes() == quantized.path.read_bytes()


def test_a_dataloader_of_x_y_batches_is_read_as_build_reads_it(exported, quantized):
    x = torch.from_numpy(digits_8x8(64))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.zeros(64, dtype=torch.long)), batch_size=16)
    from_loader = edgecompress.quantize_int8(exported[0], calib=loader, out=exported[2], progress=False)
    assert from_loader.path == quantized.path  # the same 64 arrays: the same int8 file


def test_quantize_takes_an_onnx_file_not_a_torch_module(tmp_path):
    with pytest.raises(ModelLoadError, match="fp32 ONNX file") as error:
        edgecompress.quantize_int8(make_tiny_net(), calib=digits_8x8(8), out=tmp_path)
    assert "export_onnx" in error.value.fix


def test_quantize_refuses_a_target_whose_engine_is_built_from_the_torch_module(exported, tmp_path):
    with pytest.raises(TargetError, match="from the torch module"):
        edgecompress.quantize_int8(exported[0].path, calib=digits_8x8(8), target="android-arm64-executorch", out=tmp_path)


def test_calibration_data_of_another_shape_is_a_calibration_error(exported, tmp_path):
    with pytest.raises(CalibrationError, match="axis 2"):
        edgecompress.quantize_int8(exported[0].path, calib=np.zeros((8, 1, 16, 16), np.float32), out=tmp_path,
                                   progress=False)


# --- make_calibration -------------------------------------------------------------------------------------------------


def test_make_calibration_writes_a_digits_set_keyed_by_the_models_input(exported, tmp_path):
    out = edgecompress.make_calibration("digits", out=tmp_path / "digits.npz", count=20, resize=(8, 8),
                                        model=exported[0].path, progress=False)
    assert out == tmp_path / "digits.npz"
    with np.load(out) as archive:
        assert archive.files == ["input"] and archive["input"].shape == (20, 1, 8, 8)
    manifest = json.loads(out.with_suffix(".json").read_text())
    assert manifest["count"] == 20 and manifest["preprocess"]["resize"] == [8, 8]


def test_the_calib_command_writes_the_same_set(exported, tmp_path):
    made = edgecompress.make_calibration("digits", out=tmp_path / "api.npz", count=12, resize=(8, 8), progress=False)
    command = [sys.executable, "-m", "edgecompress", "calib", "--from", "digits", "--count", "12", "--resize", "8,8",
               "--out", str(tmp_path / "cli.npz")]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr
    manifests = [json.loads(path.with_suffix(".json").read_text()) for path in (made, tmp_path / "cli.npz")]
    assert manifests[0]["sha256"] == manifests[1]["sha256"]


def test_make_calibration_refuses_an_out_that_is_not_npz_and_a_missing_source(tmp_path):
    with pytest.raises(CalibrationError, match="must end with .npz"):
        edgecompress.make_calibration("digits", out=tmp_path / "calib.txt")
    with pytest.raises(ConfigError, match="no calibration source"):
        edgecompress.make_calibration(out=tmp_path / "calib.npz")
    assert not list(tmp_path.iterdir())


# --- bundle and release -----------------------------------------------------------------------------------------------


def test_bundle_packs_a_built_target_into_an_archive_that_verifies(tmp_path):
    from edgecompress.ship.signing import generate_keypair
    from edgecompress.ship.verify import verify_bundle

    target_dir = copy_build(tmp_path / "run")
    keys = generate_keypair(tmp_path / "key")
    made = edgecompress.bundle(tmp_path / "run", target="cpu", sign=keys.private_path)
    assert made.path == target_dir / "bundle.tar.gz" and made.path.is_file() and made.signed_by is not None
    verified = verify_bundle(made.path, keys.public_path)
    assert verified.trusted_key and verified.signer == made.signed_by and verified.sha256 == made.sha256
    assert verified.manifest["engine"]["kind"] == "ort-cpu" and verified.manifest["selftest"]["source"] == "engine"


def test_bundle_of_a_folder_without_a_build_is_a_build_dir_error(tmp_path):
    with pytest.raises(BuildDirError, match="no report.json"):
        edgecompress.bundle(tmp_path, target="cpu")


def test_release_writes_a_signed_phone_release_that_an_app_loads(tmp_path):
    from edgecompress.device.app_release import load_release
    from edgecompress.ship.signing import generate_keypair

    build_for_target(tmp_path / "run", "android-arm64")
    keys = generate_keypair(tmp_path / "key")
    made = edgecompress.release(tmp_path / "run", targets="android-arm64", out=tmp_path / "release", version="1.0.0",
                                sign=keys.private_path)
    assert made.version_dir == tmp_path / "release" / "1.0.0" and made.archive.is_file() and made.index.is_file()
    loaded = load_release(made.version_dir, keys.public_path, "android-arm64")  # signature, hashes, golden check
    assert loaded.engine["kind"] == "ort-arm" and json.loads(made.index.read_text())["latest"] == "1.0.0"


def test_release_with_a_bad_version_is_a_bundle_error_and_writes_nothing(tmp_path):
    with pytest.raises(BundleError, match="MAJOR"):
        edgecompress.release(tmp_path, out=tmp_path / "release", version="latest", sign=tmp_path / "key")
    assert not (tmp_path / "release").exists()


def test_ship_bundle_installs_a_signed_bundle_that_passes_its_checks_on_the_device(device, tmp_path):
    from edgecompress.ship.signing import generate_keypair

    copy_build(tmp_path / "run")
    keys = generate_keypair(tmp_path / "key")
    made = edgecompress.bundle(tmp_path / "run", target="cpu", sign=keys.private_path)
    root = device.root / "api"
    [shipped] = edgecompress.ship_bundle(made.path, device.destination(root), verify_key=keys.public_path,
                                         ssh_key=device.user_key, known_hosts=device.known_hosts,
                                         remote_python=sys.executable, progress=False)
    assert shipped.ok, shipped.reason
    assert shipped.checked_by == "run.py --verify + --selftest" and shipped.release == made.sha256[:16]
    assert (root / "current").resolve() == (root / "releases" / made.sha256[:16]).resolve()


def test_ship_bundle_of_a_signed_bundle_without_a_trusted_key_is_a_ship_error_before_any_device(tmp_path):
    from edgecompress.ship.signing import generate_keypair

    copy_build(tmp_path / "run")
    made = edgecompress.bundle(tmp_path / "run", target="cpu", sign=generate_keypair(tmp_path / "key").private_path)
    with pytest.raises(ShipError, match="no trusted key"):  # 192.0.2.1 (TEST-NET-1) would time out if it were tried
        edgecompress.ship_bundle(made.path, "pi@192.0.2.1:/opt/models", progress=False)


# --- the functions as a user finds them -------------------------------------------------------------------------------


def test_defaults_are_the_cli_commands(monkeypatch):
    """Defaults spelt out here (importing torch or numpy for them would slow `import edgecompress`) must not drift."""
    from edgecompress.calib.datafree import DataFreeConfig
    from edgecompress.cli.calib import calib
    from edgecompress.cli.ship import bundle as bundle_command
    from edgecompress.cli.ship import release as release_command
    from edgecompress.cli.ship import ship as ship_command
    from edgecompress.ship.bundle import BundleOptions
    from edgecompress.ship.release import build_release
    from edgecompress.ship.transport import SshOptions

    def default(function, name):
        value = inspect.signature(function).parameters[name].default
        return getattr(value, "default", value)  # a typer option holds its default

    assert default(edgecompress.bundle, "samples") == BundleOptions().samples == default(bundle_command, "samples")
    assert default(edgecompress.release, "samples") == default(build_release, "samples") == default(release_command, "samples")
    assert default(edgecompress.make_calibration, "class_loss") == DataFreeConfig().class_loss_weight == default(calib, "class_loss")
    assert default(edgecompress.make_calibration, "steps") == DataFreeConfig().steps
    for name in ("timeout", "remote_python", "parallel"):
        assert default(edgecompress.ship_bundle, name) == default(ship_command, name), name
    assert (default(edgecompress.ship_bundle, "timeout"), default(edgecompress.ship_bundle, "remote_python")) == (
        SshOptions().timeout, SshOptions().remote_python)


def test_each_function_stays_reachable_after_the_stage_packages_load():
    """`edgecompress.export` and `edgecompress.quantize` are packages (set on import): the functions have other names."""
    import edgecompress.export.graph  # noqa: F401
    import edgecompress.quantize.static  # noqa: F401

    for name in STAGES:
        assert inspect.isfunction(getattr(edgecompress, name)) and name in edgecompress.__all__, name


def test_each_function_documents_its_arguments_and_what_it_returns():
    for name in STAGES:
        doc = inspect.getdoc(getattr(edgecompress, name)) or ""
        parameters = set(inspect.signature(getattr(edgecompress, name)).parameters) - {"options"}
        assert "Args:" in doc and "Returns:" in doc, name
        assert all(f"{parameter}:" in doc for parameter in parameters), name
    assert "opset (int): " in (edgecompress.export_onnx.__doc__ or "")
    assert "calibration_method (str): " in (edgecompress.quantize_int8.__doc__ or "")


def test_importing_them_loads_neither_torch_nor_numpy():
    names = ", ".join(f"edgecompress.{name}.__doc__" for name in STAGES)
    code = f"import sys, edgecompress; {names}; print(sorted({{'torch', 'numpy', 'onnx'}} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert result.stdout.strip() == "[]"
