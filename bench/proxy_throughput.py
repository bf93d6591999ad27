"""IMAP through the proxy tier vs. straight to the backend: logins/s, operations/s and the cost per login.

One real Dovecot pair (agents as their own processes, as in pods) and one real
proxy started exactly as the proxy container starts it (``python -m
mailshard.proxy serve``, via `mailshard_harness.local_proxy`), its route file
written by the sidecar's own `apply_table` with every slot on the pair's
master. Both paths are measured in alternating rounds in one run, so the ratio
compares like with like on the same machine:

- logins/s: 4 threads, each LOGIN + LOGOUT on a fresh connection, for
  ``--seconds`` per round;
- operations/s: 4 logged-in sessions, each repeating SELECT INBOX, FETCH 1:*
  FLAGS, NOOP (3 operations) for ``--seconds`` per round;
- latency of one login (connect, greeting, LOGIN) sequentially, p50/p99; the
  difference of the medians is what the proxy adds to a login (its Lua passdb
  reads the route file, then it connects to the backend and replays LOGIN).

Run as root (the daemons run as ``vmail``)::

    .venv/bin/python bench/proxy_throughput.py [--seconds 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import imaplib
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from journal_cost import PASSWORD, _percentile, _start_pair, _stop, _wait_listening
from mailshard.api.routing import RoutingTable, ShardRoute, ShardState, render_table
from mailshard.proxy.render import Endpoint
from mailshard.proxy.sidecar import apply_table
from mailshard_harness.local_proxy import LocalProxy, missing

USERS = 20
THREADS = 4


def _login(port: int, user: str) -> imaplib.IMAP4:
    client = imaplib.IMAP4("127.0.0.1", port, timeout=30)
    client.login(user, PASSWORD)
    return client


def _logins_per_second(port: int, users: list[str], seconds: float) -> float:
    counts = [0] * THREADS
    deadline = time.monotonic() + seconds

    def worker(index: int) -> None:
        n = 0
        while time.monotonic() < deadline:
            _login(port, users[(index + n * THREADS) % len(users)]).logout()
            n += 1
        counts[index] = n

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts) / (time.monotonic() - started)


def _operations_per_second(port: int, users: list[str], seconds: float) -> float:
    counts = [0] * THREADS
    sessions = [_login(port, users[i]) for i in range(THREADS)]
    deadline = time.monotonic() + seconds

    def worker(index: int) -> None:
        client, n = sessions[index], 0
        while time.monotonic() < deadline:
            client.select("INBOX")
            client.fetch("1:*", "(FLAGS)")
            client.noop()
            n += 3
        counts[index] = n

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    for client in sessions:
        client.logout()
    return sum(counts) / elapsed


def _login_latencies(port: int, users: list[str], count: int) -> list[float]:
    latencies = []
    for n in range(count):
        started = time.perf_counter()
        client = _login(port, users[n % len(users)])
        latencies.append(time.perf_counter() - started)
        client.logout()
    return latencies


def _seed(port: int, users: list[str]) -> None:
    """A few messages per user, so FETCH has something to answer."""
    for user in users:
        client = _login(port, user)
        for n in range(5):
            client.append("INBOX", None, None, f"Subject: bench {n}\r\n\r\nbench\r\n".encode())
        client.logout()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per path, measure and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--logins", type=int, default=200, help="sequential logins per path and round")
    args = parser.parse_args()
    problem = missing()
    if problem is not None:
        sys.exit(f"proxy_throughput: {problem}")
    base = Path(tempfile.mkdtemp(prefix="ms-bench-proxy-"))
    users = [f"bench{n:03d}@example.test" for n in range(USERS)]
    (base / "pair").mkdir()
    procs, ports, _socket = _start_pair(base / "pair", users)
    proxy = LocalProxy.start(base / "proxy")
    try:
        _wait_listening(ports["imap"])
        endpoint = Endpoint("127.0.0.1", ports["imap"], ports["pop3"], ports["lmtp"], ports["managesieve"])
        table = RoutingTable(
            version=1,
            slots=("bench",) * 64,
            shards={"bench": ShardRoute(state=ShardState.SERVING, master="a", master_host="a")},
        )
        applied = apply_table(
            render_table(table),
            previous=None,
            routes_file=proxy.routes_file,
            doveadm=proxy.doveadm,
            resolve=lambda host: endpoint,
        )
        if not applied.accepted:
            sys.exit(f"proxy_throughput: the table was refused: {applied.problems}")
        _seed(ports["imap"], users)
        time.sleep(2.0)  # let the replicator catch up, so both paths see a quiet pair
        paths = {"direct": ports["imap"], "proxy": proxy.ports["imap"]}
        logins: dict[str, list[float]] = {name: [] for name in paths}
        operations: dict[str, list[float]] = {name: [] for name in paths}
        latency: dict[str, list[float]] = {name: [] for name in paths}
        for _round in range(args.rounds):
            for name, port in paths.items():
                logins[name].append(_logins_per_second(port, users, args.seconds))
                operations[name].append(_operations_per_second(port, users, args.seconds))
                latency[name] += _login_latencies(port, users, args.logins)
        result: dict[str, object] = {
            name: {
                "logins_per_second": round(statistics.median(logins[name]), 1),
                "operations_per_second": round(statistics.median(operations[name]), 1),
                "login_ms_p50": round(statistics.median(latency[name]) * 1000, 2),
                "login_ms_p99": round(_percentile(latency[name], 0.99) * 1000, 2),
            }
            for name in paths
        }
        result["ratio_logins"] = round(statistics.median(logins["proxy"]) / statistics.median(logins["direct"]), 3)
        result["ratio_operations"] = round(
            statistics.median(operations["proxy"]) / statistics.median(operations["direct"]), 3
        )
        result["added_ms_per_login_p50"] = round(
            (statistics.median(latency["proxy"]) - statistics.median(latency["direct"])) * 1000, 2
        )
        result["rounds"], result["seconds"], result["threads"] = args.rounds, args.seconds, THREADS
        print(json.dumps(result, indent=2))
    finally:
        proxy.stop()
        _stop(list(procs), base / "pair")


if __name__ == "__main__":
    main()
