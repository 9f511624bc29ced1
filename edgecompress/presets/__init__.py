"""presets: the built-in example and other ready-made option sets — options, not code paths.

May import: core, source, compress.
"""
