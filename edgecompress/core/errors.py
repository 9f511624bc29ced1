"""User-facing errors.

Every mistake a user can make has its own exception type carrying the fix, so the
CLI can print one clear line and exit non-zero without a traceback.
"""

from __future__ import annotations


class EdgecompressError(Exception):
    """Base for errors caused by the user's input; `fix` says what to do instead."""

    exit_code = 2

    def __init__(self, problem: str, fix: str = "") -> None:
        super().__init__(problem)
        self.problem = problem
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.problem} — {self.fix}" if self.fix else self.problem


class ModelLoadError(EdgecompressError):
    """The model file, factory or weights could not be loaded."""


class InputShapeError(EdgecompressError):
    """--input-shape does not fit the model's inputs."""


class TargetError(EdgecompressError):
    """Unknown target or an invalid target profile."""


class CalibrationError(EdgecompressError):
    """Calibration data is missing, empty, non-finite or the wrong shape."""


class ConfigError(EdgecompressError):
    """An unknown config key or a bad value."""


class ExportError(EdgecompressError):
    """torch.onnx.export failed or ONNX Runtime disagrees with PyTorch."""


class QuantizationError(EdgecompressError):
    """Static quantization failed."""


class EngineBuildError(EdgecompressError):
    """An engine builder rejected the model (e.g. an op the target cannot run)."""


class BudgetNotMetError(EdgecompressError):
    """The accuracy budget could not be met; the best engine found was kept."""

    exit_code = 3


class BudgetError(EdgecompressError):
    """The accuracy budget is out of range or cannot be measured (e.g. it needs labels)."""


class BuildDirError(EdgecompressError):
    """The folder given is not a built target (no readable report.json)."""


class TrainingError(EdgecompressError):
    """Training cannot start or resume (e.g. a checkpoint written by a different run)."""


class TrainingDataError(EdgecompressError):
    """Labelled training data (--data) is missing, unreadable or does not fit the model."""


class DistillationError(EdgecompressError):
    """Teacher and student do not fit together, or the distillation options are inconsistent."""


class PruningError(EdgecompressError):
    """A pruning option is out of range, or the structured pruner cannot follow the model."""


class BundleError(EdgecompressError):
    """A build folder cannot be bundled, or a bundle is unsafe, tampered or mis-signed."""


class SigningKeyError(EdgecompressError):
    """A signing or SSH key file is missing, unreadable, malformed or its passphrase is wrong."""


class ShipError(EdgecompressError):
    """A destination is malformed or shipping to it failed (carries the host's reason)."""


class CalibrationChecksumError(CalibrationError):
    """A calibration set's arrays do not match the sha256 in its manifest."""


class DataFreeError(CalibrationError):
    """Data-free calibration is impossible for this model (no BatchNorm statistics to match)."""


class DeviceOnlyEngineError(EdgecompressError):
    """The engine is a device kit: it is built and runs on the device, so this host cannot load it."""
