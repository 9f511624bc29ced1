"""The command line: thin typer commands over the public Python functions.

One module per command; each registers itself on `app`. Errors caused by the user's
input become one line on stderr with the fix and a non-zero exit, never a traceback.

May import: every package (it is the top of the one-way import order).
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from edgecompress import __version__

app = typer.Typer(
    name="edgecompress",
    help="Take a trained model to a small, fast, verified int8 engine for an edge device.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"edgecompress {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
    log_level: str = typer.Option(
        "warning", "--log-level", help="Least severe log record shown on stderr: debug, info, warning or error "
        "(what onnxruntime, torch, ExecuTorch and transformers print is shown at debug).", case_sensitive=False,
    ),
) -> None:
    """edgecompress: compress, export, quantize, build, verify and ship edge engines."""
    from edgecompress.core.logs import LEVELS, configure
    from edgecompress.core.errors import ConfigError

    if log_level.lower() not in LEVELS:
        raise ConfigError(f"unknown --log-level '{log_level}'", f"use one of: {', '.join(LEVELS)}")
    configure(log_level.lower())


from edgecompress.cli import build as _build  # noqa: E402,F401  (registers commands)
from edgecompress.cli import calib as _calib  # noqa: E402,F401
from edgecompress.cli import inspect as _inspect  # noqa: E402,F401
from edgecompress.cli import targets as _targets  # noqa: E402,F401
from edgecompress.cli import ship as _ship  # noqa: E402,F401


def main() -> None:
    """Run the CLI in typer's standalone mode: usage errors print typer's usage message and exit 2.

    A user's mistake (EdgecompressError) is one `error:` line and one `fix:` line. Anything else is a
    bug of ours: one `internal error:` line naming a log file with the traceback (EDGECOMPRESS_DEBUG=1
    prints it), exit 1.
    """
    from edgecompress.core.errors import EdgecompressError
    from edgecompress.core.progress import console

    from rich.markup import escape

    try:
        app()  # standalone: exits itself on success, usage errors (2) and Ctrl-C (130)
    except EdgecompressError as error:  # escape: messages quote user text such as "[user@]host"
        console.print(f"[bold red]error:[/bold red] {escape(error.problem)}", highlight=False, soft_wrap=True)
        if error.fix:
            console.print(f"  [bold]fix:[/bold] {escape(error.fix)}", highlight=False, soft_wrap=True)
        sys.exit(error.exit_code)
    except Exception as error:  # noqa: BLE001 — the one place that turns a bug into a readable exit
        _report_internal_error(error)
        sys.exit(1)


def _report_internal_error(error: Exception) -> None:
    import os
    import tempfile
    import time
    import traceback

    from rich.markup import escape

    from edgecompress.core.progress import console

    text = "".join(traceback.format_exception(error))
    if os.environ.get("EDGECOMPRESS_DEBUG"):
        sys.stderr.write(text)
    log = _internal_error_log_dir() / f"internal-error-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    try:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(f"edgecompress {__version__}\nargv: {sys.argv}\n\n{text}")
    except OSError:
        log = Path(tempfile.gettempdir()) / log.name
        log.write_text(text)
    console.print(
        f"[bold red]internal error:[/bold red] {escape(type(error).__name__)}: {escape(str(error))} "
        f"— this is a bug in edgecompress; the traceback is in {log} (EDGECOMPRESS_DEBUG=1 prints it)",
        highlight=False,
        soft_wrap=True,
    )


def _internal_error_log_dir() -> Path:
    from edgecompress.core.cache import cache_dir

    return cache_dir() / "logs"
