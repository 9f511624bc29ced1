"""`edgecompress inspect BUILD_DIR/TARGET`: what quantization did to each layer, worst first."""

from __future__ import annotations

from pathlib import Path

import typer

from edgecompress.cli import app


@app.command()
def inspect(
    target_dir: Path = typer.Argument(..., help="a target folder of a build, e.g. build/cpu (holds report.json)"),
    top: int = typer.Option(15, "--top", "-n", min=1, help="how many layers to list, most damaged first"),
) -> None:
    """Print the per-layer int8 error table, the recipe, the repair tries and the precision choice."""
    from edgecompress.core.progress import out_console
    from edgecompress.pipeline.inspect import inspection_tables
    from edgecompress.pipeline.report_types import load_report

    for table in inspection_tables(load_report(target_dir), top):
        out_console.print(table)
