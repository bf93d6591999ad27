"""The failover step that keeps UIDs unique: a master raises UIDNEXT per mailbox, on real Dovecot.

After an unplanned failover the new master may lack the last messages the old
one accepted; their UIDs must never be handed to other messages. The operator
sends the agent a floor per `user/mailbox` (`POST /uidnext`), and the next
message delivered must get a UID at or above it, while UIDVALIDITY, the UIDs
already present, and mailboxes whose floor is already passed stay untouched.
"""

from __future__ import annotations

import asyncio
import re

import mailtools
import pytest
from mail_support import PairFactory, post_uidnext

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
    code, answer = await post_uidnext(pair.b, {"floors": {}})
    assert code == 409
    assert "only a running master" in answer["error"]
    code, answer = await post_uidnext(pair.a, {"floors": ["not", "a", "map"]})
    assert code == 400
    code, answer = await post_uidnext(pair.a, {"floors": {}}, token=None)
    assert code == 401
