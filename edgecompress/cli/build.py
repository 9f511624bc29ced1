"""`edgecompress build`: options mirror the config keys; the command line overrides --config."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from edgecompress.cli import app
from edgecompress.core.config import describe


def _opt(key: str, *flags: str, **kwargs):
    return typer.Option(None, *flags, help=describe(key), show_default=False, **kwargs)


@app.command()
def build(
    model: Optional[str] = _opt("model", "--model", "-m"),
    weights: Optional[Path] = _opt("weights", "--weights"),
    input_shape: Optional[list[str]] = _opt("input_shape", "--input-shape"),
    batch_axis: Optional[list[str]] = _opt("batch_axis", "--batch-axis"),
    target: Optional[list[str]] = _opt("target", "--target", "-t"),
    calib: Optional[Path] = _opt("calib", "--calib"),
    eval_data: Optional[Path] = _opt("eval_data", "--eval-data"),
    out: Optional[Path] = _opt("out", "--out", "-o"),
    calibration_method: Optional[str] = _opt("calibration_method", "--calibration-method"),
    percentile: Optional[float] = _opt("percentile", "--percentile"),
    per_channel: Optional[bool] = _opt("per_channel", "--per-channel/--per-tensor"),
    nodes_to_exclude: Optional[list[str]] = _opt("nodes_to_exclude", "--exclude-node"),
    opset: Optional[int] = _opt("opset", "--opset"),
    exporter: Optional[str] = _opt("exporter", "--exporter"),
    bench_runs: Optional[int] = _opt("bench_runs", "--bench-runs"),
    max_accuracy_drop: Optional[float] = _opt("max_accuracy_drop", "--max-accuracy-drop"),
    min_agreement: Optional[float] = _opt("min_agreement", "--min-agreement"),
    allow_over_budget: Optional[bool] = _opt("allow_over_budget", "--allow-over-budget"),
    task: Optional[list[str]] = _opt("task", "--task"),
    fidelity_budget: Optional[list[str]] = _opt("fidelity_budget", "--fidelity-budget"),
    detect_score_threshold: Optional[float] = _opt("detect_score_threshold", "--detect-score-threshold"),
    detect_nms_iou: Optional[float] = _opt("detect_nms_iou", "--detect-nms-iou"),
    detect_match_iou: Optional[float] = _opt("detect_match_iou", "--detect-match-iou"),
    ctc_blank: Optional[int] = _opt("ctc_blank", "--ctc-blank"),
    sequence_decode: Optional[str] = _opt("sequence_decode", "--sequence-decode"),
    max_excluded_layers: Optional[int] = _opt("max_excluded_layers", "--max-excluded-layers"),
    repair_strategy: Optional[str] = _opt("repair_strategy", "--repair-strategy"),
    precision: Optional[str] = _opt("precision", "--precision"),
    equalize: Optional[str] = _opt("equalize", "--equalize"),
    bias_correction: Optional[str] = _opt("bias_correction", "--bias-correction"),
    diagnose: Optional[bool] = _opt("diagnose", "--diagnose/--no-diagnose"),
    seed: Optional[int] = _opt("seed", "--seed"),
    data: Optional[str] = _opt("data", "--data"),
    teacher: Optional[str] = _opt("teacher", "--teacher"),
    student: Optional[str] = _opt("student", "--student"),
    prune: Optional[str] = _opt("prune", "--prune"),
    prune_ratio: Optional[float] = _opt("prune_ratio", "--prune-ratio"),
    prune_steps: Optional[int] = _opt("prune_steps", "--prune-steps"),
    channel_importance: Optional[str] = _opt("channel_importance", "--channel-importance"),
    epochs: Optional[int] = _opt("epochs", "--epochs"),
    finetune_epochs: Optional[int] = _opt("finetune_epochs", "--finetune-epochs"),
    distill_alpha: Optional[float] = _opt("distill_alpha", "--distill-alpha"),
    distill_temperature: Optional[float] = _opt("distill_temperature", "--distill-temperature"),
    distill_features: Optional[list[str]] = _opt("distill_features", "--distill-feature"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="TOML file with the same keys (underscored); options override it."),
    bundle: bool = typer.Option(False, "--bundle", help="Also pack each target into OUT/<target>/bundle.tar.gz for `edgecompress ship`."),
    sign: Optional[Path] = typer.Option(None, "--sign", help="With --bundle: sign bundles with this key (from `edgecompress keygen`)."),
    passphrase: Optional[str] = typer.Option(None, "--passphrase", envvar="EDGECOMPRESS_KEY_PASSPHRASE", help="Passphrase of the --sign key.", show_default=False),
) -> None:
    """Build verified, benchmarked engines; with no options, the built-in digits example for `cpu`."""
    overrides = {key: value for key, value in locals().items() if key not in ("config", "bundle", "sign", "passphrase")}
    if sign is not None:
        from edgecompress.ship.signing import load_private_key

        load_private_key(sign, passphrase)  # a bad key fails before the build, not after it
    from edgecompress.core.config import load_config
    from edgecompress.pipeline.pipeline import build as run_build
    from edgecompress.core.progress import console, out_console
    from edgecompress.pipeline.report import summary_table

    build_config = load_config(config, overrides)
    reports = run_build(build_config)
    out_console.print(summary_table(reports))
    for report in reports:
        console.print(f"report: {build_config.out / report['target'] / 'report.md'}")
    if bundle or sign is not None:
        from edgecompress.ship.bundle import BundleOptions
        from edgecompress.cli.ship import make_bundles

        targets = [build_config.out / report["target"] for report in reports]
        make_bundles(targets, BundleOptions(sign_key=sign, passphrase=passphrase))
