"""Route propagation latency: the operator's status change → routing ConfigMap → sidecar → first login there.

Runs the integration tier's switchover test
(`tests/integration/test_automatic_failover.py::test_a_switchover_reaches_the_first_login_through_the_proxy_on_the_new_master`)
with ``MAILSHARD_ROUTE_SWITCHOVERS`` planned switchovers instead of the
suite's 2: a real control plane (KWOK pods), the operator, real agents and
Dovecot at the pods' IPs, the real proxy and its routing sidecar's watch. For
each switchover it times, from the moment the MailShard's status first routes
the shard's users to the new master, the new table version at a watch on the
ConfigMap and the first IMAP login through the proxy that the proxy connected
to the new master (logins are started every 50 ms). The test fails if any
switchover's login never comes; this script collects its timings and prints
p50/p99::

    .venv/bin/python bench/route_propagation.py [--switchovers 20]

Needs the built control-plane binaries and Dovecot (the integration tier's
prerequisites); it says which is missing in one line and exits non-zero.
Interrupted (Ctrl-C, SIGTERM), it interrupts pytest, whose fixtures stop the
agents, the proxy, the operator and the control plane.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from types import FrameType

from failover_latency import percentile

REPO = Path(__file__).resolve().parents[1]
TEST = (
    "tests/integration/test_automatic_failover.py"
    "::test_a_switchover_reaches_the_first_login_through_the_proxy_on_the_new_master"
)
STAGES = {
    "request_to_status": "switchover requested -> status routes to the new master",
    "status_to_table": "status -> new table version at a ConfigMap watch",
    "status_to_login": "status -> first login through the proxy on the new master",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--switchovers", type=int, default=20)
    args = parser.parse_args()
    env = dict(os.environ, MAILSHARD_ROUTE_SWITCHOVERS=str(args.switchovers), PYTHONUNBUFFERED="1")
    argv = [sys.executable, "-m", "pytest", TEST, "-m", "integration", "-s", "-q", "-p", "no:cacheprovider"]
    with tempfile.TemporaryFile("w+") as output:
        # Its own session: a Ctrl-C reaches pytest once, through `interrupt`, never twice mid-teardown.
        child = subprocess.Popen(
            argv, cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )

        def interrupt(signum: int, _frame: FrameType | None) -> None:
            # pytest turns SIGINT into KeyboardInterrupt and runs every fixture's teardown.
            child.send_signal(signal.SIGINT)

        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, interrupt)
        try:
            code = child.wait(timeout=args.switchovers * 120 + 600)
        except subprocess.TimeoutExpired:
            child.send_signal(signal.SIGINT)
            code = child.wait(120)
        output.seek(0)
        text = output.read()
    line = next((row for row in text.splitlines() if row.startswith("ROUTE-RESULT ")), None)
    if code != 0 or line is None:
        log = Path(tempfile.mkstemp(prefix="route-propagation-", suffix=".log")[1])
        log.write_text(text)
        skipped = next((row for row in text.splitlines() if "SKIPPED" in row), None)
        reason = skipped or next((row for row in text.splitlines() if row.startswith("E ")), f"pytest exit {code}")
        print(f"route_propagation: no figures ({reason.strip()}); full output: {log}", file=sys.stderr)
        return 1
    figures: dict[str, list[float]] = json.loads(line.removeprefix("ROUTE-RESULT "))
    result = {
        "switchovers": len(figures["status_to_login"]),
        **{
            name: {
                "what": STAGES[name],
                "p50_ms": round(statistics.median(values) * 1000),
                "p99_ms": round(percentile(values, 0.99) * 1000),
                "max_ms": round(max(values) * 1000),
            }
            for name, values in figures.items()
        },
        "goal": "status -> first login on the new master within 1 s",
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
