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
from collections.abc import Callable, Iterator

import pytest
from mail_support import DOVEADM_PASSWORD, Member, Pair, PairFactory, Proxy, converged
from test_journal import StoreReader, assert_nothing_lost, kill_drill, kill_mid_stream, rejoin

from mailshard.agent.cyrustools import parse_list
from mailshard.backends.cyrus import SYNC_ADMIN
from mailshard_harness.mailflow import Sent, Stream

pytestmark = pytest.mark.mail

_MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*(\S+)", re.IGNORECASE | re.MULTILINE)
_UID = re.compile(rb"UID (\d+)")


def messages(member: Member, user: str) -> Iterator[tuple[str, int, int, str]]:
    """(mailbox, UIDVALIDITY, UID, Message-ID) of each of the user's messages, read over IMAP as the user.

    A Cyrus replica serves no IMAP, so only a master is read; the admin authorizes as the user.
    """
    client = imaplib.IMAP4("127.0.0.1", member.ports["imap"], timeout=30)
    try:
        client.authenticate("PLAIN", lambda _: f"{user}\0{SYNC_ADMIN}\0{DOVEADM_PASSWORD}".encode())
        for mailbox in parse_list(client.list()[1]):
            assert client.select(mailbox, readonly=True)[0] == "OK"
            uidvalidity = int(client.untagged_responses["UIDVALIDITY"][0])  # type: ignore[arg-type]
            typ, data = client.uid("FETCH", "1:*", "(UID BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
            assert typ == "OK", data
            for item in data:
                if isinstance(item, tuple) and (uid := _UID.search(item[0])):
                    for message_id in _MESSAGE_ID.findall(item[1]):
                        yield mailbox, uidvalidity, int(uid.group(1)), message_id.decode()
            if not any(isinstance(item, tuple) for item in data):  # an empty mailbox still has a UIDVALIDITY
                yield mailbox, uidvalidity, 0, ""
    finally:
        client.logout()


def held(member: Member, users: list[str]) -> Counter[Sent]:
    """How many copies of each (user, Message-ID) the store holds, in every mailbox."""
    return Counter((user, message_id) for user in users for _, _, uid, message_id in messages(member, user) if uid)


def uid_map(member: Member, users: list[str]) -> dict[tuple[str, str, int], str]:
    """(user, mailbox, UID) → Message-ID: what a client may have cached."""
    return {(user, box, uid): mid for user in users for box, _, uid, mid in messages(member, user) if uid}


def imap_uidvalidities(member: Member) -> dict[tuple[str, str], int]:
    """(user, mailbox) → UIDVALIDITY of every user the agent reports, as IMAP shows it."""
    status = asyncio.run(member.status())
    users = sorted({row["user"] for row in status["mailboxes"]["summary"]})
    return {(user, box): validity for user in users for box, validity, _, _ in messages(member, user)}


CYRUS_IMAP = StoreReader(held, uid_map, imap_uidvalidities)


async def test_a_killed_cyrus_master_loses_no_acknowledged_delivery(make_cyrus_pair: PairFactory) -> None:
    pair: Pair = make_cyrus_pair(users=5)
    a, b = pair.a, pair.b
    killed = await kill_mid_stream(pair, CYRUS_IMAP)
    errors = (await b.status())["errors"]
    assert all("unreachable" in error for error in errors), errors  # only the dead old master is missed

    # The old master returns fenced, is demoted and re-seeded: it starts empty and the new master pushes its
    # whole store, so the copies it accepted but never replicated do not come back to the new master.
    await rejoin(a, b)
    assert not (a.data_dir / "reseed-set-aside").exists(), "the old store is removed once pushed"
    after = Stream("127.0.0.1", b.ports["lmtp"], pair.users, "after").start()
    after.wait_for(len(pair.users))
    after.stop()
    await converged(b, a)
    on_b = await asyncio.to_thread(held, b, pair.users)
    assert_nothing_lost(on_b, killed.acked + after.acked, killed.unacked + after.unacked)
    _, repeated = await a.request("POST", "/reseed")  # an unfenced replica: nothing to do
    assert repeated["changed"] is False
    for member in (a, b):
        status = await member.wait_status(lambda s: s["replication"]["state"] == "in-sync", what="in sync")
        assert status["errors"] == [], status["errors"]


async def test_cyrus_kill_drill_through_the_proxy(
    make_cyrus_pair: PairFactory, proxy: Proxy, record_property: Callable[[str, object], None]
) -> None:
    """The 20-kill drill of ``test_journal.py`` on Cyrus: through the proxy, nothing lost, no UID reused."""
    await kill_drill(make_cyrus_pair(users=5), proxy, record_property, CYRUS_IMAP)
