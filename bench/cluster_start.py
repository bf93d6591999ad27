"""Warm start of the harness' control plane: time to /readyz and to all KWOK nodes Ready.

    .venv/bin/python bench/cluster_start.py [--runs 5] [--nodes 3]

Needs the binaries already built (`make build-k8s`); says so and exits 1 otherwise.
Every instance it starts is stopped, even on Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

from mailshard_harness import build, versions
from mailshard_harness.cluster import ClusterConfig, ControlPlane
from mailshard_harness.errors import HarnessError

_READY = re.compile(r"kube-apiserver ready at \S+ after ([0-9.]+) s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--nodes", type=int, default=3)
    args = parser.parse_args()
    missing = [b.name for b in versions.CONTROL_PLANE_BINARIES if not build.bin_path(b).exists()]
    if missing:
        print(f"cannot run: binaries not built ({', '.join(missing)}); run `make build-k8s` first", file=sys.stderr)
        return 1
    readyz: list[float] = []
    nodes_ready: list[float] = []
    stop_times: list[float] = []
    with tempfile.TemporaryDirectory(prefix="mailshard-bench-") as scratch:
        for run in range(args.runs):
            log = Path(scratch) / f"run-{run}.log"
            started = time.monotonic()
            # The harness reports its own /readyz time on stderr; capture it per run.
            saved = os.dup(2)
            with log.open("w") as out:
                os.dup2(out.fileno(), 2)
                try:
                    plane = ControlPlane.start(
                        ClusterConfig(
                            name=f"bench-{run}",
                            nodes=args.nodes,
                            owner_pid=os.getpid(),
                            directory=Path(scratch) / f"bench-{run}",
                        )
                    )
                except HarnessError as error:
                    os.dup2(saved, 2)
                    print(f"cannot run: {error}", file=sys.stderr)
                    return 1
                finally:
                    os.dup2(saved, 2)
            nodes_ready.append(time.monotonic() - started)
            match = _READY.search(log.read_text())
            if match:
                readyz.append(float(match.group(1)))
            stopping = time.monotonic()
            plane.stop()
            stop_times.append(time.monotonic() - stopping)
    os.close(saved)

    def summary(values: list[float]) -> str:
        median = statistics.median(values)
        return f"median {median:.1f} s (min {min(values):.1f}, max {max(values):.1f}, n={len(values)})"

    print(f"start → apiserver /readyz:   {summary(readyz)}")
    print(f"start → {args.nodes} nodes Ready:      {summary(nodes_ready)}")
    print(f"stop (all processes gone):   {summary(stop_times)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
