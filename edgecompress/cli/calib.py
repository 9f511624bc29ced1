"""`edgecompress calib`: make a calibration set from images, arrays, the digits, text, or from the model alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

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
    from edgecompress.calib.generate import load_recipe, make_calibration_set, make_recipe
    from edgecompress.calib.manifest import check_out_path
    from edgecompress.core.progress import info

    check_out_path(out)
    fields: dict[str, Any] = load_recipe(recipe).model_dump(exclude_unset=True) if recipe else {}
    given = {"source": source, "count": count, "seed": seed, "input_name": input_name}
    fields.update({key: value for key, value in given.items() if value is not None})
    overrides = _preprocess_overrides(size, resize, crop, color, mean, std, layout)
    if overrides:
        fields["preprocess"] = {**(fields.get("preprocess") or _default_preprocess(fields.get("source"))), **overrides}
    if text is not None or tokenizer is not None or max_length is not None:
        conflicting = {"--from": source, "--recipe": recipe, "--data-free": data_free, "--steps": steps, "--input-name": input_name,
                       **overrides}
        made = _text(text, tokenizer, max_length, count, seed, [option for option, value in conflicting.items() if value],
                     model, weights, input_shape or [], out)
    elif data_free:
        made = _data_free(fields, model, weights, input_shape or [], steps, class_loss, out)
    else:
        if not fields.get("source"):
            raise ConfigError("no calibration source given", "pass --from DIR|FILE.npz|digits, --recipe FILE or --data-free")
        source_model = _load_model(model, weights, input_shape or []) if model else None
        fields.setdefault("input_name", _single_input_name(source_model))
        made = make_calibration_set(make_recipe(fields), out, source_model)
    info(f"wrote {out} ({made.manifest['count']} samples, sha256 {made.sha256[:12]}) and {out.with_suffix('.json')}")


def _text(text, tokenizer, max_length, count, seed, conflicting, model, weights, input_shape, out):
    from edgecompress.calib.text import make_text_calibration_set

    if conflicting:
        raise ConfigError(f"--text makes a set from text lines; {', '.join(conflicting)} do not apply to it",
                          f"drop {', '.join(conflicting)}, or drop --text, --tokenizer and --max-length")
    if text is None or tokenizer is None or max_length is None:
        missing = [option for option, value in (("--text", text), ("--tokenizer", tokenizer), ("--max-length", max_length))
                   if value is None]
        raise ConfigError(f"a text calibration set needs {', '.join(missing)} too",
                          "pass --text FILE --tokenizer DIR --max-length N")
    source_model = _load_model(model, weights, input_shape) if model else None
    return make_text_calibration_set(text, tokenizer, max_length, out, count, seed, source_model)


def _data_free(fields, model, weights, input_shape, steps, class_loss, out):
    from edgecompress.calib.datafree import DataFreeConfig, make_data_free_set, single_input, synthesis_module
    from edgecompress.calib.generate import make_recipe

    if fields.get("source"):
        raise ConfigError("--data-free makes inputs from the model, not from --from", "drop --from, or drop --data-free")
    source_model = _load_model(model, weights, input_shape)
    synthesis_module(source_model)  # a TorchScript model or an ONNX op the runner lacks fails here, before the shape question
    name, shape = single_input(source_model)
    spec = make_recipe({**fields, "source": source_model.name}).spec() or _example_spec(source_model)
    config = DataFreeConfig(steps=steps, class_loss_weight=class_loss, seed=fields.get("seed", 0))
    return make_data_free_set(
        source_model, shape, fields.get("count", 32), out, config, spec, fields.get("input_name", name), source_model.name
    )


def _example_spec(source_model):
    """The built-in example's preprocessing bounds its synthetic pixels like real digits."""
    from edgecompress.source.data import DIGITS_SPEC
    from edgecompress.core.config import EXAMPLE_NAME

    return DIGITS_SPEC if source_model.name == EXAMPLE_NAME else None


def _load_model(model: str | None, weights: Path | None, input_shape: list[str]):
    from edgecompress.presets.example import load_model_or_example

    return load_model_or_example(model, weights, input_shape)


def _single_input_name(source_model) -> str:
    """Key the set by the model's input name when it has exactly one (else the neutral `x`)."""
    shapes = getattr(source_model, "input_shapes", {}) or {}
    names = [name for name in shapes if name]
    if getattr(source_model, "onnx_path", None) is not None:
        from edgecompress.export.graph import model_io, read_onnx

        names = [spec.name for spec in model_io(read_onnx(source_model.onnx_path))[0]]
    return names[0] if len(names) == 1 else "x"


def _preprocess_overrides(size, resize, crop, color, mean, std, layout) -> dict[str, Any]:
    values = {
        "resize": size if size is not None else _ints(resize, "--resize"),
        "center_crop": size if size is not None else _ints(crop, "--crop"),
        "color": color,
        "mean": _floats(mean, "--mean"),
        "std": _floats(std, "--std"),
        "layout": layout.upper() if layout else None,
    }
    return {key: value for key, value in values.items() if value is not None}


def _default_preprocess(source: str | None) -> dict[str, Any]:
    from edgecompress.calib.sources import default_spec

    return default_spec(source or "").to_dict()


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
