"""The minimal device-side runner that bundles carry (`run.py`); see edgecompress.bundle."""
