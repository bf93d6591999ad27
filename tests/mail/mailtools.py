"""Small, honest mail clients for the mail tier: LMTP delivery, IMAP snapshots, ManageSieve.

Neither imapsync nor imaptest is packaged in Debian, so the tests speak the
protocols themselves with the standard library (``smtplib.LMTP``, ``imaplib``,
``poplib``) plus a small ManageSieve client of our own (the standard library
has none), run in threads so that many users are served at once. Nothing here
knows about Dovecot or Cyrus: it is what any mail client would see.
"""

from __future__ import annotations

import base64
import contextlib
import imaplib
import re
import smtplib
import socket
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

_FETCH = re.compile(rb"UID (\d+) FLAGS \(([^)]*)\)")
_FETCH_FLAGS_FIRST = re.compile(rb"FLAGS \(([^)]*)\) UID (\d+)")  # Cyrus answers in this order


@dataclass(frozen=True)
class MailboxSnapshot:
    """What IMAP shows of one user's INBOX: UIDVALIDITY and each UID's flags (without \\Recent)."""

    uidvalidity: int
    flags: dict[int, frozenset[str]]

    @property
    def uids(self) -> list[int]:
        return sorted(self.flags)


def make_message(user: str, index: int) -> bytes:
    return (
        f"From: sender@example.test\r\nTo: {user}\r\nSubject: message {index} for {user}\r\n"
        f"Message-ID: <{index}.{user}@mailshard.test>\r\n\r\nBody {index} of {user}.\r\n"
    ).encode()


def _deliver_batch(port: int, batch: Sequence[tuple[str, bytes]]) -> int:
    with smtplib.LMTP("127.0.0.1", port, timeout=30) as lmtp:
        for recipient, message in batch:
            refused = lmtp.sendmail("sender@example.test", [recipient], message)
            if refused:
                raise AssertionError(f"LMTP refused {recipient}: {refused}")
    return len(batch)


def deliver(port: int, messages: Sequence[tuple[str, bytes]], *, connections: int = 4) -> int:
    """Deliver (recipient, message) pairs over LMTP, spread over a few parallel sessions."""
    batches = [messages[i::connections] for i in range(connections)]
    with ThreadPoolExecutor(connections) as pool:
        return sum(pool.map(lambda batch: _deliver_batch(port, batch), [b for b in batches if b]))


def imap_login(port: int, user: str, password: str) -> imaplib.IMAP4:
    client = imaplib.IMAP4("127.0.0.1", port, timeout=30)
    client.login(user, password)
    return client


def snapshot_user(port: int, user: str, password: str) -> MailboxSnapshot:
    client = imap_login(port, user, password)
    try:
        typ, _ = client.select("INBOX", readonly=True)
        assert typ == "OK", f"EXAMINE INBOX failed for {user}"
        raw = client.untagged_responses["UIDVALIDITY"][0]
        assert isinstance(raw, bytes), raw
        uidvalidity = int(raw)
        typ, data = client.uid("FETCH", "1:*", "(FLAGS)")
        assert typ == "OK", f"FETCH failed for {user}: {data}"
        flags: dict[int, frozenset[str]] = {}
        for item in data:
            if not isinstance(item, bytes):
                continue
            if match := _FETCH.search(item):
                uid, names = int(match.group(1)), match.group(2)
            elif match := _FETCH_FLAGS_FIRST.search(item):
                uid, names = int(match.group(2)), match.group(1)
            else:
                continue
            flags[uid] = frozenset({flag.decode() for flag in names.split()} - {"\\Recent"})
        return MailboxSnapshot(uidvalidity, flags)
    finally:
        client.logout()


def snapshot(port: int, users: Iterable[str], password_of: dict[str, str]) -> dict[str, MailboxSnapshot]:
    """Every user's INBOX as IMAP shows it on the server at ``port``."""
    users = list(users)
    with ThreadPoolExecutor(8) as pool:
        results = pool.map(lambda user: snapshot_user(port, user, password_of[user]), users)
        return dict(zip(users, results, strict=True))


def store_flags(port: int, user: str, password: str, changes: Sequence[tuple[str, str]], *, expunge: bool) -> None:
    """Apply ``(uid set, "+FLAGS (...)")`` changes to a user's INBOX, then EXPUNGE if asked."""
    client = imap_login(port, user, password)
    try:
        typ, data = client.select("INBOX")
        assert typ == "OK", f"SELECT failed for {user}: {data}"
        for uids, change in changes:
            command, _, flags = change.partition(" ")
            typ, data = client.uid("STORE", uids, command, flags)
            assert typ == "OK", f"STORE {uids} {change} failed for {user}: {data}"
        if expunge:
            typ, data = client.expunge()
            assert typ == "OK", f"EXPUNGE failed for {user}: {data}"
    finally:
        client.logout()


def append(
    port: int, user: str, password: str, message: bytes, *, mailbox: str = "INBOX"
) -> tuple[str, list[bytes | None]]:
    """IMAP APPEND (to INBOX unless told); returns the server's answer instead of raising on NO."""
    client = imap_login(port, user, password)
    try:
        try:
            typ, data = client.append(mailbox, None, None, message)
        except imaplib.IMAP4.error as exc:
            return "NO", [str(exc).encode()]
        return typ, list(data)
    finally:
        client.logout()


def _counts_user(port: int, user: str, password: str) -> tuple[int, int]:
    client = imap_login(port, user, password)
    try:
        typ, data = client.status("INBOX", "(MESSAGES UIDNEXT)")
        assert typ == "OK", f"STATUS failed for {user}: {data}"
        text = data[0].decode() if isinstance(data[0], bytes) else str(data[0])
        numbers = dict(re.findall(r"(MESSAGES|UIDNEXT) (\d+)", text))
        return int(numbers["MESSAGES"]), int(numbers["UIDNEXT"])
    finally:
        client.logout()


def counts(port: int, users: Iterable[str], password_of: dict[str, str]) -> dict[str, tuple[int, int]]:
    """(MESSAGES, UIDNEXT) of every user's INBOX, by IMAP STATUS."""
    users = list(users)
    with ThreadPoolExecutor(8) as pool:
        results = pool.map(lambda user: _counts_user(port, user, password_of[user]), users)
        return dict(zip(users, results, strict=True))


_SIEVE_LITERAL = re.compile(rb"\{(\d+)\+?\}\r\n$")
_SIEVE_SCRIPT = re.compile(rb'^"((?:[^"\\]|\\.)*)"( ACTIVE)?', re.IGNORECASE)


def _sieve_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class ManageSieve:
    """A minimal ManageSieve client (RFC 5804): log in, upload, list and activate scripts.

    Nothing in the standard library speaks it. Each command returns the final
    status word (``OK``, ``NO`` or ``BYE``), the lines before it and the status
    line itself, so a test can assert a refusal as easily as a success.
    """

    def __init__(self, port: int, *, host: str = "127.0.0.1", timeout: float = 30) -> None:
        self.sock = socket.create_connection((host, port), timeout)
        self.stream = self.sock.makefile("rb")
        status, self.capabilities, greeting = self._response()
        assert status == "OK", greeting

    def _line(self) -> bytes:
        line = self.stream.readline()
        if not line:
            raise ConnectionError("the ManageSieve server closed the connection")
        while match := _SIEVE_LITERAL.search(line):
            literal = self.stream.read(int(match.group(1)))
            line = line[: match.start()] + literal + self.stream.readline()
        return line

    def _response(self) -> tuple[str, list[bytes], bytes]:
        lines: list[bytes] = []
        while True:
            line = self._line()
            word = line.split(b" ", 1)[0].strip().upper()
            if word in (b"OK", b"NO", b"BYE"):
                return word.decode(), lines, line.rstrip(b"\r\n")
            lines.append(line.rstrip(b"\r\n"))

    def command(self, text: str, literal: bytes | None = None) -> tuple[str, list[bytes], bytes]:
        payload = text.encode()
        if literal is not None:
            payload += b" {%d+}\r\n" % len(literal) + literal
        self.sock.sendall(payload + b"\r\n")
        return self._response()

    def login(self, user: str, password: str) -> tuple[str, bytes]:
        """SASL PLAIN with an initial response; returns (status, status line)."""
        token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        status, _, line = self.command(f"AUTHENTICATE {_sieve_quote('PLAIN')} {_sieve_quote(token)}")
        return status, line

    def putscript(self, name: str, script: bytes) -> tuple[str, bytes]:
        status, _, line = self.command(f"PUTSCRIPT {_sieve_quote(name)}", script)
        return status, line

    def setactive(self, name: str) -> tuple[str, bytes]:
        status, _, line = self.command(f"SETACTIVE {_sieve_quote(name)}")
        return status, line

    def listscripts(self) -> dict[str, bool]:
        """Script name → whether it is the active one."""
        status, lines, line = self.command("LISTSCRIPTS")
        assert status == "OK", line
        scripts: dict[str, bool] = {}
        for item in lines:
            if match := _SIEVE_SCRIPT.match(item):
                name = re.sub(rb"\\(.)", rb"\1", match.group(1)).decode()
                scripts[name] = match.group(2) is not None
        return scripts

    def logout(self) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            self.command("LOGOUT")
        self.stream.close()
        self.sock.close()
