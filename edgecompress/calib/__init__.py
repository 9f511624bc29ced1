"""calib: calibration sets — one `.npz` of model inputs + a manifest, made by `edgecompress calib` (image folders,
arrays, digits, text + a tokenizer, data-free synthesis), checked against the model, read by quantize and measure.

May import: core, source, device (the preprocessing spec), export (to read a model's inputs).
"""

from edgecompress.calib.load import CalibrationSet, load_calibration_set

from edgecompress.calib.manifest import arrays_sha256

__all__ = ["CalibrationSet", "arrays_sha256", "load_calibration_set"]
