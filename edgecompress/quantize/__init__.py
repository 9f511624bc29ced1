"""quantize: fp32 ONNX + calibration set -> int8 QDQ ONNX. The recipe (a dataclass) chosen per target from its
instruction set, static QDQ, cross-layer equalization, bias correction, per-layer diagnosis and inspection.

May import: core, source, export, calib.
"""
