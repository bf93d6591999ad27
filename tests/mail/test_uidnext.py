"""The failover step that keeps UIDs unique: a master raises UIDNEXT per mailbox, on real Dovecot.

After an unplanned failover the new master may lack the last messages the old
one accepted; their UIDs must never be handed to other messages. The operator
sends the agent a floor per `user/mailbox` (`POST /uidnext`), and the next
message delivered must get a UID at or above it, while UIDVALIDITY, the UIDs
already present, and mailboxes whose floor is already passed stay untouched.

It may lack whole mailboxes too (a new user's INBOX, created by its first
delivery just before the master died): those the operator asks it to create
under the old master's UIDVALIDITY, with their next UID above the old
master's, before any delivery creates them afresh. Mail then lands in them
under that UIDVALIDITY, replication gives the replica the same, and a mailbox
that exists already keeps its UIDVALIDITY whatever is asked.
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
    PairFactory,
    converged,
    creation_request,
    not_kept,
    post_uidnext,
)

pytestmark = pytest.mark.mail


async def test_a_master_raises_uidnext_to_each_floor_and_new_mail_starts_there(make_pair: PairFactory) -> None:
    pair = make_pair(users=3)
    await pair.start()
    first, second, third = pair.users
    messages = [(user, mailtools.make_message(user, i)) for user in pair.users for i in range(3)]
    await asyncio.to_thread(mailtools.deliver, pair.a.ports["lmtp"], messages)
    before = await asyncio.to_thread(pair.a.mailbox_counts)
    assert before[(first, "INBOX")][1:] == (4, 3)  # UIDNEXT 4, 3 messages

    floors = {f"{first}/INBOX": 50_000, f"{second}/INBOX": 2, "nobody@example.test/INBOX": 9}
    code, answer = await post_uidnext(pair.a, {"floors": floors})
    assert code == 200, answer
    assert (answer["raised"], answer["skipped"]) == (2, 1)
    after = await asyncio.to_thread(pair.a.mailbox_counts)
    assert after[(first, "INBOX")] == (before[(first, "INBOX")][0], 50_000, 3), "UIDVALIDITY and messages kept"
    assert after[(second, "INBOX")] == before[(second, "INBOX")], "a floor already passed changes nothing"
    assert after[(third, "INBOX")] == before[(third, "INBOX")], "a mailbox without a floor is left alone"

    typ, data = await asyncio.to_thread(
        mailtools.append, pair.a.ports["imap"], first, pair.passwords[first], mailtools.make_message(first, 99)
    )
    assert typ == "OK"
    appended = re.search(rb"APPENDUID (\d+) (\d+)", b" ".join(d for d in data if d))
    assert appended is not None
    assert int(appended.group(2)) == 50_000, "the next message gets the floor as its UID"

    # Idempotent: the same request again changes nothing more.
    code, _ = await post_uidnext(pair.a, {"floors": floors})
    assert code == 200
    assert (await asyncio.to_thread(pair.a.mailbox_counts))[(first, "INBOX")][1] == 50_001


async def test_only_a_master_raises_uidnext_and_bad_requests_are_refused(make_pair: PairFactory) -> None:
    pair = make_pair(users=1)
    await pair.start()
    (user,) = pair.users
    create = {f"{user}/INBOX": {"uidvalidity": 1_700_000_123, "uidnext": 50}}
    code, answer = await post_uidnext(pair.b, {"floors": {}, "create": create})
    assert code == 409
    assert "only a running master" in answer["error"]
    code, answer = await post_uidnext(pair.a, {"floors": ["not", "a", "map"]})
    assert code == 400
    for bad in ({"uidvalidity": 0, "uidnext": 50}, {"uidvalidity": 1_700_000_123}, {"uidvalidity": "7", "uidnext": 2}):
        code, answer = await post_uidnext(pair.a, {"floors": {}, "create": {f"{user}/INBOX": bad}})
        assert code == 400, bad
    code, answer = await post_uidnext(pair.a, {"floors": {}, "create": create}, token=None)
    assert code == 401
    assert pair.a.mailbox_counts() == {}, "a refused request created nothing"


def summary(status: dict[str, Any]) -> dict[tuple[str, str], tuple[int, int, int]]:
    rows = status["mailboxes"]["summary"]
    return {(r["user"], r["mailbox"]): (r["uidvalidity"], r["uidnext"], r["messages"]) for r in rows}


def fetched_uids(member: Member, user: str) -> list[tuple[str, int]]:
    return [(row["mailbox"], int(row["uid"])) for row in member.doveadm_json("fetch", "-u", user, "mailbox uid", "ALL")]


async def test_a_master_creates_the_mailboxes_it_lacks_under_the_uidvalidity_asked_for(make_pair: PairFactory) -> None:
    pair = make_pair(users=3)
    a, b = pair.a, pair.b
    await pair.start()
    await a.wait_status(lambda s: s["readyAsMaster"] and s["replication"]["peerDoveadm"] == "ok", what="ready")
    known, newcomer, _ = pair.users
    await asyncio.to_thread(mailtools.deliver, a.ports["lmtp"], [(known, mailtools.make_message(known, 1))])
    await converged(a, b)
    validity = a.mailbox_counts()[(known, "INBOX")][0]
    old = OLD_UIDVALIDITY
    body = creation_request(newcomer, newcomer, known, validity)

    code, answer = await post_uidnext(a, body)

    assert code == 200, answer
    assert answer["created"] == [f"{newcomer}/Archive", f"{newcomer}/INBOX"]
    assert answer["present"] == []
    assert not_kept(answer) == [(f"{known}/INBOX", validity, "it exists here under another UIDVALIDITY")]
    counts = a.mailbox_counts()
    assert counts[(newcomer, "INBOX")] == (old, 10_002, 0)
    assert counts[(newcomer, "Archive")] == (old + 7, 40, 0)
    assert counts[(known, "INBOX")] == (validity, 2, 1), "an existing mailbox is never changed"

    # Mail lands in the new INBOX under the old UIDVALIDITY, from the floor on.
    await asyncio.to_thread(mailtools.deliver, a.ports["lmtp"], [(newcomer, mailtools.make_message(newcomer, 1))])
    assert fetched_uids(a, newcomer) == [("INBOX", 10_002)]
    client = mailtools.imap_login(a.ports["imap"], newcomer, pair.passwords[newcomer])
    try:
        assert client.select("INBOX", readonly=True)[0] == "OK"
        assert client.untagged_responses["UIDVALIDITY"] == [str(old).encode()]
    finally:
        client.logout()

    # Replication gives the replica the same (once the master's agent has seen the new message).
    await a.wait_status(lambda s: summary(s)[(newcomer, "INBOX")] == (old, 10_003, 1), what="the new message")
    await converged(a, b)
    assert summary(await b.status())[(newcomer, "INBOX")] == (old, 10_003, 1)
    assert summary(await b.status())[(newcomer, "Archive")] == (old + 7, 40, 0)

    # Idempotent: asked again, the mailboxes exist under the UIDVALIDITY asked for and nothing changes.
    before = a.mailbox_counts()
    code, again = await post_uidnext(a, body)
    assert code == 200, again
    assert (again["created"], again["present"]) == ([], [f"{newcomer}/Archive", f"{newcomer}/INBOX"])
    assert len(again["uidvalidityNotKept"]) == 1
    assert a.mailbox_counts() == before
