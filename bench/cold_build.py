"""Cold build of every pinned binary into an empty cache: the first-run cost of `make test`.

    .venv/bin/python bench/cold_build.py [--keep]

Builds Kubernetes (5 binaries), KWOK and Helm with the pinned Go into a fresh
temporary MAILSHARD_CACHE (Go module and build caches included, so nothing is
reused), prints the time per group and in total, then deletes the cache unless
--keep. Takes about a quarter of an hour on 2 cores and ~3 GB of disk.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

from mailshard_harness import build, versions
from mailshard_harness.errors import HarnessError


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", action="store_true", help="keep the temporary cache")
    args = parser.parse_args()
    cache = Path(tempfile.mkdtemp(prefix="mailshard-cold-cache-"))
    os.environ["MAILSHARD_CACHE"] = str(cache)
    groups: dict[tuple[str, str], list[versions.GoBinary]] = {}
    for binary in versions.ALL_BINARIES:
        groups.setdefault((binary.module, binary.version), []).append(binary)
    timings: list[tuple[str, float]] = []
    try:
        started = time.monotonic()
        go_started = time.monotonic()
        build.ensure_go()
        timings.append((f"Go {versions.GO_VERSION} toolchain", time.monotonic() - go_started))
        for group in groups.values():
            group_started = time.monotonic()
            build.build_group(group)
            timings.append((", ".join(b.name for b in group), time.monotonic() - group_started))
        total = time.monotonic() - started
    except HarnessError as error:
        print(f"cannot run: {error}", file=sys.stderr)
        return 1
    finally:
        size = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file() and not f.is_symlink())
        if not args.keep:
            shutil.rmtree(cache, ignore_errors=True)
    peak_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    for what, seconds in timings:
        print(f"{what:<70} {seconds:6.0f} s")
    print(f"{'total':<70} {total:6.0f} s")
    print(f"cache size {size / 1024**3:.1f} GiB; peak RSS of one child {peak_rss:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
