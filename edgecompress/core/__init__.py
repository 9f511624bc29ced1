"""core: what every stage shares — user-facing errors (each carrying its fix), artifacts written atomically,
the content-hash cache, target profiles, build options, ONNX Runtime session options, console and progress.

Imports nothing else of edgecompress: every other package may import it.
"""
