"""Shared rich console and progress bar, so every long stage looks and behaves the same."""

from __future__ import annotations

import os
import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

# progress and messages go to stderr; results (tables) to stdout. Pipes get a wide,
# uncoloured console so tables are not cut at 80 columns in logs and CI.
console = Console(stderr=True, width=None if sys.stderr.isatty() else 140)
out_console = Console(width=None if sys.stdout.isatty() else 140)
quiet = bool(os.environ.get("EDGECOMPRESS_QUIET"))


def progress_bar() -> Progress:
    """A transient progress bar on stderr; disabled when not a terminal-like session or quiet."""
    return Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=quiet or not sys.stderr.isatty(),
    )


def info(message: str) -> None:
    if not quiet:
        console.print(message)


def warn(message: str) -> None:
    """One line, never wrapped, so that logs and scripts can grep a warning whole."""
    console.print(f"[yellow]warning:[/yellow] {message}", soft_wrap=True)


_warned: set[str] = set()


def warn_once(message: str) -> None:
    """`warn`, but a message already given in this process is not repeated (e.g. once per engine load)."""
    if message not in _warned:
        _warned.add(message)
        warn(message)
