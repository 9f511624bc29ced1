"""The project's logging: one `edgecompress` logger on stderr, at the level the user chose.

onnxruntime's Python quantization helpers log through the root logger (`logging.error(...)`), whose
first call installs a stderr handler of its own: on a real model that printed hundreds of
`ERROR:root:...` lines. Inside `onnxruntime_logs()` those records go through `edgecompress.onnxruntime`
at DEBUG instead, so they show only with `--log-level debug`.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import Iterator

LOGGER_NAME = "edgecompress"
LEVELS = ("debug", "info", "warning", "error")
DEFAULT_LEVEL = "warning"


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is at the time of the record (tests and embedding apps replace it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def configure(level: str = DEFAULT_LEVEL) -> None:
    """Send the project's log records to stderr as `LEVEL: logger: message` from `level` up."""
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(level.upper())
    logger.propagate = False
    if not any(isinstance(handler, _StderrHandler) for handler in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s: %(name)s: %(message)s"))
        logger.addHandler(handler)


class _ForwardAsDebug(logging.Handler):
    def __init__(self, target: logging.Logger) -> None:
        super().__init__()
        self.target = target

    def emit(self, record: logging.LogRecord) -> None:
        self.target.debug("%s: %s", record.levelname.lower(), record.getMessage())


@contextlib.contextmanager
def onnxruntime_logs() -> Iterator[None]:
    """Route root-logger and `onnxruntime` records made inside the block to `edgecompress.onnxruntime` (DEBUG)."""
    forward = _ForwardAsDebug(logging.getLogger(f"{LOGGER_NAME}.onnxruntime"))
    root, ort_logger = logging.getLogger(), logging.getLogger("onnxruntime")
    saved = (root.handlers[:], ort_logger.handlers[:], ort_logger.propagate)
    root.handlers, ort_logger.handlers, ort_logger.propagate = [forward], [forward], False
    try:
        yield
    finally:
        root.handlers, ort_logger.handlers, ort_logger.propagate = saved[0], saved[1], saved[2]
