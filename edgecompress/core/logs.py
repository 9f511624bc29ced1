"""The project's logging: one `edgecompress` logger on stderr, at the level the user chose.

onnxruntime's Python quantization helpers log through the root logger (`logging.error(...)`), whose
first call installs a stderr handler of its own: on a real model that printed hundreds of
`ERROR:root:...` lines. Inside `onnxruntime_logs()` those records go through `edgecompress.onnxruntime`
at DEBUG instead, so they show only with `--log-level debug`.

torch, torchao, ExecuTorch and transformers are noisier still, through three channels at once: Python warnings
(`FutureWarning`s from torch's pytree on every export), their own loggers (torchao's "Failed to load
..._C_cutlass_90a.abi3.so", torch's `W1207 ... _pytree.py:630] <enum 'KernelPreference'>`) and native code writing
to file descriptor 2 (ExecuTorch's `[cpuinfo_utils.cpp:87] Failed to open midr file`). `third_party_output()` catches
all three around the calls that make them and logs them at DEBUG, so the tool's own lines come first.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import warnings
from types import FrameType
from typing import IO, Iterator

LOGGER_NAME = "edgecompress"
LEVELS = ("debug", "info", "warning", "error")
DEFAULT_LEVEL = "warning"


# the console while `third_party_output()` has file descriptor 2 redirected: the project's own records still show
_console: IO[str] | None = None


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is at the time of the record (tests and embedding apps replace it)."""

    @property
    def stream(self):
        return _console or sys.stderr

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


NOISY_LIBRARIES = ("torch", "torchao", "executorch", "transformers")
_NOISY_LOGGERS = ("torch", "torch._export", "torch.utils._pytree", "torch.onnx", "onnxscript", "torchao", "executorch",
                  "transformers")
_NOISY_WARNINGS = (DeprecationWarning, PendingDeprecationWarning, FutureWarning, UserWarning)
_WARNING_HELPERS = ("typing_extensions", "deprecated")  # @deprecated decorators: the warning is their caller's
_active = False  # third_party_output() nests as one block: fd 2 is redirected once


@contextlib.contextmanager
def third_party_output(name: str) -> Iterator[None]:
    """Log what torch, torchao, ExecuTorch and transformers print inside the block to `edgecompress.<name>` at DEBUG.

    Their warnings, their loggers' records and whatever native code writes to file descriptor 2 are collected and
    logged after the block (shown with `--log-level debug`). If the block raises, the native output is logged at
    WARNING instead: it is often the only explanation of the error. Records of ERROR and above keep their level.
    File descriptor 2 is process-wide, so wrap the third-party calls themselves, never code that prints our own lines.
    """
    global _active
    if _active:
        yield
        return
    _active = True
    collected: list[tuple[int, str]] = []
    native: list[str] = []
    failed = False
    try:
        with _library_warnings(collected), _library_loggers(collected), _native_stderr(native):
            yield
    except BaseException:
        failed = True
        raise
    finally:
        _active = False
        logger = logging.getLogger(f"{LOGGER_NAME}.{name}")
        for level, text in collected:
            logger.log(level, "%s", text)
        for line in native:
            logger.log(logging.WARNING if failed else logging.DEBUG, "%s", line)


def _issued_by_library(depth: int = 2) -> bool:
    """Whether the code that called `warnings.warn` belongs to a noisy library: the first frame out from the warnings
    machinery that is neither the standard library's nor a deprecation decorator's (torch's pytree warns through
    typing_extensions' @deprecated, called from `copyreg` when deepcopy copies a LeafSpec)."""
    frame: FrameType | None = sys._getframe(depth)
    while frame is not None:
        module = str(frame.f_globals.get("__name__", ""))
        top = module.split(".")[0]
        if top not in sys.stdlib_module_names and top not in _WARNING_HELPERS and module != __name__:
            return top in NOISY_LIBRARIES
        frame = frame.f_back
    return False


@contextlib.contextmanager
def _library_warnings(collected: list[tuple[int, str]]) -> Iterator[None]:
    with warnings.catch_warnings():
        show = warnings.showwarning

        def collect(message, category, filename, lineno, file=None, line=None) -> None:
            if issubclass(category, _NOISY_WARNINGS) and _issued_by_library():
                collected.append((logging.DEBUG, f"{category.__name__}: {message} ({filename}:{lineno})"))
            else:
                show(message, category, filename, lineno, file, line)

        warnings.showwarning = collect
        yield


class _Collect(logging.Handler):
    def __init__(self, collected: list[tuple[int, str]]) -> None:
        super().__init__()
        self.collected = collected

    def emit(self, record: logging.LogRecord) -> None:
        level = record.levelno if record.levelno >= logging.ERROR else logging.DEBUG
        self.collected.append((level, f"{record.name}: {record.levelname.lower()}: {record.getMessage()}"))


@contextlib.contextmanager
def _library_loggers(collected: list[tuple[int, str]]) -> Iterator[None]:
    collect = _Collect(collected)
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    saved = [(logger.handlers[:], logger.propagate) for logger in loggers]
    for logger in loggers:
        logger.handlers, logger.propagate = [collect], False
    try:
        yield
    finally:
        for logger, (handlers, propagate) in zip(loggers, saved):
            added = [h for h in logger.handlers if h is not collect and h not in handlers]
            # a library imported inside the block configured its logger (torch does on import): keep what it chose
            logger.handlers = handlers + added
            if not added:
                logger.propagate = propagate


@contextlib.contextmanager
def _native_stderr(lines: list[str]) -> Iterator[None]:
    """File descriptor 2 goes to a temporary file inside the block; its text lands in `lines`. The project's own
    log records keep going to the console meanwhile."""
    global _console
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no usable fd 2 (embedded interpreters): collect nothing
        yield
        return
    try:
        console_is_fd2 = sys.stderr.fileno() == 2
    except (OSError, ValueError, AttributeError):  # replaced by a test or an app: it is not fd 2
        console_is_fd2 = False
    console = os.fdopen(saved, "w", errors="backslashreplace", closefd=False)
    try:
        with tempfile.TemporaryFile() as capture:
            os.dup2(capture.fileno(), 2)
            _console = console if console_is_fd2 else None
            try:
                yield
            finally:
                _console = None
                with contextlib.suppress(OSError, ValueError):
                    sys.stderr.flush()
                os.dup2(saved, 2)
                capture.seek(0)
                text = capture.read().decode("utf-8", "replace")
                lines.extend(line.rstrip() for line in text.splitlines() if line.strip())
    finally:
        console.close()
        os.close(saved)
