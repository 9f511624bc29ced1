"""`edgecompress inspect BUILD_DIR/TARGET`: what quantization did to each layer, worst first."""

from __future__ import annotations

from pathlib import Path

import typer

from edgecompress.cli import app


@app.command()
def inspect(
    target_dir: Path = typer.Argument(..., help="a target folder of a build, e.g. build/cpu (holds report.json)"),
    top: int = typer.Option(15, "--top", "-n", min=1, help="how many layers (and slowest nodes) to list"),
    operators: bool = typer.Option(True, "--operators/--no-operators",
                                   help="run the engine under ONNX Runtime's profiler: time per operator type, slowest "
                                        "nodes, float islands between int8 ops"),
    runs: int = typer.Option(20, "--runs", min=1, help="profiled runs of the engine (batch 1) for the operator breakdown"),
) -> None:
    """Print the per-layer int8 error table, the recipe, the repair tries, the precision choice, and where the
    engine's time goes per operator."""
    from edgecompress.core.progress import out_console
    from edgecompress.pipeline.inspect import inspection_tables, operator_profile, operator_tables
    from edgecompress.pipeline.report_types import load_report

    report = load_report(target_dir)
    for table in inspection_tables(report, top):
        out_console.print(table)
    if operators:
        profile = operator_profile(target_dir, report, runs, top)
        for table in [profile] if isinstance(profile, str) else operator_tables(report.target, profile, top):
            out_console.print(table)
