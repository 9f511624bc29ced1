"""A fresh install is the truth: what the package imports is declared, and the CLI never shows a traceback
for a usage error (typer bundles its own click; importing `click` broke every usage error in a clean venv)."""

from __future__ import annotations

import importlib
import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

import edgecompress

REPO = Path(__file__).resolve().parent.parent


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    environment = dict(os.environ, PYTHONPATH=str(REPO), COLUMNS="200", **env)
    return subprocess.run(
        [sys.executable, "-m", "edgecompress", *args], capture_output=True, text=True, env=environment, timeout=300
    )


def test_every_module_of_the_package_imports():
    names = [
        m.name for m in pkgutil.walk_packages(edgecompress.__path__, "edgecompress.") if m.name != "edgecompress.__main__"
    ]
    assert len(names) > 30
    for name in names:
        importlib.import_module(name)


def test_nothing_imports_click_directly():
    offenders = [
        str(path.relative_to(REPO))
        for path in (REPO / "edgecompress").rglob("*.py")
        if re.search(r"^\s*(import click|from click\b)", path.read_text(), re.MULTILINE)
    ]
    assert offenders == []


def test_installed_requirements_are_consistent():
    result = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "args, phrase",
    [
        (("build", "--bogus"), "No such option: --bogus"),
        (("nosuchcommand",), "No such command 'nosuchcommand'"),
        (("build", "--target"), "Option '--target' requires an argument"),
        (("build", "--percentile", "notanumber"), "Invalid value for '--percentile'"),
    ],
)
def test_usage_errors_print_usage_and_exit_2(args, phrase):
    result = run_cli(*args)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert phrase in result.stderr


_RAISING_COMMAND = """
import sys
from edgecompress.cli import app, main

@app.command("explode")
def explode() -> None:
    raise RuntimeError("boom from a bug")

sys.argv = ["edgecompress", "explode"]
main()
"""


def _run_raising_command(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    environment = dict(os.environ, PYTHONPATH=str(REPO), EDGECOMPRESS_CACHE=str(tmp_path), COLUMNS="300", **env)
    return subprocess.run(
        [sys.executable, "-c", _RAISING_COMMAND], capture_output=True, text=True, env=environment, timeout=120
    )


def test_an_unexpected_exception_is_one_line_naming_a_log_with_the_traceback(tmp_path):
    result = _run_raising_command(tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("internal error: RuntimeError: boom from a bug")
    logs = list((tmp_path / "logs").glob("internal-error-*.log"))
    assert len(logs) == 1 and str(logs[0]) in result.stderr
    log_text = logs[0].read_text()
    assert "Traceback" in log_text and "boom from a bug" in log_text and "explode" in log_text


def test_edgecompress_debug_prints_the_traceback(tmp_path):
    result = _run_raising_command(tmp_path, EDGECOMPRESS_DEBUG="1")
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "RuntimeError: boom from a bug" in result.stderr
