"""Running the CLI in-process, as `edgecompress ...` would, for tests that read its exit code and output."""

from __future__ import annotations

import sys

import pytest

from edgecompress.cli import main


def run_cli(monkeypatch, *args) -> int:
    """`edgecompress ARGS` through the real entry point; its exit code (0 when it returns)."""
    monkeypatch.setattr(sys, "argv", ["edgecompress", *map(str, args)])
    with pytest.raises(SystemExit) as exited:
        main()
        raise SystemExit(0)
    return exited.value.code or 0
