"""`edgecompress targets`: the device profiles a build can name."""

from __future__ import annotations

from edgecompress.cli import app


@app.command()
def targets() -> None:
    """List the target profiles in targets/ (pass a profile .toml path to --target for your own)."""
    from rich.table import Table

    from edgecompress.engines import describe_profile
    from edgecompress.core.progress import out_console
    from edgecompress.core.targets import all_profiles

    table = Table(title="target profiles")
    for column in ("name", "engine", "arch", "precisions", "threads", "batch", "options; here", "description"):
        table.add_column(column)
    for profile in all_profiles():
        table.add_row(
            profile.name + (f" → {profile.alias_of}" if profile.alias_of else ""),
            profile.engine,
            profile.arch,
            ",".join(profile.precisions),
            str(profile.threads or "all"),
            f"{profile.batch.min}/{profile.batch.opt}/{profile.batch.max}",
            describe_profile(profile),
            profile.description,
        )
    out_console.print(table)
    out_console.print(
        "here: what a build on this host makes (plan = TensorRT engine, device kit = build on the device, "
        ".ort runs here on the listed providers)"
    )
