"""Our own IMAP load generator (imaptest is not packaged): one member's throughput with and without replication.

Each of ``--clients`` clients runs sessions in a loop, as a mail client that
checks in would: connect and LOGIN, SELECT INBOX, FETCH the ten most recent
messages (UID, FLAGS, size and three header fields), one write, LOGOUT. The
write alternates: an IMAP APPEND of a 2 KiB message in even sessions, an LMTP
delivery of one to the member's LMTP port (the agent's journaling front, as
an MTA would) in odd ones. Each of those five steps is one operation; LOGIN
includes the connection and greeting. Reported per setup: sessions/s,
operations/s, p50/p99 latency per operation, errors (the first one named),
and how much of one core the generator itself used, since it shares the
machine with the members.

Two setups per backend, both started before measuring and measured in
alternating rounds (lone, pair, then pair, lone, ...) so that other load on
the machine falls on both alike:

- ``lone master``: a master whose replica is down (its address configured,
  nothing listening): no replication, and each delivery's journal write is
  refused at once;
- ``replicating pair``: master and replica up; every change replicates, and
  every LMTP delivery is journaled on the replica before its 250. Between
  rounds the pair is let converge, and the time it took is reported.

Each user starts with 20 messages. Run as root (the daemons run as
``vmail``) or any user; Cyrus needs the prefix of ``.ci/install-cyrus-prefix``::

    .venv/bin/python bench/imap_load.py [--backend dovecot|cyrus|both] [--clients 8] [--seconds 20] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from local_mail import (
    PASSWORD,
    CannotRunError,
    Member,
    Members,
    check_can_run,
    in_sync,
    machine,
    master_ready,
    percentile,
    run,
    together,
    wait_for,
)
from mailshard.agent.lmtp import LmtpClient, LmtpError
from mailshard.backends import Backend

OPERATIONS = ("login", "select", "fetch", "append", "lmtp", "logout")
STEP_TIMEOUT = 30.0
PRELOAD_PER_USER = 20
_LITERAL = re.compile(rb"\{(\d+)\}\r\n$")
_EXISTS = re.compile(rb"^\* (\d+) EXISTS")


class ImapError(Exception):
    pass


class Imap:
    """Just enough IMAP4rev1 for the load: tagged commands, literals in answers, APPEND with a literal."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.tags = 0

    @classmethod
    async def connect(cls, port: int) -> Imap:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        greeting = await reader.readline()
        if not greeting.startswith(b"* OK"):
            writer.close()
            raise ImapError(f"greeting {greeting[:60]!r}")
        return cls(reader, writer)

    async def _line(self) -> bytes:
        line = await self.reader.readline()
        if not line:
            raise ImapError("the server closed the connection")
        while match := _LITERAL.search(line):
            line += await self.reader.readexactly(int(match.group(1)))
            line += await self.reader.readline()
        return line

    async def _answer(self, tag: bytes) -> list[bytes]:
        untagged: list[bytes] = []
        while True:
            line = await self._line()
            if line.startswith(tag + b" "):
                if line.split(b" ", 2)[1] != b"OK":
                    raise ImapError(line.decode(errors="replace").strip())
                return untagged
            untagged.append(line)

    def _tag(self) -> bytes:
        self.tags += 1
        return b"c%d" % self.tags

    async def command(self, text: str) -> list[bytes]:
        tag = self._tag()
        self.writer.write(tag + b" " + text.encode() + b"\r\n")
        return await self._answer(tag)

    async def append(self, mailbox: str, message: bytes) -> None:
        tag = self._tag()
        self.writer.write(tag + f" APPEND {mailbox} {{{len(message)}}}\r\n".encode())
        ready = await self._line()
        if not ready.startswith(b"+"):
            raise ImapError(f"APPEND not continued: {ready[:60]!r}")
        self.writer.write(message + b"\r\n")
        await self._answer(tag)

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


def _message(user: str, tag: str) -> bytes:
    body = b"".join(b"line %d of a message of about two kilobytes, for the load.\r\n" % n for n in range(32))
    head = f"From: load@example.test\r\nTo: {user}\r\nSubject: load {tag}\r\nMessage-ID: <{tag}@load.test>\r\n\r\n"
    return head.encode() + body


@dataclass
class Tally:
    latencies: dict[str, list[float]] = field(default_factory=lambda: {name: [] for name in OPERATIONS})
    sessions: int = 0
    errors: int = 0
    first_error: str | None = None


async def _timed(tally: Tally, operation: str, step: Any) -> Any:
    started = time.perf_counter()
    result = await asyncio.wait_for(step, STEP_TIMEOUT)
    tally.latencies[operation].append(time.perf_counter() - started)
    return result


async def _deliver(port: int, user: str, message: bytes) -> None:
    client = await LmtpClient.connect(("127.0.0.1", port), "load.test", within=STEP_TIMEOUT)
    try:
        answers = await client.deliver("load@example.test", [user], message)
    finally:
        await client.close()
    refused = [f"{answer.code} {answer.text}" for answer in answers.values() if not answer.ok]
    if refused:
        raise LmtpError(f"LMTP refused {user}: {refused[0]}")


async def _session(member: Member, user: str, tally: Tally, write: str, tag: str) -> None:
    imap = await _timed(tally, "login", _login(member.ports["imap"], user))
    try:
        selected = await _timed(tally, "select", imap.command("SELECT INBOX"))
        exists = max((int(m.group(1)) for line in selected if (m := _EXISTS.match(line))), default=0)
        if exists:
            fetch = f"FETCH {max(1, exists - 9)}:* (UID FLAGS RFC822.SIZE BODY.PEEK[HEADER.FIELDS (FROM SUBJECT DATE)])"
            await _timed(tally, "fetch", imap.command(fetch))
        if write == "append":
            await _timed(tally, "append", imap.append("INBOX", _message(user, tag)))
        else:
            await _timed(tally, "lmtp", _deliver(member.ports["lmtp"], user, _message(user, tag)))
        await _timed(tally, "logout", imap.command("LOGOUT"))
    finally:
        await imap.close()


async def _login(port: int, user: str) -> Imap:
    imap = await Imap.connect(port)
    await imap.command(f'LOGIN "{user}" "{PASSWORD}"')
    return imap


async def _client(number: int, member: Member, users: list[str], *, until: float, tally: Tally, label: str) -> None:
    round_number = 0
    while time.monotonic() < until:
        user = users[(number * 7 + round_number) % len(users)]
        write = "append" if round_number % 2 == 0 else "lmtp"
        try:
            await _session(member, user, tally, write, f"{label}.{number}.{round_number}")
            tally.sessions += 1
        except (ImapError, LmtpError, OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            tally.errors += 1
            tally.first_error = tally.first_error or f"{type(exc).__name__}: {exc}"
            await asyncio.sleep(0.1)
        round_number += 1


async def measure(member: Member, users: list[str], clients: int, seconds: float, label: str) -> dict[str, Any]:
    tally = Tally()
    cpu, started = time.process_time(), time.monotonic()
    until = started + seconds
    await together(*(_client(n, member, users, until=until, tally=tally, label=label) for n in range(clients)))
    elapsed = time.monotonic() - started
    operations = sum(len(values) for values in tally.latencies.values())
    return {
        "sessions_per_second": round(tally.sessions / elapsed, 1),
        "operations_per_second": round(operations / elapsed, 1),
        "latency_ms": {
            name: {"p50": round(statistics.median(values) * 1000, 1), "p99": round(percentile(values, 0.99) * 1000, 1)}
            for name, values in tally.latencies.items()
            if values
        },
        "errors": tally.errors,
        "first_error": tally.first_error,
        "generator_core_share": round((time.process_time() - cpu) / elapsed, 2),
        "seconds": round(elapsed, 1),
    }


async def _preload(member: Member, users: list[str]) -> None:
    """Give every user PRELOAD_PER_USER messages, over a few LMTP sessions at once."""

    async def one_user(user: str) -> None:
        for index in range(PRELOAD_PER_USER):
            await _deliver(member.ports["lmtp"], user, _message(user, f"{member.name}.preload.{index}"))

    for start in range(0, len(users), 8):
        await together(*(one_user(user) for user in users[start : start + 8]))


def _combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Rounds of one setup: the median of each figure, and every round's sessions/s to show the spread."""
    combined: dict[str, Any] = {
        "sessions_per_second": statistics.median(r["sessions_per_second"] for r in runs),
        "operations_per_second": statistics.median(r["operations_per_second"] for r in runs),
        "sessions_per_second_each_round": [r["sessions_per_second"] for r in runs],
        "latency_ms": {
            name: {
                quantile: statistics.median(r["latency_ms"][name][quantile] for r in runs if name in r["latency_ms"])
                for quantile in ("p50", "p99")
            }
            for name in OPERATIONS
            if any(name in r["latency_ms"] for r in runs)
        },
        "errors": sum(r["errors"] for r in runs),
        "first_error": next((r["first_error"] for r in runs if r["first_error"]), None),
        "generator_core_share": statistics.median(r["generator_core_share"] for r in runs),
    }
    return combined


async def bench_backend(backend: Backend, args: argparse.Namespace, users: list[str]) -> dict[str, Any]:
    with Members(users) as members:
        lone = members.lone_master(backend, f"{backend.value}-lone")
        master, replica = members.pair(backend, f"{backend.value}-pair")
        for member in (lone, master):
            await wait_for(member, master_ready, "readiness as master")
        await together(_preload(lone, users), _preload(master, users))
        converge = [await _converge(master, replica)]
        setups = {"lone master": lone, "replicating pair": master}
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in setups}
        for round_number in range(args.rounds):
            order = list(setups) if round_number % 2 == 0 else list(reversed(setups))
            for name in order:
                runs[name].append(
                    await measure(setups[name], users, args.clients, args.seconds, f"{name[0]}{round_number}")
                )
                if name == "replicating pair":
                    converge.append(await _converge(master, replica))
        result = {name: _combine(values) for name, values in runs.items()}
        result["replicating pair"]["replica_in_sync_seconds_after_each_round"] = converge[1:]
        lone_rate = result["lone master"]["sessions_per_second"]
        result["pair_over_lone"] = round(result["replicating pair"]["sessions_per_second"] / lone_rate, 2)
        return result


async def _converge(master: Member, replica: Member) -> float:
    started = time.monotonic()
    for member in (master, replica):
        await wait_for(member, in_sync, "replication in sync", within=300)
    return round(time.monotonic() - started, 1)


def _table(results: dict[str, Any]) -> str:
    rows = ["backend  setup             sess/s  ops/s  login p50/p99  fetch p50/p99  append p50/p99  lmtp p50/p99  gen"]
    for backend, result in results.items():
        if not isinstance(result, dict) or "lone master" not in result:
            continue
        for setup in ("lone master", "replicating pair"):
            figures = result[setup]
            cells = []
            for op in ("login", "fetch", "append", "lmtp"):
                latency = figures["latency_ms"].get(op)
                cells.append(f"{latency['p50']:>6.1f}/{latency['p99']:<6.1f}" if latency else " " * 13)
            rates = f"{figures['sessions_per_second']:>6.1f} {figures['operations_per_second']:>6.1f}"
            rows.append(f"{backend:<8} {setup:<17} {rates}  {'  '.join(cells)}  {figures['generator_core_share']:.2f}")
    return "\n".join(rows)


async def main(args: argparse.Namespace) -> None:
    backends = list(Backend) if args.backend == "both" else [Backend(args.backend)]
    check_can_run(backends)
    users = [f"load{n:03d}@example.test" for n in range(args.users)]
    results: dict[str, Any] = {"machine_before": machine()}
    for backend in backends:
        results[backend.value] = await bench_backend(backend, args, users)
    results["machine_after"] = machine()
    results["settings"] = {"clients": args.clients, "seconds": args.seconds, "rounds": args.rounds, "users": args.users}
    print(json.dumps(results, indent=2))
    print(_table(results), file=sys.stderr)
    for backend in backends:
        errors = sum(results[backend.value][setup]["errors"] for setup in ("lone master", "replicating pair"))
        if errors:
            raise CannotRunError(f"{errors} session(s) failed on {backend.value}; the figures above are not clean")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--backend", choices=["dovecot", "cyrus", "both"], default="both")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default %(default)s)")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of one measured phase")
    parser.add_argument("--rounds", type=int, default=2, help="phases per setup, alternating")
    parser.add_argument("--users", type=int, default=50)
    parsed = parser.parse_args()
    sys.exit(run("imap_load", lambda: main(parsed)))
