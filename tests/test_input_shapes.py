"""Input shapes as real exporters write them: -1, dim_param, empty dims and missing shapes are open.

`--input-shape` is needed only where a dim past the batch is open; the error says which axes, and the
fix it prints is a complete shape that prepares the model when pasted.
"""

from __future__ import annotations

import re

import numpy as np
import onnxruntime as ort
import pytest

from edgecompress.core.errors import InputShapeError
from edgecompress.export.graph import prepare_onnx
from edgecompress.source.model import parse_input_shapes
from tests.onnx_graphs import conv_model


def _pasted_fix(error: InputShapeError) -> dict:
    """The `--input-shape NAME:dims` of a fix, parsed exactly as the CLI would parse it."""
    spec = re.search(r"--input-shape (\S+)", error.fix).group(1)
    return {name or "": shape for name, shape in parse_input_shapes([spec]).items()}


@pytest.mark.parametrize("open_dim", [-1, 0, "p2o.DynamicDimension.0", None], ids=["minus-one", "zero", "dim_param", "empty"])
def test_every_way_of_writing_an_open_batch_reads_as_dynamic(tmp_path, open_dim):
    model = conv_model(tmp_path / "m.onnx", [open_dim, 3, 8, 8])
    info = prepare_onnx(model, tmp_path / "out.onnx", {})
    assert info.inputs[0].shape == (None, 3, 8, 8)
    session = ort.InferenceSession(str(info.path), providers=["CPUExecutionProvider"])
    assert session.run(None, {"x": np.zeros((2, 3, 8, 8), np.float32)})[0].shape == (2, 4, 8, 8)


def test_paddle_minus_one_batch_accepts_the_batch_the_user_gives(tmp_path):
    """The issue's report: `x:1,3,48,192` on a `[-1, 3, 48, 192]` input was refused as 'fixed size -1'."""
    model = conv_model(tmp_path / "paddle.onnx", [-1, 3, 48, 192])
    info = prepare_onnx(model, tmp_path / "out.onnx", parse_input_shapes(["x:1,3,48,192"]))
    assert info.inputs[0].shape == (None, 3, 48, 192)


def test_fixed_dims_are_read_from_the_model_so_no_input_shape_is_needed(tmp_path):
    model = conv_model(tmp_path / "fixed.onnx", [1, 3, 16, 16])
    assert prepare_onnx(model, tmp_path / "out.onnx", {}).inputs[0].shape == (1, 3, 16, 16)


def test_open_spatial_dims_name_the_axes_and_the_fix_works_when_pasted(tmp_path):
    model = conv_model(tmp_path / "det.onnx", [-1, 3, "h", None])
    with pytest.raises(InputShapeError, match="open dimensions on axis 2, 3") as refused:
        prepare_onnx(model, tmp_path / "out.onnx", {})
    info = prepare_onnx(model, tmp_path / "out.onnx", _pasted_fix(refused.value))
    assert info.inputs[0].shape == (None, 3, 224, 224)


def test_a_size_that_contradicts_the_model_is_refused_with_a_fix_that_works(tmp_path):
    model = conv_model(tmp_path / "m.onnx", [-1, 3, "h", "w"])
    with pytest.raises(InputShapeError, match="fixed size 3 on axis 1") as refused:
        prepare_onnx(model, tmp_path / "out.onnx", {"x": (1, 1, 32, 48)})
    assert prepare_onnx(model, tmp_path / "out.onnx", _pasted_fix(refused.value)).inputs[0].shape == (None, 3, 32, 48)


def test_a_wrong_rank_is_refused_with_a_fix_that_works(tmp_path):
    model = conv_model(tmp_path / "m.onnx", [-1, 3, 8, 8])
    with pytest.raises(InputShapeError, match="rank 4") as refused:
        prepare_onnx(model, tmp_path / "out.onnx", {"x": (3, 8, 8)})
    assert prepare_onnx(model, tmp_path / "out.onnx", _pasted_fix(refused.value)).inputs[0].shape == (None, 3, 8, 8)


def test_non_positive_input_shape_says_to_give_every_axis_a_size():
    with pytest.raises(InputShapeError, match="positive") as refused:
        parse_input_shapes(["x:-1,3,48,192"])
    assert "batch axis stays dynamic" in refused.value.fix
