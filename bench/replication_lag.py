"""Measures Dovecot (or Cyrus) master→replica replication on one machine: idle lag, a burst, and steady delivery.

Each agent runs as its own process (``python -m mailshard.agent``, as in a
pod; see ``local_mail``), and deliveries go to the master's LMTP port, i.e.
through the agent's journaling front, as an MTA's would.

Default mode, two figures: the idle lag (one message delivered to a quiet
pair, until its file is on the replica's disk, looked for every 2 ms) and the
convergence time of a burst (1,000 messages to 50 users, until the replica
shows every mailbox with the master's UIDVALIDITY, UIDNEXT and message count;
one ``doveadm mailbox status`` or Cyrus ``mbexamine`` call takes ~10-30 ms,
which bounds the resolution). A replica serves no IMAP, so its store is read
directly: message files in the user's Maildir (Dovecot) or in the INBOX's
directory of the Cyrus partition, whose ``cyrus.header`` names it.

``--steady``: deliveries at a fixed rate for ``--seconds`` per rate (default
10, 50 and 100 per second, one pair = one shard, 8 LMTP sessions sending on a
schedule), for both backends unless ``--backend`` says one. Each message's lag
runs from the 250 its sender got to the first look at the replica's disk that
finds its file there (one look at every user's INBOX takes a few ms, the
resolution). A message already on the replica when its sender saw the 250
counts 0. Reported per rate: p50, p99 and max lag, the
rate achieved, and messages not on the replica within 60 s of the end.

Run as root (the daemons then run as ``vmail``) or as any user::

    .venv/bin/python bench/replication_lag.py [--backend cyrus] [--users 50] [--messages 1000] [--idle-samples 20]
    .venv/bin/python bench/replication_lag.py --steady [--rates 10,50,100] [--seconds 20] [--backend both]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import queue
import re
import smtplib
import statistics
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from local_mail import CannotRunError, Member, Members, check_can_run, in_sync, machine, master_ready, percentile, run
from local_mail import wait_for as wait_for_status
from mailshard.agent.observe import MailboxState
from mailshard.backends import Backend

SENDERS = 8
"""LMTP sessions delivering in steady mode, each taking the next scheduled message."""
STEADY_DRAIN_SECONDS = 60.0
_CYRUS_NAME = re.compile(rb" N (\S+) ")


def _message(user: str, index: int) -> bytes:
    return f"To: {user}\r\nSubject: bench {index}\r\nMessage-ID: <{index}.{user}@bench>\r\n\r\n{index}\r\n".encode()


def _deliver(port: int, batch: list[tuple[str, bytes]]) -> None:
    with smtplib.LMTP("127.0.0.1", port) as lmtp:
        for user, message in batch:
            lmtp.sendmail("bench@example.test", [user], message)


async def _poll_until(check: Callable[[], Awaitable[bool]], interval: float) -> None:
    # Replication has no completion signal a client could wait on: poll.
    while not await check():  # noqa: ASYNC110
        await asyncio.sleep(interval)


def _files(maildir: Path) -> int:
    return sum(len(list((maildir / sub).iterdir())) for sub in ("new", "cur") if (maildir / sub).is_dir())


def _counts(states: tuple[MailboxState, ...]) -> dict[tuple[str, str], tuple[int, int, int]]:
    return {(s.user, s.mailbox): (s.uidvalidity, s.uidnext, s.messages) for s in states}


def _cyrus_inboxes(mail_dir: Path) -> dict[str, Path]:
    """Each user's INBOX directory in a Cyrus 3.6 partition (``uuid/x/y/<id>/``), named in its ``cyrus.header``."""
    found = {}
    for header in mail_dir.glob("uuid/*/*/*/cyrus.header"):
        named = _CYRUS_NAME.search(header.read_bytes())
        if named is None:
            continue
        domain, _, mailbox = named.group(1).decode().partition("!")  # example.test!user.alice is alice's INBOX
        if mailbox.startswith("user.") and "." not in mailbox[5:]:
            found[f"{mailbox[5:]}@{domain}"] = header.parent
    return found


def _cyrus_messages(directory: Path) -> int:
    """Message files are named ``<uid>.``."""
    return sum(1 for entry in os.scandir(directory) if entry.name.endswith(".") and entry.name[:-1].isdigit())


def _held_by(replica: Member, users: list[str]) -> Callable[[], dict[str, int]]:
    """How many message files each user's INBOX has on the replica's disk (a look takes a few ms)."""
    inboxes: dict[str, Path] = {}

    def held() -> dict[str, int]:
        if replica.backend is Backend.DOVECOT:
            return {user: _files(replica.mail_dir / user / "Maildir") for user in users}
        if len(inboxes) < len(users):  # an INBOX reaches the replica with its first message or provisioning
            inboxes.update(_cyrus_inboxes(replica.mail_dir))
        return {user: _cyrus_messages(directory) for user, directory in inboxes.items()}

    return held


async def _idle_lag(master: Member, replica: Member, users: list[str], samples: int) -> list[float]:
    held = _held_by(replica, users)
    seen = []
    for index in range(samples):
        user = users[index % len(users)]
        before = held().get(user, 0)
        started = time.monotonic()
        await asyncio.to_thread(_deliver, master.ports["lmtp"], [(user, _message(user, index))])

        async def arrived(user: str = user, before: int = before) -> bool:
            return held().get(user, 0) != before

        await _poll_until(arrived, 0.002)
        seen.append(time.monotonic() - started)
        await asyncio.sleep(0.2)
    return seen


async def _burst(master: Member, replica: Member, users: list[str], count: int) -> tuple[float, float]:
    burst = [(users[i % len(users)], _message(users[i % len(users)], 10_000 + i)) for i in range(count)]
    started = time.monotonic()
    await asyncio.gather(*(asyncio.to_thread(_deliver, master.ports["lmtp"], burst[k::4]) for k in range(4)))
    delivered = time.monotonic() - started
    expected = _counts(await master.store_reader()())
    read_replica = replica.store_reader()

    async def matched() -> bool:
        return _counts(await read_replica()) == expected

    await _poll_until(matched, 0.01)
    return delivered, time.monotonic() - started


async def _started_pair(members: Members, backend: Backend) -> tuple[Member, Member]:
    master, replica = members.pair(backend, backend.value)
    await wait_for_status(master, master_ready, "readiness as master")
    for member in (master, replica):
        await wait_for_status(member, in_sync, "replication in sync")
    return master, replica


async def classic(args: argparse.Namespace, backend: Backend) -> dict[str, Any]:
    users = [f"bench{n:03d}@example.test" for n in range(args.users)]
    with Members(users) as members:
        master, replica = await _started_pair(members, backend)
        idle = await _idle_lag(master, replica, users, args.idle_samples)
        delivered, converged = await _burst(master, replica, users, args.messages)
    return {
        "backend": backend.value,
        "idle_lag_ms": {
            "median": round(statistics.median(idle) * 1000, 1),
            "max": round(max(idle) * 1000, 1),
            "samples": len(idle),
        },
        "burst": {
            "messages": args.messages,
            "users": args.users,
            "delivery_seconds": round(delivered, 2),
            "converged_after_start_seconds": round(converged, 2),
            "converged_after_last_delivery_seconds": round(converged - delivered, 2),
        },
    }


class SteadySender:
    """Delivers message i at ``start + i / rate`` over SENDERS LMTP sessions (threads); records each 250's time."""

    def __init__(self, port: int, users: list[str], *, rate: float, count: int) -> None:
        self.port, self.users, self.rate, self.count = port, users, rate, count
        self.acked: dict[int, float] = {}
        self.failures: list[str] = []
        self.started_at = 0.0
        self._work: queue.Queue[int | None] = queue.Queue()
        self._lock = threading.Lock()

    def user_of(self, index: int) -> str:
        return self.users[index % len(self.users)]

    def start(self, at: float) -> list[threading.Thread]:
        self.started_at = at
        for index in range(self.count):
            self._work.put(index)
        for _ in range(SENDERS):
            self._work.put(None)
        threads = [threading.Thread(target=self._send, daemon=True) for _ in range(SENDERS)]
        for thread in threads:
            thread.start()
        return threads

    def _send(self) -> None:
        with smtplib.LMTP("127.0.0.1", self.port, timeout=60) as lmtp:
            while (index := self._work.get()) is not None:
                delay = self.started_at + index / self.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                user = self.user_of(index)
                try:
                    lmtp.sendmail("bench@example.test", [user], _message(user, 100_000 * int(self.rate) + index))
                except smtplib.SMTPException as exc:
                    with self._lock:
                        self.failures.append(f"{user}: {exc}")
                    continue
                with self._lock:
                    self.acked[index] = time.monotonic()


async def _steady_rate(
    master: Member, replica: Member, users: list[str], *, rate: float, seconds: float
) -> dict[str, Any]:
    held = _held_by(replica, users)
    base = held()
    count = int(rate * seconds)
    sender = SteadySender(master.ports["lmtp"], users, rate=rate, count=count)
    # The k-th message to a user is on the replica once the user holds base + k messages there:
    # dsync and Cyrus's sync copy a mailbox's new messages in UID order, which is delivery order.
    order: dict[str, list[int]] = {user: [] for user in users}
    for index in range(count):
        order[sender.user_of(index)].append(index)
    arrived: dict[int, float] = {}
    looks: list[float] = []
    started = time.monotonic()
    threads = sender.start(started)
    deadline = None
    while len(arrived) < count - len(sender.failures):
        look_started = time.monotonic()
        counts = held()
        now = time.monotonic()
        looks.append(now - look_started)
        for user, indexes in order.items():
            for index in indexes[: max(0, counts.get(user, 0) - base.get(user, 0))]:
                arrived.setdefault(index, now)
        if deadline is None and not any(thread.is_alive() for thread in threads):
            deadline = now + STEADY_DRAIN_SECONDS
        if deadline is not None and now > deadline:
            break
        await asyncio.sleep(0.001)
    for thread in threads:
        await asyncio.to_thread(thread.join)
    sending = max(sender.acked.values(), default=started + seconds) - started
    lags = [max(0.0, arrived[index] - acked) for index, acked in sender.acked.items() if index in arrived]
    if not lags:
        raise CannotRunError(f"no message reached the {replica.backend.value} replica at {rate}/s")
    return {
        "target_per_second": rate,
        "achieved_per_second": round(len(sender.acked) / sending, 1),
        "last_250_after_its_slot_seconds": round(sending - (count - 1) / rate, 2),
        "messages": count,
        "lag_ms": {
            "p50": round(statistics.median(lags) * 1000, 1),
            "p99": round(percentile(lags, 0.99) * 1000, 1),
            "max": round(max(lags) * 1000, 1),
        },
        "look_ms_p50": round(statistics.median(looks) * 1000, 1),
        "not_on_replica_60s_after": sum(1 for index in sender.acked if index not in arrived),
        "refused": len(sender.failures),
        "first_refusal": sender.failures[0] if sender.failures else None,
    }


async def steady(args: argparse.Namespace, backend: Backend) -> dict[str, Any]:
    users = [f"steady{n:03d}@example.test" for n in range(args.users)]
    with Members(users) as members:
        master, replica = await _started_pair(members, backend)
        per_rate = []
        for rate in args.rates:
            per_rate.append(await _steady_rate(master, replica, users, rate=rate, seconds=args.seconds))
            for member in (master, replica):  # the next rate starts from a replica that caught up
                await wait_for_status(member, in_sync, "replication in sync", within=300)
    return {"backend": backend.value, "users": args.users, "seconds_per_rate": args.seconds, "rates": per_rate}


async def main(args: argparse.Namespace) -> None:
    backend = args.backend or ("both" if args.steady else "dovecot")
    backends = list(Backend) if backend == "both" else [Backend(backend)]
    check_can_run(backends)
    results: list[dict[str, Any]] = []
    before = machine()
    for one in backends:
        results.append(await (steady(args, one) if args.steady else classic(args, one)))
    document: dict[str, Any] = results[0] if len(results) == 1 else {"results": results}
    print(json.dumps({**document, "machine_before": before, "machine_after": machine()}, indent=2))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--backend", choices=["dovecot", "cyrus", "both"], default=None)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--idle-samples", type=int, default=20)
    parser.add_argument("--steady", action="store_true", help="steady delivery at --rates for --seconds each")
    parser.add_argument(
        "--rates", type=lambda text: [float(rate) for rate in text.split(",")], default=[10.0, 50.0, 100.0]
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="steady mode: seconds of delivery per rate")
    parsed = parser.parse_args()
    sys.exit(run("replication_lag", lambda: main(parsed)))
