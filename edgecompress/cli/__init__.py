"""The command line: thin typer commands over the public Python functions.

One module per command; each registers itself on `app`. Errors caused by the user's
input become one line on stderr with the fix and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import sys

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
        "(onnxruntime's own log lines are shown at debug).", case_sensitive=False,
    ),
) -> None:
    """edgecompress: compress, export, quantize, build, verify and ship edge engines."""
    from edgecompress.logs import LEVELS, configure
    from edgecompress.errors import ConfigError

    if log_level.lower() not in LEVELS:
        raise ConfigError(f"unknown --log-level '{log_level}'", f"use one of: {', '.join(LEVELS)}")
    configure(log_level.lower())


from edgecompress.cli import build as _build  # noqa: E402,F401  (registers commands)
from edgecompress.cli import calib as _calib  # noqa: E402,F401
from edgecompress.cli import inspect as _inspect  # noqa: E402,F401
from edgecompress.cli import targets as _targets  # noqa: E402,F401
from edgecompress.cli import ship as _ship  # noqa: E402,F401


def main() -> None:
    from edgecompress.errors import EdgecompressError
    from edgecompress.progress import console

    from rich.markup import escape

    try:
        code = app(standalone_mode=False)  # non-standalone click returns typer.Exit's code instead of raising
        if isinstance(code, int) and code:
            sys.exit(code)
    except EdgecompressError as error:  # escape: messages quote user text such as "[user@]host"
        console.print(f"[bold red]error:[/bold red] {escape(error.problem)}", highlight=False, soft_wrap=True)
        if error.fix:
            console.print(f"  [bold]fix:[/bold] {escape(error.fix)}", highlight=False, soft_wrap=True)
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        console.print("interrupted; finished artifacts are kept, unfinished ones were not written")
        sys.exit(130)
    except typer.Exit as exit_:
        sys.exit(exit_.exit_code)
    except typer.Abort:
        sys.exit(1)
    except Exception as error:  # click usage errors arrive here in non-standalone mode
        import click

        if isinstance(error, click.ClickException):
            error.show()
            sys.exit(error.exit_code)
        raise
