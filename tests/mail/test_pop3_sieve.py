"""POP3 and ManageSieve on a real master of each backend, and the uploaded Sieve script run at delivery.

IMAP and LMTP are what the other mail-tier tests use; a member also serves
POP3 and ManageSieve (Cyrus's ``pop3d`` and ``timsieved``, Dovecot's
``pop3`` and ``managesieve``) on the ports of the pod contract. Here a user
uploads a script over ManageSieve, lists and activates it, and the next LMTP
delivery is filed by it; POP3 then shows exactly the mail left in INBOX.
"""

from __future__ import annotations

import asyncio
import imaplib
import poplib

import mailtools
import pytest
from mail_support import Member, Pair, PairFactory, require_cyrus_pop3d

pytestmark = pytest.mark.mail

FOLDER = "Filed"
SCRIPT = b"""require "fileinto";
if header :contains "Subject" "file me" {
  fileinto "Filed";
}
"""


@pytest.fixture(params=["dovecot", "cyrus"])
def backend_pair(request: pytest.FixtureRequest) -> PairFactory:
    factory: PairFactory = request.getfixturevalue("make_cyrus_pair" if request.param == "cyrus" else "make_pair")
    return factory


async def started(factory: PairFactory) -> Pair:
    pair = factory(users=2)
    await pair.start()
    await pair.a.wait_status(lambda s: s["readyAsMaster"], what="ready as master")
    return pair


def manage_sieve(member: Member, user: str, password: str) -> dict[str, bool]:
    """Refused with a wrong password; then upload, list, activate; returns the final listing."""
    wrong = mailtools.ManageSieve(member.ports["managesieve"])
    try:
        assert wrong.login(user, "wrong-password")[0] == "NO"
    finally:
        wrong.logout()
    sieve = mailtools.ManageSieve(member.ports["managesieve"])
    try:
        status, line = sieve.login(user, password)
        assert status == "OK", line
        status, line = sieve.putscript("mailshard", SCRIPT)
        assert status == "OK", line
        assert sieve.listscripts() == {"mailshard": False}
        status, line = sieve.setactive("mailshard")
        assert status == "OK", line
        return sieve.listscripts()
    finally:
        sieve.logout()


def message(user: str, subject: str) -> bytes:
    return (
        f"From: sender@example.test\r\nTo: {user}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '-')}.{user}@mailshard.test>\r\n\r\nBody of {subject}.\r\n"
    ).encode()


def messages_in(member: Member, user: str, password: str, mailbox: str) -> int:
    client = mailtools.imap_login(member.ports["imap"], user, password)
    try:
        typ, data = client.status(mailbox, "(MESSAGES)")
        assert typ == "OK", data
        raw = data[0]
        assert isinstance(raw, bytes), data
        return int(raw.rsplit(b"MESSAGES ", 1)[1].rstrip(b")"))
    finally:
        client.logout()


def pop3_inbox(member: Member, user: str, password: str) -> list[bytes]:
    """Every message of INBOX over POP3 (RETR), after a refused wrong password."""
    pop = poplib.POP3("127.0.0.1", member.ports["pop3"], timeout=30)
    try:
        pop.user(user)
        with pytest.raises(poplib.error_proto):
            pop.pass_("wrong-password")
    finally:
        pop.close()
    pop = poplib.POP3("127.0.0.1", member.ports["pop3"], timeout=30)
    try:
        pop.user(user)
        pop.pass_(password)
        count, _ = pop.stat()
        return [b"\r\n".join(pop.retr(number)[1]) for number in range(1, count + 1)]
    finally:
        pop.quit()


async def test_a_sieve_script_uploaded_over_managesieve_files_the_next_delivery(backend_pair: PairFactory) -> None:
    pair = await started(backend_pair)
    master = pair.a
    user = pair.users[0]
    password = pair.passwords[user]

    assert await asyncio.to_thread(manage_sieve, master, user, password) == {"mailshard": True}
    client = mailtools.imap_login(master.ports["imap"], user, password)
    try:
        typ, data = client.create(FOLDER)
        assert typ == "OK", data
    finally:
        client.logout()

    delivered = [(user, message(user, "plain one")), (user, message(user, "please file me"))]
    assert await asyncio.to_thread(mailtools.deliver, master.ports["lmtp"], delivered, connections=1) == 2
    assert await asyncio.to_thread(messages_in, master, user, password, FOLDER) == 1
    assert await asyncio.to_thread(messages_in, master, user, password, "INBOX") == 1


async def test_pop3_retrieves_what_lmtp_delivered(backend_pair: PairFactory) -> None:
    pair = await started(backend_pair)
    master = pair.a
    if master.config["backend"] == "cyrus":
        require_cyrus_pop3d()
    user = pair.users[0]
    password = pair.passwords[user]
    delivered = [(user, message(user, f"pop number {n}")) for n in range(3)]
    assert await asyncio.to_thread(mailtools.deliver, master.ports["lmtp"], delivered, connections=1) == 3

    retrieved = await asyncio.to_thread(pop3_inbox, master, user, password)
    assert len(retrieved) == 3
    for n, text in enumerate(retrieved):
        assert f"Subject: pop number {n}".encode() in text
        assert f"Body of pop number {n}.".encode() in text


async def test_the_replica_serves_neither_pop3_nor_managesieve(backend_pair: PairFactory) -> None:
    pair = await started(backend_pair)
    for port in ("pop3", "managesieve"):
        with pytest.raises(ConnectionRefusedError):
            poplib.POP3("127.0.0.1", pair.b.ports[port], timeout=5)
    with pytest.raises((OSError, imaplib.IMAP4.error)):
        mailtools.imap_login(pair.b.ports["imap"], pair.users[0], pair.passwords[pair.users[0]])
