"""The delivery journal on real Cyrus: a master killed mid-stream loses no acknowledged message, none twice.

The same scenario as the first test of ``test_journal.py``, with Cyrus
members: LMTP deliveries stream into the master while it is SIGKILLed
(agent and daemon at once, its disk kept); the replica is promoted, raises
UIDNEXT and replays its journal. The replay is backend-neutral: the new
master finds the journal ids it already holds over IMAP (the admin acting as
each recipient, every mailbox, ``SAVEDSINCE``) and delivers the rest to
``lmtpd``. Every message that got a 250 must be on the new master exactly
once, under the UIDVALIDITY it started with. The old master then returns,
is re-seeded (it starts empty and the new master pushes every user) and
rejoins as replica; its own never-replicated copies must not come back.
"""

from __future__ import annotations

import asyncio
import imaplib
import re
from collections import Counter
from typing import Any

import pytest
from mail_support import DOVEADM_PASSWORD, Member, Pair, PairFactory, converged
from test_journal import assert_nothing_lost, fail_over

from mailshard.agent.cyrustools import parse_list
from mailshard.backends.cyrus import SYNC_ADMIN
from mailshard_harness.mailflow import Sent, Stream

pytestmark = pytest.mark.mail

_MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*(\S+)", re.IGNORECASE | re.MULTILINE)


def held(member: Member, users: list[str]) -> Counter[Sent]:
    """How many copies of each (user, Message-ID) the store holds, in every mailbox, read over IMAP."""
    copies: Counter[Sent] = Counter()
    for user in users:
        client = imaplib.IMAP4("127.0.0.1", member.ports["imap"], timeout=30)
        try:
            client.authenticate("PLAIN", lambda _, user=user: f"{user}\0{SYNC_ADMIN}\0{DOVEADM_PASSWORD}".encode())
            for mailbox in parse_list(client.list()[1]):
                assert client.select(mailbox, readonly=True)[0] == "OK"
                typ, data = client.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
                if typ != "OK":  # an empty mailbox
                    continue
                for item in data:
                    if isinstance(item, tuple):
                        for message_id in _MESSAGE_ID.findall(item[1]):
                            copies[user, message_id.decode()] += 1
        finally:
            client.logout()
    return copies


def uidvalidities(status: dict[str, Any]) -> dict[tuple[str, str], int]:
    return {(row["user"], row["mailbox"]): row["uidvalidity"] for row in status["mailboxes"]["summary"]}


async def test_a_killed_cyrus_master_loses_no_acknowledged_delivery(make_cyrus_pair: PairFactory) -> None:
    pair: Pair = make_cyrus_pair(users=5)
    a, b = pair.a, pair.b
    users = pair.users
    await pair.start()
    await a.wait_status(lambda s: s["readyAsMaster"] and s["replication"]["peerDoveadm"] == "ok", what="ready")

    steady = Stream("127.0.0.1", a.ports["lmtp"], users, "steady").start()
    steady.wait_for(100)
    steady.stop()
    assert steady.error is None
    await converged(a, b)
    assert (await a.status())["journal"]["journaled"] == len(steady.acked)
    await b.wait_status(lambda s: s["journal"]["entries"] == 0, what="journal pruned once in sync")

    stream = Stream("127.0.0.1", a.ports["lmtp"], users, "killed").start()
    stream.wait_for(150)
    last_report = await a.status()  # what the operator last polled of the old master
    a.kill()
    stream.stop()
    outcome = await fail_over(last_report, b)
    _, again = await b.request("POST", "/replay")
    assert again == {"entries": 0, "replayed": 0, "present": 0}  # idempotent
    assert_nothing_lost(await asyncio.to_thread(held, b, users), steady.acked + stream.acked, stream.unacked)
    assert uidvalidities(await b.status()) == uidvalidities(last_report), "UIDVALIDITY must survive a failover"
    errors = (await b.status())["errors"]
    assert all("unreachable" in error for error in errors), errors  # only the dead old master is missed
    print(f"\njournal held {outcome.journal_at_kill} at the kill: {outcome.replayed} replayed, {outcome.present} held")

    # The old master returns fenced, is demoted and re-seeded: it starts empty and the new master pushes its
    # whole store, so the copies it accepted but never replicated do not come back to the new master.
    a.start()
    await a.wait_healthy()
    assert (await a.status())["mode"] == "fenced", "a superseded master must come back fenced"
    await a.action("demote")
    reseeded = await a.action("reseed")
    assert reseeded["status"]["mode"] == "replica"
    assert not (a.data_dir / "reseed-set-aside").exists() or not any((a.data_dir / "reseed-set-aside").iterdir())
    await converged(b, a)
    on_b = await asyncio.to_thread(held, b, users)
    assert_nothing_lost(on_b, steady.acked + stream.acked, stream.unacked)
    after = Stream("127.0.0.1", b.ports["lmtp"], users, "after").start()
    after.wait_for(len(users))
    after.stop()
    await converged(b, a)
    _, repeated = await a.request("POST", "/reseed")  # an unfenced replica: nothing to do
    assert repeated["changed"] is False
    for member in (a, b):
        status = await member.wait_status(lambda s: s["replication"]["state"] == "in-sync", what="in sync")
        assert status["errors"] == [], status["errors"]
