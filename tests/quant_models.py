"""Tiny real digits classifiers for quantization tests, built in well under a second.

Random conv features + a ridge-regression head fitted in closed form: real torch modules,
real ONNX export, real digits data, ~95% top-1, and no training loop to wait for.
`outlier_scale` makes one channel of the first conv's output huge (and divides the
second conv's weights for it by the same factor), so fp32 is unchanged but int8 per-tensor
activation ranges are ruined at that tensor: a deliberately fragile layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import pytest
import torch
from torch import nn

from edgecompress.source.data import digits_splits

if TYPE_CHECKING:
    from edgecompress.calib.load import CalibrationSet
    from edgecompress.measure.evaluate import EvalSet
    from edgecompress.quantize.recipe import QuantRecipe


class RidgeDigitsNet(nn.Module):
    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 4, stride=4)
        self.conv2 = nn.Conv2d(width, width, 1)
        self.head = nn.Linear(width * 8 * 8, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(torch.relu(self.conv2(torch.relu(self.conv1(x)))), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@torch.no_grad()
def ridge_digits_net(outlier_scale: float = 1.0, seed: int = 0) -> RidgeDigitsNet:
    torch.manual_seed(seed)
    model = RidgeDigitsNet().eval()
    train = digits_splits().train
    feats = model.features(torch.from_numpy(train.x)).double()
    feats = torch.cat([feats, torch.ones(len(feats), 1, dtype=torch.float64)], 1)
    targets = torch.nn.functional.one_hot(torch.from_numpy(train.y), 10).double()
    solution = torch.linalg.solve(feats.T @ feats + 1.0 * torch.eye(feats.shape[1], dtype=torch.float64), feats.T @ targets)
    model.head.weight.copy_(solution[:-1].T.float())
    model.head.bias.copy_(solution[-1].float())
    if outlier_scale != 1.0:  # ReLU is positively homogeneous: fp32 output unchanged
        model.conv1.weight[0] *= outlier_scale
        model.conv1.bias[0] *= outlier_scale
        model.conv2.weight[:, 0] /= outlier_scale
    return model


def export_onnx(model: nn.Module, path: Path, sample: np.ndarray) -> Path:
    torch.onnx.export(
        model, torch.from_numpy(sample[:1]), str(path), input_names=["input"], output_names=["logits"],
        dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}}, dynamo=False,
    )
    return path


@dataclass(frozen=True)
class DigitsQuantCase:
    """A clean and a fragile fp32 model with the data to quantize and evaluate them."""

    clean: Path
    fragile: Path
    calibration: "CalibrationSet"
    eval_set: "EvalSet"
    workdir: Path

    def quantizer(self, fp32: Path) -> Callable[["QuantRecipe"], Path]:
        """recipe -> int8 model, cached by recipe (what the pipeline's quantize stage does)."""
        from edgecompress.core.artifacts import sha256_json
        from edgecompress.quantize.static import quantize_model

        def quantize(recipe: "QuantRecipe") -> Path:
            out = self.workdir / f"{fp32.stem}.{sha256_json(recipe.cache_key())[:12]}.int8.onnx"
            return out if out.is_file() else quantize_model(fp32, self.calibration, recipe, out)

        return quantize


@pytest.fixture(scope="session")
def digits_case(tmp_path_factory: pytest.TempPathFactory) -> DigitsQuantCase:
    from edgecompress.calib.load import calibration_set_from_arrays
    from edgecompress.measure.evaluate import EvalSet
    from edgecompress.export.graph import model_io, read_onnx

    workdir = tmp_path_factory.mktemp("quant")
    splits = digits_splits()
    clean = export_onnx(ridge_digits_net(), workdir / "clean.onnx", splits.val.x)
    fragile = export_onnx(ridge_digits_net(outlier_scale=1000.0), workdir / "fragile.onnx", splits.val.x)
    inputs, _ = model_io(read_onnx(clean))
    calibration = calibration_set_from_arrays({"input": splits.train.x[:128]}, inputs, "digits train")
    eval_set = EvalSet({"input": splits.test.x}, splits.test.y, "digits test")
    return DigitsQuantCase(clean, fragile, calibration, eval_set, workdir)
