"""The failover step that keeps UIDs unique, on real Cyrus: a master raises UIDNEXT per mailbox.

Cyrus 3.6 has no command that sets a mailbox's next UID; the agent has
``reconstruct`` adopt a placeholder message file numbered just below the floor,
then drop it (``CyrusTools.raise_uidnext``). What a client sees must be
exactly what ``test_uidnext.py`` shows for Dovecot: the next message gets the
floor as its UID, UIDVALIDITY and the messages are unchanged, floors already
passed and unknown mailboxes change nothing, a repeated call changes nothing
more. And the replica ends up with the same UIDNEXT, so a later failover back
cannot reuse those UIDs either.

Mailboxes the master lacks are created under the UIDVALIDITY asked for
(``CyrusTools.create_mailbox``: a tombstone one below it, then an ordinary
CREATE), with their next UID at the floor, and replicated as they are; one
that exists keeps its UIDVALIDITY whatever is asked.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import mailtools
import pytest
from mail_support import (
    OLD_UIDVALIDITY,
    Member,
    Pair,
    PairFactory,
    converged,
    creation_request,
    not_kept,
    post_uidnext,
)

pytestmark = pytest.mark.mail


def summary(status: dict[str, Any]) -> dict[tuple[str, str], tuple[int, int, int]]:
    rows = status["mailboxes"]["summary"]
    return {(r["user"], r["mailbox"]): (r["uidvalidity"], r["uidnext"], r["messages"]) for r in rows}


def uids(member: Member, pair: Pair, user: str, mailbox: str) -> list[int]:
    client = mailtools.imap_login(member.ports["imap"], user, pair.passwords[user])
    try:
        assert client.select(mailbox, readonly=True)[0] == "OK"
        typ, data = client.uid("SEARCH", "ALL")
        assert typ == "OK", data
        return [int(uid) for uid in (data[0] or b"").split()]
    finally:
        client.logout()


async def test_a_cyrus_master_raises_uidnext_to_each_floor_and_new_mail_starts_there(
    make_cyrus_pair: PairFactory,
) -> None:
    pair = make_cyrus_pair(users=3)
    await pair.start()
    a = pair.a
    await a.wait_status(lambda s: s["readyAsMaster"], what="ready as master")
    first, second, third = pair.users
    messages = [(user, mailtools.make_message(user, i)) for user in pair.users for i in range(3)]
    await asyncio.to_thread(mailtools.deliver, a.ports["lmtp"], messages)
    client = mailtools.imap_login(a.ports["imap"], first, pair.passwords[first])
    try:
        assert client.create("Sent")[0] == "OK"
    finally:
        client.logout()
    await converged(a, pair.b)
    before = summary(await a.status())
    assert before[(first, "INBOX")][1:] == (4, 3)  # UIDNEXT 4, 3 messages

    floors = {
        f"{first}/INBOX": 50_000,
        f"{first}/Sent": 7,
        f"{second}/INBOX": 2,
        "nobody@example.test/INBOX": 9,
    }
    code, answer = await post_uidnext(a, {"floors": floors})
    assert code == 200, answer
    assert (answer["raised"], answer["skipped"]) == (3, 1)
    after = summary(await a.status())
    assert after[(first, "INBOX")] == (before[(first, "INBOX")][0], 50_000, 3), "UIDVALIDITY and messages kept"
    assert after[(first, "Sent")] == (before[(first, "Sent")][0], 7, 0)
    assert after[(second, "INBOX")] == before[(second, "INBOX")], "a floor already passed changes nothing"
    assert after[(third, "INBOX")] == before[(third, "INBOX")], "a mailbox without a floor is left alone"
    assert await asyncio.to_thread(uids, a, pair, first, "INBOX") == [1, 2, 3], "no placeholder is left"

    typ, data = await asyncio.to_thread(
        mailtools.append, a.ports["imap"], first, pair.passwords[first], mailtools.make_message(first, 99)
    )
    assert typ == "OK"
    appended = re.search(rb"APPENDUID (\d+) (\d+)", b" ".join(d for d in data if d))
    assert appended is not None
    assert int(appended.group(2)) == 50_000, "the next message gets the floor as its UID"
    assert int(appended.group(1)) == before[(first, "INBOX")][0]

    # Idempotent: the same request again changes nothing more.
    code, _ = await post_uidnext(a, {"floors": floors})
    assert code == 200
    assert summary(await a.status())[(first, "INBOX")][1] == 50_001
    # The replica holds the same: a failover back would not reuse those UIDs either.
    await converged(a, pair.b)
    assert summary(await pair.b.status())[(first, "INBOX")] == (before[(first, "INBOX")][0], 50_001, 4)
    assert (await a.status())["errors"] == []


async def test_a_cyrus_master_creates_the_mailboxes_it_lacks_under_the_uidvalidity_asked_for(
    make_cyrus_pair: PairFactory,
) -> None:
    pair = make_cyrus_pair(users=2)
    await pair.start()
    a, b = pair.a, pair.b
    await a.wait_status(lambda s: s["readyAsMaster"], what="ready as master")
    known, newcomer = pair.users
    await converged(a, b)
    validity = summary(await a.status())[(known, "INBOX")][0]
    ghost = "ghost.user@example.test"  # not in the users file: no INBOX was provisioned for it
    old = OLD_UIDVALIDITY
    body = creation_request(ghost, newcomer, known, validity)

    code, answer = await post_uidnext(a, body)

    assert code == 200, answer
    assert answer["created"] == [f"{ghost}/INBOX", f"{newcomer}/Archive"]
    assert not_kept(answer) == [(f"{known}/INBOX", validity, "it exists here under another UIDVALIDITY")]
    after = summary(await a.status())
    assert after[(ghost, "INBOX")] == (old, 10_002, 0)
    assert after[(newcomer, "Archive")] == (old + 7, 40, 0)
    assert after[(known, "INBOX")] == (validity, 1, 0), "an existing mailbox is never changed"

    typ, data = await asyncio.to_thread(
        mailtools.append,
        a.ports["imap"],
        newcomer,
        pair.passwords[newcomer],
        mailtools.make_message(newcomer, 1),
        mailbox="Archive",
    )
    assert typ == "OK"
    appended = re.search(rb"APPENDUID (\d+) (\d+)", b" ".join(d for d in data if d))
    assert appended is not None
    assert (int(appended.group(1)), int(appended.group(2))) == (old + 7, 40), "under the old UIDVALIDITY, at the floor"

    await a.wait_status(lambda s: summary(s)[(newcomer, "Archive")] == (old + 7, 41, 1), what="the new message")
    await converged(a, b)
    on_replica = summary(await b.status())
    assert on_replica[(ghost, "INBOX")] == (old, 10_002, 0)
    assert on_replica[(newcomer, "Archive")] == (old + 7, 41, 1)

    before = summary(await a.status())
    code, again = await post_uidnext(a, body)
    assert code == 200, again
    assert (again["created"], again["present"]) == ([], [f"{ghost}/INBOX", f"{newcomer}/Archive"])
    assert summary(await a.status()) == before, "asked again, nothing changes"
    assert (await a.status())["errors"] == []
