"""A mailbox the replica never got keeps its UIDVALIDITY through a failover, on real Dovecot and Cyrus.

The case found on real pods: a new user's first delivery creates their INBOX
on the master, and the master dies before replication carried the mailbox to
the replica. Promoted as it was, the replica would create that INBOX afresh
at the next delivery (or the journal replay) under a new UIDVALIDITY, and
every client that had seen it would download it again. The failover's
RaiseUidNext step creates it first, under the old master's UIDVALIDITY and
with its next UID above anything the old master assigned (`uidnext_plan`);
the replay then delivers the journaled messages into it.

The window is made certain rather than lucky: the replica's daemon is stopped
(SIGSTOP on its process group) while the master creates the mailbox and
delivers to it, so its agent still journals every delivery while its store
receives no replication. The master is then SIGKILLed, the replica's daemon
continued, and the operator's steps run as the drills run them
(`test_journal.fail_over`); last, the old master returns and is re-seeded
(Dovecot: ``doveadm backup -R`` per user; Cyrus: a full push).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import mailtools
import pytest
from mail_support import Member, Pair, PairFactory, converged
from test_cyrus_journal import CYRUS_IMAP
from test_journal import DOVEADM, StoreReader, assert_nothing_lost, fail_over, rejoin

from mailshard.failover.policy import UID_GAP
from mailshard_harness.mailflow import Stream

pytestmark = pytest.mark.mail

NEWCOMER = "newcomer@example.test"
WINDOW = 5
"""Messages delivered to the new user while the replica's daemon is stopped."""


def summary(status: dict[str, Any]) -> dict[tuple[str, str], tuple[int, int, int]]:
    rows = status["mailboxes"]["summary"]
    return {(r["user"], r["mailbox"]): (r["uidvalidity"], r["uidnext"], r["messages"]) for r in rows}


def observed_after(moment: float) -> Any:
    """A status predicate: the agent observed its store after `moment` (this machine's clock, like the agent's)."""
    return lambda s: s["observedAt"] is not None and datetime.fromisoformat(s["observedAt"]).timestamp() > moment


def add_user(users_file: Path, user: str) -> None:
    with users_file.open("a") as lines:
        lines.write(f"{user}:{{PLAIN}}welcome::::::\n")


async def known(member: Member, user: str, within: float = 30) -> None:
    """Wait until the member would take mail for a user just added to the users file.

    Cyrus: its agent provisions the INBOX once it has read the file. Dovecot reads the passwd-file again
    when it changed, but looks at it at most once a second.
    """
    if (await member.status())["backend"] == "cyrus":
        await member.wait_status(lambda s: (user, "INBOX") in summary(s), what=f"{user}'s INBOX")
        return
    deadline = time.monotonic() + within
    while True:
        try:
            await asyncio.to_thread(member.doveadm_json, "user", user)
            return
        except subprocess.CalledProcessError:
            assert time.monotonic() < deadline, f"{member.name} does not know {user}"
            await asyncio.sleep(0.2)


@contextmanager
def daemon_stopped(member: Member) -> Iterator[None]:
    """The member's mail daemon and all its children stopped (SIGSTOP), its agent running; continued at the end."""
    daemon = member.daemon_pid()
    assert daemon is not None
    os.killpg(daemon, signal.SIGSTOP)
    try:
        yield
    finally:
        os.killpg(daemon, signal.SIGCONT)


async def the_new_inbox_survives(pair: Pair, store: StoreReader) -> None:
    a, b = pair.a, pair.b
    users = [*pair.users, NEWCOMER]
    await pair.start()
    await a.wait_status(lambda s: s["readyAsMaster"] and s["replication"]["peerDoveadm"] == "ok", what="ready")
    steady = Stream("127.0.0.1", a.ports["lmtp"], pair.users, "steady").start()
    steady.wait_for(20)
    steady.stop()
    await converged(a, b)
    await b.wait_status(lambda s: s["journal"]["entries"] == 0, what="the journal pruned once in sync")

    with daemon_stopped(b):
        # A user is added (the operator rewrites the shard's users Secret) and gets their first mail.
        await asyncio.to_thread(add_user, Path(a.config["usersFile"]), NEWCOMER)
        await known(a, NEWCOMER)
        window = Stream("127.0.0.1", a.ports["lmtp"], [NEWCOMER], "window").start()
        window.wait_for(WINDOW)
        window.stop()
        assert window.error is None
        last_report = await a.wait_status(
            lambda s: summary(s).get((NEWCOMER, "INBOX"), (0, 0, 0))[2] == len(window.acked),
            what="the window's mail in the master's report",
        )
        reported = time.time()
        # What the replica's agent last saw of its peer decides which INBOXes a new Cyrus master provisions.
        await b.wait_status(
            lambda s: datetime.fromisoformat(s["replication"]["peerSeenAt"]).timestamp() > reported,
            within=60,
            what="the replica's agent seeing the master's report",
        )
        assert (await b.status())["journal"]["entries"] == len(window.acked)
        old_validity, old_next, _ = summary(last_report)[(NEWCOMER, "INBOX")]
        cached = await asyncio.to_thread(store.uid_map, a, users)
        a.kill()
    continued = time.time()
    lacking = await b.wait_status(observed_after(continued), within=60, what="a look at its store")
    assert (NEWCOMER, "INBOX") not in summary(lacking), "the replica must never have got the new INBOX"

    outcome = await fail_over(last_report, b)

    assert f"{NEWCOMER}/INBOX" in outcome.created
    assert outcome.replayed == len(window.acked)
    assert summary(await b.status())[(NEWCOMER, "INBOX")][0] == old_validity, "UIDVALIDITY kept"
    now = await asyncio.to_thread(store.uid_map, b, users)
    replayed = sorted(uid for (user, _, uid) in now if user == NEWCOMER)
    assert len(replayed) == len(window.acked)
    assert replayed[0] >= old_next + UID_GAP, "every replayed message above any UID the old master assigned"
    changed = {key: (was, now[key]) for key, was in cached.items() if key in now and now[key] != was}
    assert changed == {}, f"UIDs now point at other messages: {changed}"
    assert_nothing_lost(await asyncio.to_thread(store.held, b, users), steady.acked + window.acked, [])

    # The old master returns, is re-seeded from the new one, and holds the INBOX under the same UIDVALIDITY.
    await rejoin(a, b)
    assert summary(await a.status())[(NEWCOMER, "INBOX")][0] == old_validity
    more = [(NEWCOMER, mailtools.make_message(NEWCOMER, 900))]
    assert await asyncio.to_thread(mailtools.deliver, b.ports["lmtp"], more) == 1
    expected = (old_validity, replayed[-1] + 2, len(window.acked) + 1)
    await b.wait_status(lambda s: summary(s)[(NEWCOMER, "INBOX")] == expected, what="one more message, next in line")
    await converged(b, a)
    assert summary(await a.status())[(NEWCOMER, "INBOX")] == expected
    held = await asyncio.to_thread(store.held, b, users)
    assert all(copies == 1 for copies in held.values()), "nothing twice"


async def test_a_new_users_inbox_keeps_its_uidvalidity_through_a_failover(make_pair: PairFactory) -> None:
    await the_new_inbox_survives(make_pair(users=3), DOVEADM)


async def test_a_new_users_inbox_keeps_its_uidvalidity_through_a_cyrus_failover(make_cyrus_pair: PairFactory) -> None:
    await the_new_inbox_survives(make_cyrus_pair(users=3), CYRUS_IMAP)
