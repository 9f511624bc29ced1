"""ship: getting a built engine onto devices — the bundle (manifest, checksums, runner), ed25519 signing,
verification and SSH transport with rollback.

May import: core, device, engines (to self-test a bundle), pipeline (its report type).
"""
