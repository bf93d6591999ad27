"""The Cyrus data plane end to end: replicate 1,000 messages, fail over, fail back, compare over IMAP.

The same scenario as ``test_failover.py``, on a real Cyrus 3.6 pair run by
two agents (``backend: cyrus``). Cyrus conflicts with Dovecot in apt, so it
runs from a prefix extracted by ``.ci/install-cyrus-prefix``; the agents find
it through ``MAILSHARD_CYRUS_ROOT``. A Cyrus replica serves no IMAP either, so
each side is read over IMAP while it is the master:

1. A is master: 1,000 messages to 50 users over LMTP, flags and expunges over
   IMAP; both agents report the same mailboxes, in sync with lag 0.
2. Fence A, promote B; B shows over IMAP exactly what A showed, then takes
   writes; B reports a lag that matches the time since its first write.
3. Demote and unfence A: it converges back. Switch back and read A: it holds
   all of B's mail, and no old UID, UIDVALIDITY or flag changed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import mailtools
import pytest
from mail_support import Member, Pair, PairFactory, converged, port_open

pytestmark = pytest.mark.mail

RecordProperty = Callable[[str, object], None]
Snapshot = dict[str, mailtools.MailboxSnapshot]

USERS = 50
PER_USER = 20  # 50 x 20 = 1,000 messages


def assert_same(one: Snapshot, two: Snapshot) -> None:
    assert one.keys() == two.keys()
    for user in one:
        assert one[user].uidvalidity == two[user].uidvalidity, f"{user}: UIDVALIDITY differs"
        assert one[user].uids == two[user].uids, f"{user}: UID sets differ"
        assert one[user].flags == two[user].flags, f"{user}: flags differ"


async def read(pair: Pair, member: Member) -> Snapshot:
    snapshot: Snapshot = await asyncio.to_thread(mailtools.snapshot, member.ports["imap"], pair.users, pair.passwords)
    return snapshot


async def switch_over(old: Member, new: Member) -> None:
    """Fence the master, then promote the replica (the operator's order)."""
    assert (await old.action("fence"))["status"]["mode"] == "fenced"
    for port in ("imap", "lmtp", "doveadm"):  # "doveadm" is Cyrus's sync port
        assert not port_open(old.ports[port]), port
    promoted = await new.action("promote")
    assert promoted["status"]["mode"] == "master"
    assert promoted["status"]["readyAsMaster"] is True
    assert port_open(new.ports["imap"])
    assert port_open(new.ports["lmtp"])


async def rejoin(member: Member) -> None:
    await member.action("demote")
    rejoined = await member.action("unfence")
    assert rejoined["status"]["mode"] == "replica"
    assert rejoined["status"]["readyAsMaster"] is False
    assert port_open(member.ports["doveadm"])
    assert not port_open(member.ports["imap"])


async def both_in_sync(pair: Pair, what: str) -> None:
    for member in (pair.a, pair.b):
        status = await member.wait_status(
            lambda s: s["replication"]["state"] == "in-sync" and s["replication"]["lagSeconds"] == 0, what=what
        )
        assert status["backend"] == "cyrus"
        assert status["mailboxes"]["count"] == USERS
        assert status["errors"] == []


async def replicate_and_read(pair: Pair, record_property: RecordProperty) -> Snapshot:
    """1. 1,000 messages to 50 users over LMTP on A, flags and expunges over IMAP; B converges; read A."""
    a, b = pair.a, pair.b
    user = pair.users[0]
    messages = [(u, mailtools.make_message(u, i)) for i in range(PER_USER) for u in pair.users]
    started = time.monotonic()
    # Four parallel sessions: the agent created every INBOX beforehand (racing autocreation mixes mailboxes).
    assert await asyncio.to_thread(mailtools.deliver, a.ports["lmtp"], messages) == USERS * PER_USER
    delivery_seconds = time.monotonic() - started
    caught_up = await converged(a, b, within=60)
    assert {row["messages"] for row in (await a.status())["mailboxes"]["summary"]} == {PER_USER}  # none mixed up
    record_property("cyrus_delivery_seconds_1000", round(delivery_seconds, 2))
    record_property("cyrus_converged_after_last_delivery_seconds", round(caught_up, 2))
    print(f"\nCyrus: 1,000 messages delivered in {delivery_seconds:.2f}s; agents agree {caught_up:.2f}s later")
    for n, u in enumerate(pair.users):
        changes = [("1:5", "+FLAGS (\\Seen)"), ("3", "+FLAGS (\\Flagged $Label1)"), ("7", "+FLAGS (\\Answered)")]
        if n % 5 == 0:
            changes.append(("10", "+FLAGS (\\Deleted)"))
        await asyncio.to_thread(
            mailtools.store_flags, a.ports["imap"], u, pair.passwords[u], changes, expunge=n % 5 == 0
        )
    await converged(a, b, within=60)
    await both_in_sync(pair, "in-sync with lag 0")
    assert (await b.status())["readyAsMaster"] is False
    for port in ("imap", "lmtp"):  # the replica takes no client at all
        assert not port_open(b.ports[port]), port
    on_a = await read(pair, a)
    assert sum(len(snap.uids) for snap in on_a.values()) == USERS * PER_USER - USERS // 5
    assert on_a[user].flags[3] == {"\\Seen", "\\Flagged", "$Label1"}
    assert on_a[user].flags[7] == {"\\Answered"}
    assert 10 not in on_a[user].uids

    return on_a


async def test_cyrus_replicate_failover_failback(make_cyrus_pair: PairFactory, record_property: RecordProperty) -> None:
    pair = make_cyrus_pair(users=USERS)
    a, b = pair.a, pair.b
    user = pair.users[0]
    await pair.start()
    await a.wait_status(
        lambda s: s["replication"]["peerDoveadm"] == "ok" and s["readyAsMaster"], what="ready, peer reachable"
    )

    on_a = await replicate_and_read(pair, record_property)

    # 2. Fail over; the new master shows exactly what the old one did, then takes writes.
    await switch_over(a, b)
    assert_same(on_a, await read(pair, b))
    new_messages = [(u, mailtools.make_message(u, 100 + i)) for i in range(2) for u in pair.users]
    first_write = time.monotonic()  # the oldest change B's replica lacks lands a few ms after this
    assert await asyncio.to_thread(mailtools.deliver, b.ports["lmtp"], new_messages) == len(new_messages)
    message = mailtools.make_message(user, 500)
    typ, data = await asyncio.to_thread(mailtools.append, b.ports["imap"], user, pair.passwords[user], message)
    assert typ == "OK", data
    # Its replica (the fenced old master) gets nothing: B says so, and its lag is the age of the first write.
    b_status = await b.wait_status(
        lambda s: s["replication"]["peerMode"] == "fenced" and (s["replication"]["lagSeconds"] or 0) >= 2,
        what="peer seen fenced and behind by 2s",
    )
    observed = time.monotonic() - first_write
    lag = b_status["replication"]["lagSeconds"]
    record_property("cyrus_reported_lag_seconds", lag)
    record_property("cyrus_observed_lag_seconds", round(observed, 2))
    # A lower bound, short by at most one observation interval (0.5 s) plus the HTTP round trip.
    assert observed - 1.5 <= lag <= observed + 0.1, (lag, observed)
    assert b_status["replication"]["state"] == "failing"
    assert b_status["replication"]["behindMailboxes"] == USERS

    # 3. The old master rejoins as a replica and converges; switch back and read it.
    await rejoin(a)
    rejoin_seconds = await converged(b, a, within=60)
    record_property("cyrus_failback_converged_seconds", round(rejoin_seconds, 2))
    print(f"Cyrus: the rejoined old master converged {rejoin_seconds:.2f}s after unfencing")
    await both_in_sync(pair, "in-sync after failback")
    on_b = await read(pair, b)
    await switch_over(b, a)
    after = await read(pair, a)
    assert_same(on_b, after)
    for u in pair.users:
        assert after[u].uidvalidity == on_a[u].uidvalidity, f"{u}: UIDVALIDITY changed"
        old = on_a[u].flags
        assert {uid: after[u].flags[uid] for uid in old} == old, f"{u}: old UIDs or their flags changed"
        assert len(after[u].uids) == len(old) + 2 + (1 if u == user else 0)
    await rejoin(b)
    await both_in_sync(pair, "in-sync after switching back")
