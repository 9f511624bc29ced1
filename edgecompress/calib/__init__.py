"""Calibration sets: one `.npz` of model inputs (+ a manifest), made by `edgecompress calib`."""

from edgecompress.calib.load import CalibrationSet, load_calibration_set

from edgecompress.calib.manifest import arrays_sha256

__all__ = ["CalibrationSet", "arrays_sha256", "load_calibration_set"]
