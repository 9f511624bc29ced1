"""measure: how good and how fast an engine is — fidelity against the fp32 reference, latency (interleaved
with the reference), peak memory of a fresh process. Talks only to engines through `Runner`.

May import: core, source, engines.
"""
