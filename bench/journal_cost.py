"""What the delivery journal costs: LMTP through the agent's journaling front vs. straight into the daemon.

One real Dovecot pair, each agent its own process (``python -m
mailshard.agent``, as in a pod) with its HTTP API up, over which the front
writes each accepted message to the replica's journal. Three
paths into the same master, measured in alternating rounds in one run:

- ``daemon``: the daemon's own LMTP socket, no front, no journal (the path
  before the journal existed, and what a plain Dovecot pair offers);
- ``front``: the member's LMTP port, i.e. the front, journaling on the replica
  (one HTTP round trip and one fsync there per message) before the 250;
- ``front, replica away``: the front with the replica's API unreachable
  (connection refused): the relay's own cost, nothing journaled.

Per path: one connection, messages one after another (latency per message,
p50/p99), then 4 connections in parallel (messages per second). Run as root
(the daemon runs as ``vmail``) or any user::

    .venv/bin/python bench/journal_cost.py [--messages 300] [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import smtplib
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

USERS = 20
PASSWORD = "bench-password"
PORT_NAMES = ("imap", "pop3", "lmtp", "managesieve", "doveadm", "agent")


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def _message(user: str, tag: str) -> bytes:
    return f"To: {user}\r\nSubject: bench\r\nMessage-ID: <{tag}.{user}@bench>\r\n\r\nbench {tag}\r\n".encode()


def _sequential(target: str | int, users: list[str], count: int, tag: str) -> list[float]:
    """Seconds per message, one session, one message after another."""
    host, port = (target, 0) if isinstance(target, str) else ("127.0.0.1", target)
    latencies = []
    with smtplib.LMTP(host, port) as lmtp:
        for n in range(count):
            user = users[n % len(users)]
            started = time.perf_counter()
            refused = lmtp.sendmail("bench@example.test", [user], _message(user, f"{tag}.{n}"))
            latencies.append(time.perf_counter() - started)
            if refused:
                raise RuntimeError(f"refused: {refused}")
    return latencies


def _parallel(target: str | int, users: list[str], count: int, tag: str, connections: int = 4) -> float:
    """Messages per second over `connections` sessions."""

    def one(offset: int) -> None:
        _sequential(target, users[offset::connections] or users, count // connections, f"{tag}{offset}")

    started = time.perf_counter()
    with ThreadPoolExecutor(connections) as pool:
        list(pool.map(one, range(connections)))
    return (count // connections) * connections / (time.perf_counter() - started)


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def _start_pair(base: Path, users: list[str]) -> tuple[list[subprocess.Popen[bytes]], dict[str, int], Path]:
    """Master and replica agents as their own processes (as in pods), each with its API; returns the master's ports."""
    base.chmod(0o755)
    (base / "users").write_text("".join(f"{user}:{{PLAIN}}{PASSWORD}::::::\n" for user in users))
    (base / "users").chmod(0o644)
    (base / "token").write_text("bench\n")
    names = ("a", "b")
    ports = [
        dict(zip(("imap", "pop3", "lmtp", "managesieve", "doveadm", "agent"), _free_ports(6), strict=True))
        for _ in names
    ]
    procs = []
    for i, name in enumerate(names):
        root = base / name
        (root / "data").mkdir(parents=True)
        for directory in (root, root / "data"):
            directory.chmod(0o755)
        other = ports[1 - i]
        config = {
            "shard": "bench",
            "member": name,
            "listenAddress": "127.0.0.1",
            "ports": {key: value for key, value in ports[i].items() if key != "agent"},
            "peer": {
                "name": names[1 - i],
                "host": "127.0.0.1",
                "doveadmPort": other["doveadm"],
                "agentPort": other["agent"],
            },
            "usersFile": str(base / "users"),
            "doveadmPassword": "bench-secret",
        }
        (root / "runtime.json").write_text(json.dumps(config))
        (root / "role").write_text("master" if name == "a" else "replica")
        argv = [sys.executable, "-m", "mailshard.agent", "--config", str(root / "runtime.json")]
        argv += ["--role-file", str(root / "role"), "--data-dir", str(root / "data")]
        argv += ["--listen", f"127.0.0.1:{ports[i]['agent']}", "--token-file", str(base / "token")]
        log = open(root / "agent.log", "ab")  # noqa: SIM115 - the child keeps it
        procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
    return procs, ports[0], base / "a" / "data" / "run" / "lmtp"


def _wait_listening(port: int, within: float = 60) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"journal_cost: nothing listens on {port} after {within:.0f}s")


def _stop(procs: list[subprocess.Popen[bytes]], base: Path) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    for pid_file in base.glob("*/data/run/master.pid"):
        with contextlib.suppress(OSError, ValueError):
            os.killpg(int(pid_file.read_text().strip()), signal.SIGKILL)
    shutil.rmtree(base, ignore_errors=True)


def _status(port: int) -> dict[str, object]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/status", headers={"Authorization": "Bearer bench"})
    with urllib.request.urlopen(request, timeout=5) as response:
        document: dict[str, object] = json.load(response)
    return document


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--messages", type=int, default=300, help="messages per path and round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if shutil.which("dovecot") is None:
        sys.exit("journal_cost: dovecot is not installed (run .ci/install-mail-deps)")
    base = Path(tempfile.mkdtemp(prefix="ms-bench-"))
    users = [f"bench{n:03d}@example.test" for n in range(USERS)]
    procs, ports, socket_path = _start_pair(base, users)
    try:
        _wait_listening(ports["lmtp"])
        time.sleep(2.0)  # the replicator's start-up full sync
        front = ports["lmtp"]
        paths: list[tuple[str, str | int]] = [("daemon", str(socket_path)), ("front", front)]
        latency: dict[str, list[float]] = {"daemon": [], "front": [], "front, replica away": []}
        rate: dict[str, list[float]] = {name: [] for name in latency}
        for round_number in range(args.rounds):
            for name, target in paths:
                tag = f"{name}{round_number}"
                latency[name] += _sequential(target, users, args.messages, tag)
                rate[name].append(_parallel(target, users, args.messages, tag + "p"))
        os.killpg(procs[1].pid, signal.SIGKILL)  # the replica's agent is gone: journal writes are refused at once
        procs[1].wait()
        for round_number in range(args.rounds):
            name, tag = "front, replica away", f"away{round_number}"
            latency[name] += _sequential(front, users, args.messages, tag)
            rate[name].append(_parallel(front, users, args.messages, tag + "p"))
        result: dict[str, object] = {
            name: {
                "latency_ms_p50": round(statistics.median(values) * 1000, 2),
                "latency_ms_p99": round(_percentile(values, 0.99) * 1000, 2),
                "messages_per_second_4_connections": round(statistics.median(rate[name]), 1),
                "samples": len(values),
            }
            for name, values in latency.items()
        }
        result["master_journal_counters"] = _status(ports["agent"])["journal"]
        print(json.dumps(result, indent=2))
    finally:
        _stop(procs, base)


if __name__ == "__main__":
    main()
