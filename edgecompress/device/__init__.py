"""device: what a bundle carries onto the device — the runner (`run.py`), the one safe unpacker and the
preprocessing spec. Standard library + numpy + onnxruntime (Pillow for images) only: these files are copied into
bundles and run where edgecompress is not installed.

May import: core (only behind try/except ImportError, with a stand-in for the device).
"""
