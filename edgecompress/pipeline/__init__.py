"""pipeline: the build — BUILD_STEPS shared by every target, then per target accuracy-aware repair, the precision
choice, one measurement of the engine, and the typed BuildReport written once to report.json, report.md and
latency.png (pipeline.py, repair.py, precision.py, report_types.py, report.py, inspect.py).

May import: core, source, compress, export, calib, quantize, engines, measure, presets.
"""
