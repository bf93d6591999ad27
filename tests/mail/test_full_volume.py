"""A member whose mail volume fills up, on real Dovecot and Cyrus: refused for now, never accepted and lost.

Each member under test gets its data directory on a tmpfs of 2 MiB (mounted
here as root, unmounted at teardown) and a reserve of 512 KiB
(``--min-free-bytes``). What is proven:

- a message that would cross the reserve is refused ``452 4.3.1`` by the
  master's LMTP front before the daemon sees it, and the same LMTP session
  goes on delivering what still fits;
- once the volume is below its reserve (a ballast file stands for anything
  else filling it), every delivery is refused ``452 4.3.1``, ``/status`` says
  the volume is full and replication ``failing`` (never in sync), the same
  words are in the agent's log, and the metrics say so;
- once the volume grows (as ``spec.storage.size`` would make it) everything
  flows and converges again without a restart, and every message ever
  acknowledged is on both members.
"""

from __future__ import annotations

import asyncio
import os
import smtplib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import mailtools
import pytest
from mail_support import Member, Pair, PairFactory, converged

pytestmark = pytest.mark.mail

VOLUME = "2M"
RESERVE = 512 * 1024
BIG = 64 * 1024


def _message(user: str, index: int, size: int) -> bytes:
    line = b"x" * 76 + b"\r\n"
    return mailtools.make_message(user, index) + line * (size // len(line))


class SmallVolumes:
    """tmpfs data directories for members; each member is stopped before its volume is unmounted."""

    def __init__(self) -> None:
        self.mounted: list[Member] = []

    def give(self, member: Member, role: str) -> None:
        member.data_dir.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={VOLUME},mode=0755", "tmpfs", str(member.data_dir)], check=True
        )
        self.mounted.append(member)
        member.set_role(role)  # the mount hides the role file written before it
        member.extra_args = [*member.extra_args, "--min-free-bytes", str(RESERVE)]

    @staticmethod
    def grow(member: Member) -> None:
        subprocess.run(["mount", "-o", "remount,size=8M", str(member.data_dir)], check=True)

    def teardown(self) -> None:
        for member in self.mounted:
            member.stop()
            subprocess.run(["umount", str(member.data_dir)], check=False)


@pytest.fixture
def small_volumes(make_pair: PairFactory) -> Iterator[SmallVolumes]:
    """Unmounted before ``make_pair`` removes the members' directories (it is set up first, so torn down last)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs for a member's volume needs root")
    volumes = SmallVolumes()
    yield volumes
    volumes.teardown()


def _free(member: Member) -> int:
    stat = os.statvfs(member.data_dir)
    return stat.f_bavail * stat.f_frsize


def _fill_below_reserve(member: Member) -> Path:
    """Leave the volume 64 KiB short of its reserve, as a big neighbour would."""
    ballast = member.data_dir / "ballast"
    ballast.write_bytes(b"\0" * (_free(member) - RESERVE + BIG))
    return ballast


async def _metrics(member: Member) -> str:
    async with aiohttp.ClientSession() as session, session.get(member.url + "/metrics") as response:
        return await response.text()


def _logged(member: Member) -> str:
    return member.log_path.read_text(errors="replace")


async def _ready_in_sync(pair: Pair) -> None:
    await pair.a.wait_status(lambda s: s["readyAsMaster"], what="master ready", within=60)
    for member in (pair.a, pair.b):
        await member.wait_status(lambda s: s["replication"]["state"] == "in-sync", what="in sync", within=60)


def _fill_with_deliveries(port: int, user: str) -> tuple[list[int], tuple[int, str]]:
    """Deliver big messages in one session until one is refused; then a small one in the same session."""
    accepted: list[int] = []
    refusal: tuple[int, str] | None = None
    with smtplib.LMTP("127.0.0.1", port, timeout=30) as lmtp:
        for index in range(1, 100):
            try:
                lmtp.sendmail("sender@example.test", [user], _message(user, index, BIG))
            except smtplib.SMTPDataError as refused:
                text = refused.smtp_error
                refusal = (refused.smtp_code, text.decode() if isinstance(text, bytes) else text)
                break
            accepted.append(index)
        assert refusal is not None, "a 2 MiB volume took 99 messages of 64 KiB"
        lmtp.sendmail("sender@example.test", [user], _message(user, 1000, 1024))
        accepted.append(1000)
    return accepted, refusal


@pytest.mark.parametrize("backend", ["dovecot", "cyrus"])
async def test_a_full_master_refuses_mail_for_now_and_loses_none(
    backend: str, request: pytest.FixtureRequest, small_volumes: SmallVolumes
) -> None:
    make: PairFactory = request.getfixturevalue("make_pair" if backend == "dovecot" else "make_cyrus_pair")
    pair = make(users=2)
    a, b = pair.a, pair.b
    small_volumes.give(a, "master")
    await pair.start()
    await _ready_in_sync(pair)
    user = pair.users[0]

    accepted, refusal = await asyncio.to_thread(_fill_with_deliveries, a.ports["lmtp"], user)
    assert refusal[0] == 452, refusal
    assert refusal[1].startswith("4.3.1"), refusal
    assert len(accepted) > 5

    ballast = _fill_below_reserve(a)
    status = await a.wait_status(lambda s: s["volume"]["full"], what="volume reported full")
    assert status["replication"]["state"] == "failing"
    full = next(error for error in status["errors"] if "is full" in error)
    assert full.startswith(f"mail volume {a.data_dir / 'mail'} is full: ")
    assert "below the reserve of 524288" in full
    assert full in _logged(a)
    with pytest.raises(smtplib.SMTPSenderRefused) as refused_at_mail:
        await asyncio.to_thread(mailtools.deliver, a.ports["lmtp"], [(user, _message(user, 2000, 1024))])
    assert (refused_at_mail.value.smtp_code, refused_at_mail.value.smtp_error[:5]) == (452, b"4.3.1")
    metrics = await _metrics(a)
    assert 'mailshard_volume_full{member="s1-a",shard="s1"} 1.0' in metrics
    refusals = (await a.status())["volume"]["refusedForSpace"]
    assert refusals >= 2
    assert f'mailshard_deliveries_refused_for_space_total{{member="s1-a",shard="s1"}} {refusals:.1f}' in metrics

    ballast.unlink()
    small_volumes.grow(a)
    await a.wait_status(lambda s: not s["volume"]["full"] and s["errors"] == [], what="room again")
    assert "has room again" in _logged(a)
    await asyncio.to_thread(mailtools.deliver, a.ports["lmtp"], [(user, _message(user, 3000, 1024))])
    accepted.append(3000)
    held = await asyncio.to_thread(mailtools.counts, a.ports["imap"], [user], pair.passwords)
    assert held[user][0] == len(accepted)  # every acknowledged message, and nothing refused
    await converged(a, b)
    await _ready_in_sync(pair)


async def test_a_full_replica_says_so_and_refuses_the_journal(
    make_pair: PairFactory, small_volumes: SmallVolumes
) -> None:
    pair = make_pair(users=2)
    a, b = pair.a, pair.b
    small_volumes.give(b, "replica")
    await pair.start()
    await _ready_in_sync(pair)

    ballast = _fill_below_reserve(b)
    status = await b.wait_status(lambda s: s["volume"]["full"], what="replica volume reported full")
    assert status["replication"]["state"] == "failing"
    full = next(error for error in status["errors"] if "is full" in error)
    assert full in _logged(b)
    messages = [(user, _message(user, 1, 1024)) for user in pair.users]
    assert await asyncio.to_thread(mailtools.deliver, a.ports["lmtp"], messages) == len(messages)
    journal = (await a.status())["journal"]
    assert journal["unjournaled"] == len(messages)  # acknowledged from the master's disk, reported at risk
    assert "is full" in journal["lastJournalError"]
    await asyncio.sleep(2)  # several polls: a full replica is never reported in sync
    assert (await b.status())["replication"]["state"] == "failing"

    ballast.unlink()
    small_volumes.grow(b)
    await b.wait_status(lambda s: not s["volume"]["full"], what="room again")
    await converged(a, b)
    await _ready_in_sync(pair)
