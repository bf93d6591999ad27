"""The data plane end to end: replicate 1,000 messages, fail over, fail back, and compare over IMAP.

One scenario, in the order an operator runs it, on one real Dovecot pair.
A replica serves no IMAP (see ``mailshard.backends.dovecot`` for why), so each
side is read over IMAP while it is the master, and the pair is switched over
to read the other side before anything new is written:

1. A is master: 1,000 messages to 50 users over LMTP, flags and expunges over
   IMAP; wait until B holds the same (read with doveadm on B); read A over IMAP.
2. Fence A, promote B; read B over IMAP: UIDVALIDITY, UID sets and flags must
   equal what A showed. Then write to B (LMTP and IMAP APPEND).
3. Demote and unfence A: it converges back. Switch back (fence B, promote A)
   and read A: it holds all of B's mail, and no old UID or flag changed.
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


async def doveadm_caught_up(master: Member, replica: Member, *, within: float) -> float:
    """Seconds until the replica's doveadm shows every mailbox exactly as the master's does."""
    started = time.monotonic()
    expected = await asyncio.to_thread(master.mailbox_counts)
    while time.monotonic() - started < within:
        if await asyncio.to_thread(replica.mailbox_counts) == expected:
            return time.monotonic() - started
        await asyncio.sleep(0.02)
    raise AssertionError(f"{replica.name} did not catch up with {master.name} within {within}s")


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
    for port in ("imap", "lmtp", "doveadm"):
        assert not port_open(old.ports[port]), port
    promoted = await new.action("promote")
    assert promoted["status"]["mode"] == "master"
    assert promoted["status"]["readyAsMaster"] is True


async def rejoin(member: Member) -> None:
    await member.action("demote")
    rejoined = await member.action("unfence")
    assert rejoined["status"]["mode"] == "replica"
    assert rejoined["status"]["readyAsMaster"] is False


async def both_in_sync(pair: Pair, what: str) -> None:
    for member in (pair.a, pair.b):
        status = await member.wait_status(
            lambda s: s["replication"]["state"] == "in-sync" and s["replication"]["lagSeconds"] == 0, what=what
        )
        assert status["mailboxes"]["count"] == USERS
        assert status["errors"] == []


async def deliver_and_flag(pair: Pair, record_property: RecordProperty) -> None:
    """1,000 messages to 50 users over LMTP on the master, then flags and expunges over IMAP."""
    a, b = pair.a, pair.b
    messages = [(user, mailtools.make_message(user, i)) for i in range(PER_USER) for user in pair.users]
    started = time.monotonic()
    delivered = await asyncio.to_thread(mailtools.deliver, a.ports["lmtp"], messages)
    delivery_seconds = time.monotonic() - started
    assert delivered == USERS * PER_USER
    caught_up = await doveadm_caught_up(a, b, within=60)
    record_property("delivery_seconds_1000", round(delivery_seconds, 2))
    record_property("replica_caught_up_after_last_delivery_seconds", round(caught_up, 2))
    print(f"\n1,000 messages delivered in {delivery_seconds:.2f}s; replica caught up {caught_up:.2f}s later")
    for n, user in enumerate(pair.users):
        changes = [("1:5", "+FLAGS (\\Seen)"), ("3", "+FLAGS (\\Flagged $Label1)"), ("7", "+FLAGS (\\Answered)")]
        if n % 5 == 0:
            changes.append(("10", "+FLAGS (\\Deleted)"))
        await asyncio.to_thread(
            mailtools.store_flags, a.ports["imap"], user, pair.passwords[user], changes, expunge=n % 5 == 0
        )


async def test_replicate_failover_failback(make_pair: PairFactory, record_property: RecordProperty) -> None:
    pair = make_pair(users=USERS)
    a, b = pair.a, pair.b
    user = pair.users[0]
    await pair.start()
    await a.wait_status(lambda s: s["replication"]["peerDoveadm"] == "ok", what="peer doveadm reachable")

    # 1. Replicate, then read the master.
    await deliver_and_flag(pair, record_property)
    await converged(a, b, within=60)
    await both_in_sync(pair, "in-sync with lag 0")  # once converged, both agents say so, with zero lag
    # 1,000 deliveries to 50 users: the replicator runs up to 10 dsyncs at once into the replica's
    # replication listener, each needing a doveadm server process of its own.
    for member in (a, b):
        assert "can handle only a single client" not in member.log_tail(20000), f"{member.name}: dsync refused"
    assert (await a.status())["readyAsMaster"] is True
    assert (await b.status())["readyAsMaster"] is False
    for port in ("imap", "lmtp", "pop3", "managesieve"):  # the replica takes no client at all
        assert not port_open(b.ports[port]), port
    on_a = await read(pair, a)
    assert sum(len(snap.uids) for snap in on_a.values()) == USERS * PER_USER - USERS // 5
    assert on_a[user].flags[3] == {"\\Seen", "\\Flagged", "$Label1"}
    assert on_a[user].flags[7] == {"\\Answered"}
    assert 10 not in on_a[user].uids

    # 2. Fail over; the new master shows exactly what the old one did, then takes writes.
    await switch_over(a, b)
    assert_same(on_a, await read(pair, b))
    new_messages = [(u, mailtools.make_message(u, 100 + i)) for i in range(2) for u in pair.users]
    assert await asyncio.to_thread(mailtools.deliver, b.ports["lmtp"], new_messages) == len(new_messages)
    message = mailtools.make_message(user, 500)
    typ, data = await asyncio.to_thread(mailtools.append, b.ports["imap"], user, pair.passwords[user], message)
    assert typ == "OK", data
    # Its replica (the fenced old master) gets nothing: B says so, and counts the lag.
    b_status = await b.wait_status(
        lambda s: s["replication"]["peerMode"] == "fenced" and (s["replication"]["lagSeconds"] or 0) > 0,
        what="peer seen fenced and behind",
    )
    assert b_status["replication"]["state"] == "failing"

    # 3. The old master rejoins as a replica and converges; switch back and read it.
    await rejoin(a)
    await doveadm_caught_up(b, a, within=60)
    await converged(b, a, within=60)
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
