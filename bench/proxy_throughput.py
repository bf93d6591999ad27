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
- the ratios proxy/direct of both, against the goal of issue 5 (≥ 0.85);
- latency of one login (connect, greeting, LOGIN) sequentially, p50/p99; the
  difference of the medians is what the proxy adds to a login (its Lua passdb
  reads the route file, then it connects to the backend and replays LOGIN);
- the lookup alone, per login: the proxy's auth server asked exactly as its
  login process asks it (``AUTH PLAIN`` on the ``auth-client`` socket), p50/p99,
  with the bench's table and then with a large one (1024 slots in 256 runs and
  ``--overrides`` moved users), because the Lua passdb reads the whole route
  file at every lookup.

Run as root (the daemons run as ``vmail``)::

    .venv/bin/python bench/proxy_throughput.py [--seconds 10] [--rounds 3] [--overrides 10000]

It prints one JSON document; when it cannot run it says why in one line and
exits non-zero. Interrupted (Ctrl-C, SIGTERM), it still stops every daemon and
removes its directory.
"""

from __future__ import annotations

import argparse
import base64
import imaplib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from journal_cost import PASSWORD, _percentile, _start_pair, _stop, _wait_listening
from mailshard.api import proxy_pod
from mailshard.api.routing import RoutingTable, ShardRoute, ShardState, render_table
from mailshard.proxy.render import Endpoint
from mailshard.proxy.sidecar import apply_table
from mailshard_harness.local_proxy import LocalProxy, missing

USERS = 20
THREADS = 4
GOAL_RATIO = 0.85
"""Issue 5: IMAP through the proxy at least 0.85 of direct, for logins/s and operations/s."""


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


def _lookup_latencies(auth_client: Path, users: list[str], count: int) -> list[float]:
    """Seconds per passdb lookup, asked as the proxy's login process asks for each login (auth-client protocol)."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(auth_client))
        answers = sock.makefile("rb")
        sock.sendall(f"VERSION\t1\t2\nCPID\t{os.getpid()}\n".encode())
        while not answers.readline().startswith(b"DONE"):
            pass
        latencies = []
        for n in range(count + 20):  # the first 20 warm the auth worker up and are not counted
            user = users[n % len(users)]
            response = base64.b64encode(f"\0{user}\0{PASSWORD}".encode()).decode()
            started = time.perf_counter()
            sock.sendall(f"AUTH\t{n + 1}\tPLAIN\tservice=imap\tresp={response}\n".encode())
            answer = answers.readline()
            if n >= 20:
                latencies.append(time.perf_counter() - started)
            if not answer.startswith(f"OK\t{n + 1}\t".encode()) or b"\tproxy" not in answer:
                raise SystemExit(f"proxy_throughput: the passdb lookup of {user} failed: {answer!r}")
    return latencies


def _large_table(overrides: int) -> RoutingTable:
    """1024 slots in 256 runs over 8 shards, and `overrides` users moved on their own: a big cluster's table."""
    shards = {f"s{n}": ShardRoute(state=ShardState.SERVING, master=f"s{n}-a", master_host="a") for n in range(8)}
    return RoutingTable(
        version=2,
        slots=tuple(f"s{slot // 4 % 8}" for slot in range(1024)),
        shards=shards,
        overrides={f"moved{n:06d}@example.test": f"s{n % 8}" for n in range(overrides)},
    )


def _lookups(proxy: LocalProxy, table: RoutingTable, users: list[str], count: int) -> dict[str, object]:
    latencies = _lookup_latencies(proxy_pod.run_dir(proxy.root) / "auth-client", users, count)
    return {
        "slot_runs": len(table.runs()),
        "overrides": len(table.overrides),
        "route_file_bytes": proxy.routes_file.stat().st_size,
        "lookup_ms_p50": round(statistics.median(latencies) * 1000, 3),
        "lookup_ms_p99": round(_percentile(latencies, 0.99) * 1000, 3),
        "lookups": len(latencies),
    }


def _seed(port: int, users: list[str]) -> None:
    """A few messages per user, so FETCH has something to answer."""
    for user in users:
        client = _login(port, user)
        for n in range(5):
            client.append("INBOX", None, None, f"Subject: bench {n}\r\n\r\nbench\r\n".encode())
        client.logout()


def _interrupted(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


@dataclass
class Started:
    """What `_measure` started, as soon as it is started, for `main` to stop whatever happens."""

    agents: list[subprocess.Popen[bytes]] = field(default_factory=list)
    proxy: LocalProxy | None = None


def _measure(args: argparse.Namespace, base: Path, users: list[str], started: Started) -> dict[str, object]:
    (base / "pair").mkdir()
    procs, ports, _socket = _start_pair(base / "pair", users)
    started.agents += procs
    proxy = started.proxy = LocalProxy.start(base / "proxy")
    _wait_listening(ports["imap"])
    endpoint = Endpoint("127.0.0.1", ports["imap"], ports["pop3"], ports["lmtp"], ports["managesieve"])
    table = RoutingTable(
        version=1,
        slots=("bench",) * 64,
        shards={"bench": ShardRoute(state=ShardState.SERVING, master="a", master_host="a")},
    )

    def apply(table: RoutingTable, previous: RoutingTable | None) -> None:
        applied = apply_table(
            render_table(table),
            previous=previous,
            routes_file=proxy.routes_file,
            doveadm=proxy.doveadm,
            resolve=lambda host: endpoint,
        )
        if not applied.accepted:
            raise SystemExit(f"proxy_throughput: the table was refused: {applied.problems}")

    apply(table, None)
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
    ratios = {
        "logins": round(statistics.median(logins["proxy"]) / statistics.median(logins["direct"]), 3),
        "operations": round(statistics.median(operations["proxy"]) / statistics.median(operations["direct"]), 3),
    }
    result["ratio_logins"], result["ratio_operations"] = ratios["logins"], ratios["operations"]
    result["goal_ratio"] = GOAL_RATIO
    result["below_goal"] = sorted(name for name, ratio in ratios.items() if ratio < GOAL_RATIO)
    result["added_ms_per_login_p50"] = round(
        (statistics.median(latency["proxy"]) - statistics.median(latency["direct"])) * 1000, 2
    )
    lookups = {"bench_table": _lookups(proxy, table, users, args.lookups)}
    large = _large_table(args.overrides)
    apply(large, None)  # another cluster's table, not a successor of the first
    lookups["large_table"] = _lookups(proxy, large, users, args.lookups)
    result["lookup_per_login"] = lookups
    result["rounds"], result["seconds"], result["threads"] = args.rounds, args.seconds, THREADS
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per path, measure and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--logins", type=int, default=200, help="sequential logins per path and round")
    parser.add_argument("--lookups", type=int, default=2000, help="passdb lookups per table")
    parser.add_argument("--overrides", type=int, default=10000, help="moved users in the large table")
    args = parser.parse_args()
    problem = missing()
    if problem is not None:
        print(f"proxy_throughput: {problem}", file=sys.stderr)
        return 1
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupted)
    base = Path(tempfile.mkdtemp(prefix="ms-bench-proxy-"))
    base.chmod(0o755)  # the daemons run as vmail and must reach their files below it
    users = [f"bench{n:03d}@example.test" for n in range(USERS)]
    started = Started()
    try:
        result = _measure(args, base, users, started)
    except KeyboardInterrupt as interrupt:
        print(f"proxy_throughput: interrupted ({interrupt or 'SIGINT'}), no figures", file=sys.stderr)
        return 130
    except RuntimeError as error:
        print(f"proxy_throughput: {str(error).splitlines()[0]}", file=sys.stderr)
        return 1
    finally:
        if started.proxy is not None:
            started.proxy.stop()
        _stop(started.agents, base / "pair")
        shutil.rmtree(base, ignore_errors=True)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
