"""Cyrus creates a missing INBOX at its first delivery, with an id of its own, and refuses non-users.

The master's agent creates every user's INBOX before it serves; a user whose
INBOX is missing anyway (added to the users file since, or removed) gets it
from ``lmtpd``'s autocreation at the first delivery. Debian's Cyrus makes
mailbox ids from ``rand()`` seeded with the current second, so an INBOX
autocreated by ``lmtpd`` in the same second as another mailbox created by an
``imapd`` got that mailbox's id, and replication then failed for both users
for good; the library the agent preloads into Cyrus (``cyruspreload``) mixes
kernel randomness into every seed. Both mailboxes are created in one second
here, and both users must replicate.
"""

from __future__ import annotations

import asyncio
import imaplib
import smtplib
import threading
import time

import mailtools
import pytest
from mail_support import DOVEADM_PASSWORD, Member, Pair, PairFactory, converged

from mailshard.agent.cyrustools import personal_mailbox
from mailshard.backends.cyrus import SYNC_ADMIN

pytestmark = pytest.mark.mail


def admin(member: Member) -> imaplib.IMAP4:
    client = imaplib.IMAP4("127.0.0.1", member.ports["imap"], timeout=30)
    client.login(SYNC_ADMIN, DOVEADM_PASSWORD)
    return client


def remove_inbox(member: Member, user: str) -> None:
    client = admin(member)
    try:
        mailbox = personal_mailbox(user)
        assert client.setacl(mailbox, SYNC_ADMIN, "lrswipkxtecda")[0] == "OK"
        typ, data = client.delete(mailbox)
        assert typ == "OK", data
    finally:
        client.logout()


def create_inbox(member: Member, user: str, start: threading.Barrier) -> None:
    client = admin(member)
    try:
        start.wait()
        typ, data = client.create(personal_mailbox(user))
        assert typ == "OK", data
    finally:
        client.logout()


def deliver(member: Member, user: str, index: int, start: threading.Barrier | None = None) -> None:
    with smtplib.LMTP("127.0.0.1", member.ports["lmtp"], timeout=30) as lmtp:
        lmtp.ehlo("test")
        if start is not None:
            start.wait()
        assert lmtp.sendmail("sender@example.test", [user], mailtools.make_message(user, index)) == {}


def subjects(member: Member, user: str, password: str) -> list[str]:
    client = mailtools.imap_login(member.ports["imap"], user, password)
    try:
        assert client.select("INBOX", readonly=True)[0] == "OK"
        typ, data = client.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert typ == "OK", data
        return sorted(item[1].decode().strip().removeprefix("Subject: ") for item in data if isinstance(item, tuple))
    finally:
        client.logout()


async def in_sync(pair: Pair, users: int) -> None:
    await converged(pair.a, pair.b, within=60)
    for member in (pair.a, pair.b):
        status = await member.wait_status(
            lambda s: s["replication"]["state"] == "in-sync" and s["mailboxes"]["users"] == users,
            what=f"in sync with {users} users",
        )
        assert status["errors"] == [], status["errors"]


async def test_a_missing_inbox_is_created_by_its_first_delivery_and_replicates(make_cyrus_pair: PairFactory) -> None:
    pair = make_cyrus_pair(users=3)
    await pair.start()
    a = pair.a
    await a.wait_status(lambda s: s["readyAsMaster"], what="ready as master")
    first, second, third = pair.users
    await in_sync(pair, 3)
    for user in (second, third):
        await asyncio.to_thread(remove_inbox, a, user)
    await in_sync(pair, 1)

    # In one second: an admin's imapd creates one INBOX while lmtpd autocreates the other at a delivery.
    await asyncio.sleep(1 - time.time() % 1)
    start = threading.Barrier(2, timeout=10)
    await asyncio.gather(
        asyncio.to_thread(create_inbox, a, second, start),
        asyncio.to_thread(deliver, a, third, 1, start),
    )
    await asyncio.to_thread(deliver, a, second, 1)
    await asyncio.to_thread(deliver, a, first, 1)

    for user in pair.users:
        assert await asyncio.to_thread(subjects, a, user, pair.passwords[user]) == [f"message 1 for {user}"]
    await in_sync(pair, 3)
    assert "IMAP_MAILBOX_MOVED" not in a.log_path.read_text(), "two mailboxes got one id"


async def test_only_users_in_the_users_file_receive_mail(make_cyrus_pair: PairFactory) -> None:
    pair = make_cyrus_pair(users=1)
    await pair.start()
    a = pair.a
    await a.wait_status(lambda s: s["readyAsMaster"], what="ready as master")
    (user,) = pair.users
    local, _, domain = user.partition("@")

    def rcpt(address: str) -> int:
        with smtplib.LMTP("127.0.0.1", a.ports["lmtp"], timeout=30) as lmtp:
            lmtp.ehlo("test")
            assert lmtp.mail("sender@example.test")[0] == 250
            return lmtp.rcpt(address)[0]

    for stranger in (f"nobody@{domain}", f"{local}@elsewhere.test"):
        assert await asyncio.to_thread(rcpt, stranger) == 550, stranger
    for address in (user, user.upper(), f"{local}+lists@{domain}"):
        assert await asyncio.to_thread(rcpt, address) == 250, address
    await asyncio.to_thread(deliver, a, f"{local}+lists@{domain}", 7)
    assert await asyncio.to_thread(subjects, a, user, pair.passwords[user]) == [f"message 7 for {local}+lists@{domain}"]
    status = await a.status()
    assert {row["user"] for row in status["mailboxes"]["summary"]} == {user}
