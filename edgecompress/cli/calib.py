"""`edgecompress calib`: make a calibration set from images, arrays, the digits, or from the model alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from edgecompress.errors import ConfigError, InputShapeError

SOURCE_HELP = "'digits', a folder of JPEG/PNG images (class sub-folders = labels) or a .npy/.npz file"


def calib(
    source: Optional[str] = typer.Option(None, "--from", help=SOURCE_HELP, show_default=False),
    out: Path = typer.Option(..., "--out", "-o", help="where to write the set (.npz); the manifest goes beside it"),
    count: Optional[int] = typer.Option(None, "--count", "-n", min=1, help="samples in the set [default: 128]"),
    seed: Optional[int] = typer.Option(None, "--seed", help="seed of the stratified draw [default: 0]"),
    recipe: Optional[Path] = typer.Option(None, "--recipe", help="a calibration recipe TOML (see calibration/)"),
    size: Optional[int] = typer.Option(None, "--size", help="resize the shorter side to S, then center-crop S×S"),
    resize: Optional[str] = typer.Option(None, "--resize", help="shorter side S, or exact H,W"),
    crop: Optional[str] = typer.Option(None, "--crop", help="center crop S or H,W"),
    color: Optional[str] = typer.Option(None, "--color", help="rgb or grayscale"),
    mean: Optional[str] = typer.Option(None, "--mean", help="per-channel mean after scaling, e.g. 0.485,0.456,0.406"),
    std: Optional[str] = typer.Option(None, "--std", help="per-channel std after scaling, e.g. 0.229,0.224,0.225"),
    layout: Optional[str] = typer.Option(None, "--layout", help="NCHW or NHWC"),
    input_name: Optional[str] = typer.Option(None, "--input-name", help="array key in the .npz [default: x]"),
    model: Optional[str] = typer.Option(
        None, "--model", help="PyTorch model: the source of --data-free, else checked against the set's BatchNorm"
    ),
    data_free: bool = typer.Option(False, "--data-free", help="synthesize inputs from the model's BatchNorm statistics"),
    input_shape: Optional[str] = typer.Option(None, "--input-shape", help="model input shape for --data-free, e.g. 1,3,224,224"),
    steps: int = typer.Option(200, "--steps", help="--data-free optimization steps per batch"),
    class_loss: float = typer.Option(0.0, "--class-loss", help="--data-free weight of the spread-over-classes loss"),
) -> None:
    """Make a calibration set (arrays + manifest) that every build and target can reuse."""
    from edgecompress.calib.generate import CalibRecipe, load_recipe, make_calibration_set
    from edgecompress.progress import info

    overrides = _preprocess_overrides(size, resize, crop, color, mean, std, layout)
    base = load_recipe(recipe) if recipe else None
    fields: dict[str, Any] = base.model_dump() if base else {}
    fields.update({k: v for k, v in {"source": source, "count": count, "seed": seed, "input_name": input_name}.items() if v is not None})
    if overrides:
        fields["preprocess"] = {**(fields.get("preprocess") or _default_preprocess(fields.get("source"))), **overrides}
    torch_model = _load_model(model) if model else None
    if data_free:
        made = _data_free(fields, torch_model, model, input_shape, steps, class_loss, out)
    else:
        if not fields.get("source"):
            raise ConfigError("no calibration source given", "pass --from DIR|FILE|digits, --recipe FILE or --data-free")
        made = make_calibration_set(CalibRecipe(**fields), out, torch_model)
    info(f"wrote {out} ({made.manifest['count']} samples, sha256 {made.sha256[:12]}) and {out.with_suffix('.json')}")


def _data_free(fields, torch_model, model_name, input_shape, steps, class_loss, out):
    from edgecompress.calib.datafree import DataFreeConfig, make_data_free_set
    from edgecompress.calib.generate import CalibRecipe

    if torch_model is None or not input_shape:
        raise ConfigError("--data-free needs --model and --input-shape", "e.g. --model m.pt --input-shape 1,3,224,224")
    spec = CalibRecipe(source="data-free", **{k: v for k, v in fields.items() if k != "source"}).spec()
    config = DataFreeConfig(steps=steps, class_loss_weight=class_loss, seed=fields.get("seed", 0))
    count = fields.get("count", 64)
    return make_data_free_set(
        torch_model, _shape(input_shape), count, out, config, spec, fields.get("input_name", "x"), model_name
    )


def _preprocess_overrides(size, resize, crop, color, mean, std, layout) -> dict[str, Any]:
    values = {
        "resize": size if size is not None else _ints(resize, "--resize"),
        "center_crop": size if size is not None else _ints(crop, "--crop"),
        "color": color,
        "mean": _floats(mean, "--mean"),
        "std": _floats(std, "--std"),
        "layout": layout.upper() if layout else None,
    }
    return {k: v for k, v in values.items() if v is not None}


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


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) < 2 or any(d < 1 for d in shape):
        raise InputShapeError(f"--input-shape '{text}' is not a list of positive sizes", "e.g. --input-shape 1,3,224,224")
    return shape


def _load_model(reference: str):
    """A PyTorch model for --model: 'example', a zoo name, or a file saved with torch.save(model)."""
    import torch

    from edgecompress.errors import ModelLoadError
    from edgecompress.zoo import ZOO, build_model

    if reference == "example":
        from edgecompress.example import example_teacher

        return example_teacher()
    if reference in ZOO:
        return build_model(reference)
    path = Path(reference)
    if path.suffix in (".onnx",):
        raise ModelLoadError(
            f"'{reference}' is ONNX: BatchNorm statistics and gradients need the PyTorch model",
            "pass the PyTorch model (.pt saved with torch.save(model), or the example)",
        )
    try:
        return torch.load(path, weights_only=False)
    except (OSError, RuntimeError, ValueError) as exc:
        raise ModelLoadError(f"cannot load PyTorch model '{reference}': {exc}", "pass a file saved with torch.save(model)") from exc
