"""`edgecompress build`: options mirror the config keys; the command line overrides --config."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from edgecompress.cli import app
from edgecompress.core.config import describe


# Help panels, in the order a user needs them: what to build, where, within which budget, then the finer knobs.
MODEL_PANEL = "Model and data"
TARGET_PANEL = "Targets and measurement"
BUDGET_PANEL = "Accuracy budget and task metric"
QUANT_PANEL = "Quantization and repair"
COMPRESS_PANEL = "Compression (PyTorch models)"
BUNDLE_PANEL = "Bundle and signing"

EPILOG = "\n\n".join([
    "[bold]Most used[/bold]",
    "edgecompress build   [dim]# the built-in example, for this CPU[/dim]",
    "edgecompress build -m model.onnx --calib calib.npz -t cpu -t jetson",
    "edgecompress build -m pkg.mod:factory --weights net.pt --data train.npz --prune channels",
])


def _opt(key: str, *flags: str, panel: str, metavar: str | None = None, **kwargs):
    """An option whose help is the config key's description and default (one text for CLI, TOML and API)."""
    return typer.Option(None, *flags, help=describe(key), show_default=False, rich_help_panel=panel, metavar=metavar, **kwargs)


@app.command(epilog=EPILOG)
def build(
    model: Optional[str] = _opt("model", "--model", "-m", panel=MODEL_PANEL, metavar="MODEL"),
    weights: Optional[Path] = _opt("weights", "--weights", panel=MODEL_PANEL, metavar="FILE"),
    pooling: Optional[str] = _opt("pooling", "--pooling", panel=MODEL_PANEL, metavar="POOLING"),
    input_shape: Optional[list[str]] = _opt("input_shape", "--input-shape", panel=MODEL_PANEL, metavar="NAME:SHAPE"),
    batch_axis: Optional[list[str]] = _opt("batch_axis", "--batch-axis", panel=MODEL_PANEL, metavar="NAME:AXIS"),
    calib: Optional[Path] = _opt("calib", "--calib", panel=MODEL_PANEL, metavar="NPZ"),
    eval_data: Optional[Path] = _opt("eval_data", "--eval-data", panel=MODEL_PANEL, metavar="NPZ"),
    out: Optional[Path] = _opt("out", "--out", "-o", panel=MODEL_PANEL, metavar="DIR"),
    seed: Optional[int] = _opt("seed", "--seed", panel=MODEL_PANEL, metavar="INT"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="TOML file with the same keys (underscored); options override it.", rich_help_panel=MODEL_PANEL, metavar="TOML"),
    target: Optional[list[str]] = _opt("target", "--target", "-t", panel=TARGET_PANEL, metavar="NAME"),
    opset: Optional[int] = _opt("opset", "--opset", panel=TARGET_PANEL, metavar="N"),
    exporter: Optional[str] = _opt("exporter", "--exporter", panel=TARGET_PANEL, metavar="EXPORTER"),
    bench_runs: Optional[int] = _opt("bench_runs", "--bench-runs", panel=TARGET_PANEL, metavar="N"),
    bench_warmup: Optional[int] = _opt("bench_warmup", "--bench-warmup", panel=TARGET_PANEL, metavar="N"),
    bench_max_seconds: Optional[float] = _opt("bench_max_seconds", "--bench-max-seconds", panel=TARGET_PANEL, metavar="S"),
    export_tolerance: Optional[float] = _opt("export_tolerance", "--export-tolerance", panel=MODEL_PANEL, metavar="TOL"),
    precision: Optional[str] = _opt("precision", "--precision", panel=TARGET_PANEL, metavar="PRECISION"),
    max_accuracy_drop: Optional[float] = _opt("max_accuracy_drop", "--max-accuracy-drop", panel=BUDGET_PANEL, metavar="POINTS"),
    min_agreement: Optional[float] = _opt("min_agreement", "--min-agreement", panel=BUDGET_PANEL, metavar="FRACTION"),
    allow_over_budget: Optional[bool] = _opt("allow_over_budget", "--allow-over-budget", panel=BUDGET_PANEL, metavar=""),
    task: Optional[list[str]] = _opt("task", "--task", panel=BUDGET_PANEL, metavar="[OUTPUT=]TASK"),
    fidelity_budget: Optional[list[str]] = _opt("fidelity_budget", "--fidelity-budget", panel=BUDGET_PANEL, metavar="[OUTPUT=]VALUE"),
    detect_score_threshold: Optional[float] = _opt("detect_score_threshold", "--detect-score-threshold", panel=BUDGET_PANEL, metavar="SCORE"),
    detect_nms_iou: Optional[float] = _opt("detect_nms_iou", "--detect-nms-iou", panel=BUDGET_PANEL, metavar="IOU"),
    detect_match_iou: Optional[float] = _opt("detect_match_iou", "--detect-match-iou", panel=BUDGET_PANEL, metavar="IOU"),
    ctc_blank: Optional[int] = _opt("ctc_blank", "--ctc-blank", panel=BUDGET_PANEL, metavar="CLASS"),
    sequence_decode: Optional[str] = _opt("sequence_decode", "--sequence-decode", panel=BUDGET_PANEL, metavar="DECODE"),
    calibration_method: Optional[str] = _opt("calibration_method", "--calibration-method", panel=QUANT_PANEL, metavar="METHOD"),
    percentile: Optional[float] = _opt("percentile", "--percentile", panel=QUANT_PANEL, metavar="P"),
    per_channel: Optional[bool] = _opt("per_channel", "--per-channel/--per-tensor", panel=QUANT_PANEL, metavar=""),
    nodes_to_exclude: Optional[list[str]] = _opt("nodes_to_exclude", "--exclude-node", panel=QUANT_PANEL, metavar="NODE"),
    max_excluded_layers: Optional[int] = _opt("max_excluded_layers", "--max-excluded-layers", panel=QUANT_PANEL, metavar="N"),
    repair_strategy: Optional[str] = _opt("repair_strategy", "--repair-strategy", panel=QUANT_PANEL, metavar="STRATEGY"),
    equalize: Optional[str] = _opt("equalize", "--equalize", panel=QUANT_PANEL, metavar="MODE"),
    bias_correction: Optional[str] = _opt("bias_correction", "--bias-correction", panel=QUANT_PANEL, metavar="MODE"),
    diagnose: Optional[bool] = _opt("diagnose", "--diagnose/--no-diagnose", panel=QUANT_PANEL, metavar=""),
    qat: Optional[str] = _opt("qat", "--qat", panel=QUANT_PANEL, metavar="MODE"),
    qat_steps: Optional[int] = _opt("qat_steps", "--qat-steps", panel=QUANT_PANEL, metavar="N"),
    qat_minutes: Optional[float] = _opt("qat_minutes", "--qat-minutes", panel=QUANT_PANEL, metavar="MIN"),
    qat_patience: Optional[int] = _opt("qat_patience", "--qat-patience", panel=QUANT_PANEL, metavar="CHECKS"),
    qat_processes: Optional[int] = _opt("qat_processes", "--qat-processes", panel=QUANT_PANEL, metavar="N"),
    qat_lr: Optional[float] = _opt("qat_lr", "--qat-lr", panel=QUANT_PANEL, metavar="LR"),
    qat_ranges: Optional[str] = _opt("qat_ranges", "--qat-ranges", panel=QUANT_PANEL, metavar="RANGES"),
    qat_augment: Optional[bool] = _opt("qat_augment", "--qat-augment/--no-qat-augment", panel=QUANT_PANEL, metavar=""),
    data: Optional[str] = _opt("data", "--data", panel=COMPRESS_PANEL, metavar="DATA"),
    teacher: Optional[str] = _opt("teacher", "--teacher", panel=COMPRESS_PANEL, metavar="MODEL"),
    student: Optional[str] = _opt("student", "--student", panel=COMPRESS_PANEL, metavar="MODEL"),
    prune: Optional[str] = _opt("prune", "--prune", panel=COMPRESS_PANEL, metavar="METHOD"),
    prune_ratio: Optional[float] = _opt("prune_ratio", "--prune-ratio", panel=COMPRESS_PANEL, metavar="FRACTION"),
    prune_steps: Optional[int] = _opt("prune_steps", "--prune-steps", panel=COMPRESS_PANEL, metavar="N"),
    channel_importance: Optional[str] = _opt("channel_importance", "--channel-importance", panel=COMPRESS_PANEL, metavar="RANKING"),
    epochs: Optional[int] = _opt("epochs", "--epochs", panel=COMPRESS_PANEL, metavar="N"),
    finetune_epochs: Optional[int] = _opt("finetune_epochs", "--finetune-epochs", panel=COMPRESS_PANEL, metavar="N"),
    distill_alpha: Optional[float] = _opt("distill_alpha", "--distill-alpha", panel=COMPRESS_PANEL, metavar="ALPHA"),
    distill_temperature: Optional[float] = _opt("distill_temperature", "--distill-temperature", panel=COMPRESS_PANEL, metavar="T"),
    distill_features: Optional[list[str]] = _opt("distill_features", "--distill-feature", panel=COMPRESS_PANEL, metavar="STUDENT=TEACHER"),
    bundle: bool = typer.Option(False, "--bundle", help="Also pack each target into OUT/<target>/bundle.tar.gz for `edgecompress ship`.", rich_help_panel=BUNDLE_PANEL, metavar=""),
    sign: Optional[Path] = typer.Option(None, "--sign", help="With --bundle: sign bundles with this key (from `edgecompress keygen`).", rich_help_panel=BUNDLE_PANEL, metavar="KEY"),
    passphrase: Optional[str] = typer.Option(None, "--passphrase", envvar="EDGECOMPRESS_KEY_PASSPHRASE", help="Passphrase of the --sign key.", show_default=False, rich_help_panel=BUNDLE_PANEL, metavar="TEXT"),
) -> None:
    """Build verified, benchmarked engines; with no options, the built-in digits example for `cpu`."""
    overrides = {key: value for key, value in locals().items() if key not in ("config", "bundle", "sign", "passphrase")}
    if sign is not None:
        from edgecompress.ship.signing import load_private_key

        load_private_key(sign, passphrase)  # a bad key fails before the build, not after it
    from edgecompress.core.config import load_config
    from edgecompress.engines import checked_profiles

    build_config = load_config(config, overrides)
    checked_profiles(build_config.target)  # a mistyped target fails in a second, before the pipeline imports torch
    from edgecompress.core.progress import console, out_console
    from edgecompress.pipeline.pipeline import build as run_build
    from edgecompress.pipeline.report import summary_table

    reports = run_build(build_config)
    out_console.print(summary_table(reports, out_console.width))
    for report in reports:
        console.print(f"report: {build_config.out / report['target'] / 'report.md'}")
    if bundle or sign is not None:
        from edgecompress.ship.bundle import BundleOptions
        from edgecompress.cli.ship import make_bundles

        targets = [build_config.out / report["target"] for report in reports]
        make_bundles(targets, BundleOptions(sign_key=sign, passphrase=passphrase))
