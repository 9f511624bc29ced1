"""`edgecompress calib`: make a calibration set from images, arrays, the digits, text, or from the model alone."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from edgecompress.cli import app
from edgecompress.core.errors import ConfigError

SOURCE_PANEL = "Source and output"
PREPROCESS_PANEL = "Preprocessing (images)"
MODEL_PANEL = "Model"
DATA_FREE_PANEL = "Data-free synthesis (no images)"
TEXT_PANEL = "Text (transformer encoders)"

SOURCE_HELP = "'digits', a folder of JPEG/PNG images (class sub-folders = labels) or a .npy/.npz file"


@app.command()
def calib(
    source: Optional[str] = typer.Option(None, "--from", help=SOURCE_HELP, show_default=False, rich_help_panel=SOURCE_PANEL, metavar="SOURCE"),
    out: Path = typer.Option(..., "--out", "-o", help="where to write the set (.npz); the manifest goes beside it", rich_help_panel=SOURCE_PANEL, metavar="NPZ"),
    count: Optional[int] = typer.Option(None, "--count", "-n", min=1, help="samples in the set (default 128; --data-free 32; --text: the first N lines, default all)", rich_help_panel=SOURCE_PANEL, metavar="N"),
    seed: Optional[int] = typer.Option(None, "--seed", help="seed of the stratified draw (default 0; --text: draw the lines at random instead of taking the first N)", rich_help_panel=SOURCE_PANEL, metavar="INT"),
    recipe: Optional[Path] = typer.Option(None, "--recipe", help="calibration recipe TOML (see calibration/); options override it", rich_help_panel=SOURCE_PANEL, metavar="TOML"),
    size: Optional[int] = typer.Option(None, "--size", help="resize the shorter side to S, then center-crop S×S", rich_help_panel=PREPROCESS_PANEL, metavar="S"),
    resize: Optional[str] = typer.Option(None, "--resize", help="shorter side S, or exact H,W", rich_help_panel=PREPROCESS_PANEL, metavar="S|H,W"),
    crop: Optional[str] = typer.Option(None, "--crop", help="center crop S or H,W", rich_help_panel=PREPROCESS_PANEL, metavar="S|H,W"),
    color: Optional[str] = typer.Option(None, "--color", help="rgb or grayscale (default rgb; digits: grayscale)", rich_help_panel=PREPROCESS_PANEL, metavar="rgb|grayscale"),
    mean: Optional[str] = typer.Option(None, "--mean", help="per-channel mean after scaling to [0,1], e.g. 0.485,0.456,0.406", rich_help_panel=PREPROCESS_PANEL, metavar="M,M,M"),
    std: Optional[str] = typer.Option(None, "--std", help="per-channel std after scaling to [0,1], e.g. 0.229,0.224,0.225", rich_help_panel=PREPROCESS_PANEL, metavar="S,S,S"),
    layout: Optional[str] = typer.Option(None, "--layout", help="NCHW or NHWC (default NCHW)", rich_help_panel=PREPROCESS_PANEL, metavar="NCHW|NHWC"),
    input_name: Optional[str] = typer.Option(None, "--input-name", help="array key in the .npz (default x, or the model's input name)", rich_help_panel=SOURCE_PANEL, metavar="NAME"),
    model: Optional[str] = typer.Option(
        None, "--model", "-m", help="model to check the set against (.onnx: shapes; PyTorch: BatchNorm statistics); "
        "the source of --data-free (unset there: the built-in digits example)"
    , rich_help_panel=MODEL_PANEL, metavar="MODEL"),
    weights: Optional[Path] = typer.Option(None, "--weights", help="state_dict for a package.module:factory --model", rich_help_panel=MODEL_PANEL, metavar="FILE"),
    input_shape: Optional[list[str]] = typer.Option(None, "--input-shape", help="model input shape, e.g. 1,3,224,224", rich_help_panel=MODEL_PANEL, metavar="SHAPE"),
    data_free: bool = typer.Option(False, "--data-free", help="synthesize inputs that match the model's BatchNorm statistics (PyTorch or ONNX; range-only without BN)", rich_help_panel=DATA_FREE_PANEL, metavar=""),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="--data-free: optimization steps per batch of 32, at the model's input size (default: 28 at 224×224, more for smaller inputs, up to 160)", rich_help_panel=DATA_FREE_PANEL, metavar="N"),
    class_loss: float = typer.Option(1.0, "--class-loss", min=0.0, help="--data-free: weight of the loss that makes each sample confidently one class (0 for outputs that are not class scores)", rich_help_panel=DATA_FREE_PANEL, metavar="WEIGHT"),
    text: Optional[Path] = typer.Option(None, "--text", help="UTF-8 text, one sentence or passage per line (blank lines skipped): writes input_ids, attention_mask (+ token_type_ids) as the tokenizer names them", rich_help_panel=TEXT_PANEL, metavar="FILE"),
    tokenizer: Optional[Path] = typer.Option(None, "--tokenizer", help="--text: local Hugging Face tokenizer folder (tokenizer.json, or vocab.txt + tokenizer_config.json); never downloaded", rich_help_panel=TEXT_PANEL, metavar="DIR"),
    max_length: Optional[int] = typer.Option(None, "--max-length", help="--text: tokens per row, padded and truncated to it (the model's sequence length)", rich_help_panel=TEXT_PANEL, metavar="N"),
) -> None:
    """Make a calibration set (arrays + manifest) that every build and target can reuse."""
    from edgecompress.api import make_calibration

    make_calibration(source, out=out, count=count, seed=seed, recipe=recipe, size=size, resize=_ints(resize, "--resize"),
                     crop=_ints(crop, "--crop"), color=color, mean=_floats(mean, "--mean"), std=_floats(std, "--std"),
                     layout=layout, input_name=input_name, model=model, weights=weights, input_shape=input_shape or [],
                     data_free=data_free, steps=steps, class_loss=class_loss, text=text, tokenizer=tokenizer,
                     max_length=max_length)


def _ints(text: str | None, option: str) -> int | list[int] | None:
    if text is None:
        return None
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise ConfigError(f"{option} '{text}' is not S or H,W", f"e.g. {option} 224 or {option} 224,224") from None
    return values[0] if len(values) == 1 else values


def _floats(text: str | None, option: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise ConfigError(f"{option} '{text}' is not a comma-separated list of numbers", f"e.g. {option} 0.5") from None
