"""Measures Dovecot (or Cyrus) master→replica replication on one machine, with the agents run in-process.

Two figures: the idle lag (one message delivered over LMTP to a quiet pair,
until its file appears in the user's Maildir on the replica, polled every 2 ms)
and the convergence time of a burst (1,000 messages to 50 users, until the
replica's ``doveadm mailbox status`` shows every mailbox with the master's
UIDVALIDITY, UIDNEXT and message count; one doveadm call takes ~20-30 ms, which
bounds the resolution). A replica serves no IMAP, hence doveadm and the disk.

With ``--backend cyrus`` (Cyrus from ``$MAILSHARD_CYRUS_ROOT`` or the prefix of
``.ci/install-cyrus-prefix``), both figures come from ``mbexamine`` on the
replica instead (one call takes ~10-30 ms), and the clock starts once the
master's agent has created every user's INBOX.

Run as root (the daemon then runs as ``vmail``) or as any user::

    .venv/bin/python bench/replication_lag.py [--backend cyrus] [--users 50] [--messages 1000] [--idle-samples 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import smtplib
import socket
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from mailshard.agent.identity import resolve_run_as
from mailshard.agent.observe import MailboxState
from mailshard.agent.service import Agent, AgentSettings
from mailshard.backends import Backend

PASSWORD = "bench-password"


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


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


def _cyrus_root() -> Path:
    if os.environ.get("MAILSHARD_CYRUS_ROOT"):
        return Path(os.environ["MAILSHARD_CYRUS_ROOT"])
    return Path("/var/cache/mailshard/cyrus-root") if os.geteuid() == 0 else Path.home() / ".cache/mailshard/cyrus-root"


async def _mailboxes(agent: Agent) -> tuple[MailboxState, ...]:
    if agent.backend is Backend.CYRUS:
        return await agent.cyrus.mailbox_status()
    return await agent.doveadm.mailbox_status()


def _make_agents(base: Path, users: list[str], backend: Backend) -> tuple[list[Agent], list[dict[str, int]]]:
    base.chmod(0o755)
    (base / "users").write_text("".join(f"{user}:{{PLAIN}}{PASSWORD}::::::\n" for user in users))
    (base / "users").chmod(0o644)
    ports = [dict(zip(("imap", "pop3", "lmtp", "managesieve", "doveadm"), _free_ports(5), strict=True)) for _ in "ab"]
    run_as = resolve_run_as(None)
    agents = []
    for i, (name, role) in enumerate((("a", "master"), ("b", "replica"))):
        root = base / name
        root.mkdir()
        root.chmod(0o755)
        config = {
            "shard": "bench",
            "backend": backend.value,
            "member": name,
            "listenAddress": "127.0.0.1",
            "ports": ports[i],
            "peer": {"name": "ab"[1 - i], "host": "127.0.0.1", "doveadmPort": ports[1 - i]["doveadm"], "agentPort": 9},
            "usersFile": str(base / "users"),
            "doveadmPassword": "bench-secret",
        }
        (root / "runtime.json").write_text(json.dumps(config))
        (root / "role").write_text(role)
        settings = AgentSettings(
            config_path=root / "runtime.json",
            role_file=root / "role",
            data_dir=root / "data",
            token="bench",
            run_as=run_as,
            cyrus_root=_cyrus_root(),
        )
        agents.append(Agent(settings))
    return agents, ports


def _files(maildir: Path) -> int:
    return sum(len(list((maildir / sub).iterdir())) for sub in ("new", "cur") if (maildir / sub).is_dir())


async def _idle_lag(master_lmtp: int, replica: Agent, users: list[str], samples: int) -> list[float]:
    if replica.backend is Backend.CYRUS:
        return await _idle_lag_cyrus(master_lmtp, replica, users, samples)
    seen = []
    for index in range(samples):
        user = users[index % len(users)]
        maildir = replica.paths.mail_dir / user / "Maildir"
        before = _files(maildir)
        started = time.monotonic()
        await asyncio.to_thread(_deliver, master_lmtp, [(user, _message(user, index))])

        async def arrived(maildir: Path = maildir, before: int = before) -> bool:
            return _files(maildir) != before

        await _poll_until(arrived, 0.002)
        seen.append(time.monotonic() - started)
        await asyncio.sleep(0.2)
    return seen


async def _idle_lag_cyrus(master_lmtp: int, replica: Agent, users: list[str], samples: int) -> list[float]:
    seen = []
    for index in range(samples):
        user = users[index % len(users)]
        before = _counts(await replica.cyrus.mailbox_status()).get((user, "INBOX"))
        started = time.monotonic()
        await asyncio.to_thread(_deliver, master_lmtp, [(user, _message(user, index))])

        async def arrived(user: str = user, before: tuple[int, int, int] | None = before) -> bool:
            return _counts(await replica.cyrus.mailbox_status()).get((user, "INBOX")) != before

        await _poll_until(arrived, 0.002)
        seen.append(time.monotonic() - started)
        await asyncio.sleep(0.2)
    return seen


def _counts(states: tuple[MailboxState, ...]) -> dict[tuple[str, str], tuple[int, int, int]]:
    return {(s.user, s.mailbox): (s.uidvalidity, s.uidnext, s.messages) for s in states}


async def _burst(master_lmtp: int, agents: list[Agent], users: list[str], count: int) -> tuple[float, float]:
    burst = [(users[i % len(users)], _message(users[i % len(users)], 10_000 + i)) for i in range(count)]
    started = time.monotonic()
    await asyncio.gather(*(asyncio.to_thread(_deliver, master_lmtp, burst[k::4]) for k in range(4)))
    delivered = time.monotonic() - started
    expected = _counts(await _mailboxes(agents[0]))

    async def matched() -> bool:
        return _counts(await _mailboxes(agents[1])) == expected

    await _poll_until(matched, 0.01)
    return delivered, time.monotonic() - started


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--backend", type=Backend, choices=list(Backend), default=Backend.DOVECOT)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--idle-samples", type=int, default=20)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="ms-bench-"))
    users = [f"bench{n:03d}@example.test" for n in range(args.users)]
    agents, ports = _make_agents(base, users, args.backend)
    try:
        # The replica first, so that the master's replicator never starts against a closed port.
        for agent in reversed(agents):
            await agent.start()

            async def up(agent: Agent = agent) -> bool:
                return agent.supervisor.up

            await _poll_until(up, 0.05)
        await asyncio.sleep(1.0)  # let both replicators finish their start-up full sync
        if args.backend is Backend.CYRUS:  # the master's agent creates every INBOX before deliveries may race

            async def provisioned() -> bool:
                return agents[0].provisioned

            await _poll_until(provisioned, 0.05)
        idle = await _idle_lag(ports[0]["lmtp"], agents[1], users, args.idle_samples)
        delivered, converged = await _burst(ports[0]["lmtp"], agents, users, args.messages)
        result = {
            "backend": args.backend.value,
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
        print(json.dumps(result, indent=2))
    finally:
        for agent in agents:
            await agent.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
