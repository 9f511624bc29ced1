"""Export stage: checked, opset ≥ 17, dynamic batch, and equal to PyTorch within tolerance."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgecompress.core.errors import InputShapeError, ModelLoadError
from edgecompress.export.graph import MIN_OPSET, prepare_onnx
from edgecompress.export.torch_export import export_torch
from tests.conftest import make_tiny_net


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_export_is_checked_dynamic_batch_and_matches_torch(tmp_path, exporter):
    info = export_torch(make_tiny_net(), {"input": (1, 1, 8, 8)}, tmp_path / "m.onnx", exporter=exporter)
    model = onnx.load(str(info.path))
    onnx.checker.check_model(model)
    assert info.opset >= MIN_OPSET
    assert info.inputs[0].shape == (None, 1, 8, 8)
    assert info.export_max_abs_diff is not None and info.export_max_abs_diff < 1e-4
    session = ort.InferenceSession(str(info.path))
    assert session.run(None, {"input": np.zeros((5, 1, 8, 8), np.float32)})[0].shape == (5, 10)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # no temp or external-data files left


def test_old_opset_model_is_upgraded_and_dynamic_dims_fixed(tmp_path):
    import torch

    path = tmp_path / "old.onnx"
    torch.onnx.export(
        make_tiny_net(), (torch.zeros(1, 1, 8, 8),), str(path), dynamo=False, opset_version=13,
        input_names=["image"], dynamic_axes={"image": {0: "n", 2: "h", 3: "w"}},
    )
    info = prepare_onnx(path, tmp_path / "fixed.onnx", {"": (1, 1, 8, 8)})
    assert info.opset >= MIN_OPSET
    assert info.inputs[0].shape == (None, 1, 8, 8)


def test_dynamic_dims_without_input_shape_name_the_fix(tmp_path):
    import torch

    path = tmp_path / "dyn.onnx"
    torch.onnx.export(make_tiny_net(), (torch.zeros(1, 1, 8, 8),), str(path), dynamo=False,
                      input_names=["image"], dynamic_axes={"image": {2: "h", 3: "w"}})
    with pytest.raises(InputShapeError, match="--input-shape image:1"):
        prepare_onnx(path, tmp_path / "out.onnx", {})


@pytest.mark.parametrize("shape, message", [
    ({"nope": (1, 1, 8, 8)}, "no input named 'nope'"),
    ({"": (1, 8, 8)}, "rank 4"),
    ({"": (1, 3, 8, 8)}, "fixed size 1 on axis 1"),
])
def test_input_shape_that_does_not_fit_is_refused(tiny_onnx, tmp_path, shape, message):
    with pytest.raises(InputShapeError, match=message):
        prepare_onnx(tiny_onnx, tmp_path / "out.onnx", shape)
    assert not (tmp_path / "out.onnx").exists()


def test_truncated_onnx_is_refused_clearly(tiny_onnx, tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(tiny_onnx.read_bytes()[: tiny_onnx.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match="not a valid ONNX model"):
        prepare_onnx(broken, tmp_path / "out.onnx", {})
    assert not (tmp_path / "out.onnx").exists()
