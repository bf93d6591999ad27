"""Failover latency with everything real but the pods: master kill → first IMAP login through the proxy.

Runs the integration tier's drill (`tests/integration/test_automatic_failover.py
::test_mail_through_the_proxy_survives_master_kills_with_nothing_lost`) with
``MAILSHARD_DRILL_KILLS`` kills instead of the suite's 3: a real control plane
(KWOK pods), the operator deciding, real agents and Dovecot at the pods' IPs,
the real proxy with its routing sidecar watching the API, LMTP streaming
through the proxy during every kill. The drill itself fails if any
acknowledged delivery is lost or duplicated; this script only collects its
timings and prints p50/p99::

    .venv/bin/python bench/failover_latency.py [--kills 100]

Needs the built control-plane binaries and Dovecot (the integration tier's
prerequisites); pytest says which is missing and this exits non-zero.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEST = (
    "tests/integration/test_automatic_failover.py::test_mail_through_the_proxy_survives_master_kills_with_nothing_lost"
)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "p50": round(statistics.median(values), 2),
        "p99": round(percentile(values, 0.99), 2),
        "max": round(max(values), 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--kills", type=int, default=100)
    args = parser.parse_args()
    env = dict(os.environ, MAILSHARD_DRILL_KILLS=str(args.kills), PYTHONUNBUFFERED="1")
    argv = [sys.executable, "-m", "pytest", TEST, "-m", "integration", "-s", "-q", "-p", "no:cacheprovider"]
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    line = next((row for row in done.stdout.splitlines() if row.startswith("DRILL-RESULT ")), None)
    if done.returncode != 0 or line is None:
        log = Path(tempfile.mkstemp(prefix="failover-latency-", suffix=".log")[1])
        log.write_text(done.stdout + done.stderr)
        failures = [row for row in done.stdout.splitlines() if row.startswith("E ")][:10]
        print(f"failover_latency: the drill failed (exit {done.returncode}), no figures; log: {log}", file=sys.stderr)
        print("\n".join(failures), file=sys.stderr)
        return 1
    result = json.loads(line.removeprefix("DRILL-RESULT "))
    print(
        json.dumps(
            {
                "kills": result["kills"],
                "acknowledged_deliveries": result["acknowledged"],
                "lost_or_duplicated": result["lost_or_duplicated"],
                "kill_to_failover_recorded_seconds": summary(result["kill_to_failover_recorded_seconds"]),
                "kill_to_login_through_proxy_seconds": summary(result["kill_to_login_through_proxy_seconds"]),
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
