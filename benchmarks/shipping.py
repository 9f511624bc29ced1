"""Shipping costs, measured in one run: bundle size vs engine, time to bundle / verify / ship, parallel vs sequential.

    python benchmarks/shipping.py [--build-dir build/cpu] [--reps 5]

Without --build-dir the built-in digits example is built first (cached teacher via
EDGECOMPRESS_CACHE). The "devices" are directories behind a throwaway OpenSSH server on
127.0.0.1 (needs `sshd`, see .ci/install-system-deps.sh). Repetitions are interleaved and
medians reported, so the ratios compare like with like on a shared machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edgecompress.ship.bundle import BundleOptions, build_bundle  # noqa: E402
from edgecompress.ship.transport import Destination, SshOptions, ship  # noqa: E402
from edgecompress.ship.signing import generate_keypair  # noqa: E402
from edgecompress.ship.verify import verify_bundle  # noqa: E402
from tests.ship_support import find_sshd, start_sshd, stop_sshd  # noqa: E402

DEVICES = 4


def timed(action) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def example_build(work: Path) -> Path:
    from edgecompress.core.config import load_config
    from edgecompress.pipeline.pipeline import build

    build(load_config(None, {"out": work / "build"}))
    return work / "build" / "cpu"


def ship_all(archive: Path, key_pub: Path, dests: list[Destination], ssh: SshOptions, parallel: int) -> None:
    results = ship(archive, dests, ssh, key_pub, parallel=parallel)
    failed = [r.reason for r in results if not r.ok]
    assert not failed, failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build-dir", type=Path, help="a built target folder (default: build the digits example)")
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    if find_sshd() is None:
        sys.exit("sshd not found: apt-get install openssh-server")
    work = Path(tempfile.mkdtemp(prefix="ec-bench-ship-"))
    target = args.build_dir or example_build(work)
    keys = generate_keypair(work / "signing")
    options = BundleOptions(sign_key=keys.private_path)
    device = start_sshd(work)
    try:
        ssh = SshOptions(key=device.user_key, known_hosts=device.known_hosts, remote_python=sys.executable)
        made = build_bundle(target, work / "bundle.tar.gz", options)
        bundle_s, verify_s, ship_s, sequential_s, parallel_s = [], [], [], [], []
        for rep in range(args.reps):
            bundle_s.append(timed(lambda: build_bundle(target, work / "again.tar.gz", options)))
            verify_s.append(timed(lambda: verify_bundle(made.path, keys.public_path)))
            one = [Destination.parse(device.destination(device.root / f"one-{rep}"))]
            ship_s.append(timed(lambda: ship_all(made.path, keys.public_path, one, ssh, 1)))  # noqa: B023 - timed() calls it now
            if rep < max(2, args.reps // 2):  # four devices per sample: fewer samples
                many = [Destination.parse(device.destination(device.root / f"seq-{rep}-{i}")) for i in range(DEVICES)]
                sequential_s.append(timed(lambda: ship_all(made.path, keys.public_path, many, ssh, 1)))  # noqa: B023 - called now
                many = [Destination.parse(device.destination(device.root / f"par-{rep}-{i}")) for i in range(DEVICES)]
                parallel_s.append(timed(lambda: ship_all(made.path, keys.public_path, many, ssh, DEVICES)))  # noqa: B023 - called now
    finally:
        stop_sshd(device)
    median = statistics.median
    print(f"engine {made.engine_size_bytes / 1024:.1f} KiB, bundle {made.size_bytes / 1024:.1f} KiB "
          f"(bundle/engine {made.size_bytes / made.engine_size_bytes:.2f}x; gzip of int8 weights + runner + samples)")
    print(f"bundle  median {median(bundle_s) * 1000:8.1f} ms  ({len(bundle_s)} runs)")
    print(f"verify  median {median(verify_s) * 1000:8.1f} ms  ({len(verify_s)} runs)")
    print(f"ship    median {median(ship_s) * 1000:8.1f} ms  to one loopback device incl. remote verify + self-test")
    print(f"4 devices: sequential {median(sequential_s):.2f} s, --parallel 4 {median(parallel_s):.2f} s, "
          f"speed-up {median(sequential_s) / median(parallel_s):.2f}x ({len(parallel_s)} interleaved runs each)")


if __name__ == "__main__":
    main()
