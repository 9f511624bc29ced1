"""Quiet by default: what torch, torchao, ExecuTorch and transformers print goes to the debug log.

`third_party_output()` catches their Python warnings, their loggers' records and what native code writes to file
descriptor 2, and logs all of it to `edgecompress.<name>` at DEBUG; a failure inside shows the native output at WARNING.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
import textwrap
import warnings

import pytest

from edgecompress.core.logs import LOGGER_NAME, third_party_output

NOISY_IMPORT = textwrap.dedent("""
    import sys
    from edgecompress.core.logs import configure, third_party_output

    configure(sys.argv[1])
    with third_party_output("probe"):
        import torchao  # noqa: F401  (logs missing CUDA kernels, and torch warns about its enums)
""")


def _import_torchao_at(level: str) -> str:
    completed = subprocess.run([sys.executable, "-c", NOISY_IMPORT, level], capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    return completed.stderr


needs_torchao = pytest.mark.skipif(importlib.util.find_spec("torchao") is None, reason="torchao is not installed")


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.seen: list[tuple[str, int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append((record.name, record.levelno, record.getMessage()))


@pytest.fixture
def project_log():
    """The project's logger at DEBUG with only a recording handler, restored afterwards."""
    logger = logging.getLogger(LOGGER_NAME)
    saved = (logger.handlers[:], logger.level, logger.propagate)
    records = _Records()
    logger.handlers, logger.propagate = [records], False
    logger.setLevel(logging.DEBUG)
    yield records.seen
    logger.handlers, logger.propagate = saved[0], saved[2]
    logger.setLevel(saved[1])


@needs_torchao
def test_a_noisy_import_prints_nothing_at_the_default_level():
    assert _import_torchao_at("warning") == ""


@needs_torchao
def test_with_debug_every_line_of_a_noisy_import_is_a_debug_record_of_the_project():
    lines = _import_torchao_at("debug").splitlines()
    assert lines, "torchao's import printed nothing to show"
    assert all(line.startswith("DEBUG: edgecompress.probe: ") for line in lines), lines
    assert any("torch" in line for line in lines)


def test_native_writes_to_fd_2_are_logged_at_debug_and_not_shown(project_log, capfd):
    with third_party_output("probe"):
        os.write(2, b"[cpuinfo_utils.cpp:87] Failed to open midr file\n")
    assert project_log == [("edgecompress.probe", logging.DEBUG, "[cpuinfo_utils.cpp:87] Failed to open midr file")]
    assert "midr" not in capfd.readouterr().err


def test_an_error_inside_is_raised_and_the_native_output_is_logged_at_warning(project_log):
    with pytest.raises(RuntimeError, match="load failed"):
        with third_party_output("probe"):
            os.write(2, b"XNNPACK: unsupported op\n")
            raise RuntimeError("load failed")
    assert project_log == [("edgecompress.probe", logging.WARNING, "XNNPACK: unsupported op")]


def test_the_projects_own_records_inside_are_not_captured(project_log):
    with third_party_output("probe"):
        logging.getLogger(f"{LOGGER_NAME}.build").warning("int8 misses the budget")
    assert project_log == [("edgecompress.build", logging.WARNING, "int8 misses the budget")]


# torch's pytree deprecates a class with typing_extensions' @deprecated, which warns from inside typing_extensions
PYTREE = textwrap.dedent("""
    from typing_extensions import deprecated

    @deprecated("LeafSpec is deprecated", category=FutureWarning)
    class LeafSpec:
        pass

    LeafSpec()
""")


def test_library_warnings_become_debug_records_and_others_pass_through(project_log):
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        with third_party_output("probe"):
            exec(compile(PYTREE, "_pytree.py", "exec"), {"__name__": "torch.utils._pytree"})
            warnings.warn("the model's own warning", UserWarning, stacklevel=1)
    assert [str(w.message) for w in shown] == ["the model's own warning"]
    assert project_log == [("edgecompress.probe", logging.DEBUG, "FutureWarning: LeafSpec is deprecated (_pytree.py:8)")]


def test_library_log_warnings_become_debug_and_errors_keep_their_level(project_log):
    torchao = logging.getLogger("torchao")
    before = (torchao.handlers[:], torchao.propagate)
    with third_party_output("probe"):
        torchao.warning("Failed to load _C_cutlass_90a.abi3.so")
        logging.getLogger("torch._export").error("export failed")
    assert project_log == [("edgecompress.probe", logging.DEBUG, "torchao: warning: Failed to load _C_cutlass_90a.abi3.so"),
                           ("edgecompress.probe", logging.ERROR, "torch._export: error: export failed")]
    assert (torchao.handlers, torchao.propagate) == before
