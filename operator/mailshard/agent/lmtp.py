"""LMTP as the delivery journal speaks it: reply parsing, dot-stuffing, stamping, and a small async client.

Why this module exists: the journaling front (``front.py``) sits between the
proxy and the mail daemon's own LMTP server, and the journal replay
(``service.py``) delivers into that same server. Both need to read SMTP-style
replies (multi-line, one per accepted recipient after DATA) and to move a
message body between its on-the-wire form (dot-stuffed, ending ``.``) and its
stored form. The pure parts come first and are unit-tested; the client is the
only I/O here.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

JOURNAL_HEADER = "X-Mailshard-Journal"
"""Stamped on every message the front accepts, so the replay can tell whether a store already holds it."""

MAX_LINE = 4096
"""Longest command or reply line accepted (RFC 5321 allows 512 for commands; extensions make them longer)."""

_JOURNAL_ID = re.compile(r"^[0-9a-f]{32}$")


class LmtpError(RuntimeError):
    """The other side broke the protocol or went away."""


@dataclass(frozen=True)
class Reply:
    code: int
    lines: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 300

    @property
    def temporary(self) -> bool:
        return 400 <= self.code < 500

    @property
    def text(self) -> str:
        return " ".join(self.lines)

    def render(self) -> bytes:
        """The reply on the wire, continuation lines and all."""
        lines = self.lines or ("",)
        out = [f"{self.code}-{line}" for line in lines[:-1]] + [f"{self.code} {lines[-1]}"]
        return ("\r\n".join(out) + "\r\n").encode()


def reply(code: int, *lines: str) -> Reply:
    return Reply(code, tuple(lines))


def parse_reply_lines(raw: Sequence[bytes]) -> Reply:
    """One reply from its lines (``250-first``, ..., ``250 last``); LmtpError when malformed."""
    if not raw:
        raise LmtpError("empty reply")
    code: int | None = None
    texts = []
    for index, line in enumerate(raw):
        text = line.decode("utf-8", "replace").rstrip("\r\n")
        if len(text) < 3 or not text[:3].isdigit():
            raise LmtpError(f"malformed reply line {text!r}")
        this = int(text[:3])
        if code is not None and this != code:
            raise LmtpError(f"reply code changed from {code} to {this} within one reply")
        code = this
        last = index == len(raw) - 1
        separator = text[3:4]
        if separator not in ("-", " ", ""):
            raise LmtpError(f"malformed reply line {text!r}")
        if (separator == "-") == last:
            raise LmtpError("a reply's last line must not end with '-', and only its last line may")
        texts.append(text[4:])
    assert code is not None
    return Reply(code, tuple(texts))


def is_continued(line: bytes) -> bool:
    return line[3:4] == b"-"


def unstuff(lines: Iterable[bytes]) -> bytes:
    """The message from its DATA lines (each with its CRLF, without the final ``.``): drop one leading dot."""
    return b"".join(line[1:] if line.startswith(b".") else line for line in lines)


def stuff(message: bytes) -> bytes:
    """The DATA payload of a stored message, ending with ``.``; a missing final CRLF is added."""
    if message and not message.endswith(b"\r\n"):
        message += b"\r\n"
    lines = message.splitlines(keepends=True)
    return b"".join(b"." + line if line.startswith(b".") else line for line in lines) + b".\r\n"


def stamp_line(journal_id: str) -> bytes:
    return f"{JOURNAL_HEADER}: {journal_id}\r\n".encode()


def valid_journal_id(value: str) -> bool:
    return bool(_JOURNAL_ID.match(value))


def address_of(argument: str) -> str:
    """``<user@example>`` (from ``RCPT TO:<...> params``) -> ``user@example``; best effort, never raises."""
    start, end = argument.find("<"), argument.find(">")
    if start != -1 and end > start:
        return argument[start + 1 : end]
    return argument.split(" ", 1)[0].strip()


KEPT_CAPABILITIES = frozenset({"8BITMIME", "ENHANCEDSTATUSCODES", "PIPELINING", "SMTPUTF8", "SIZE"})
"""What the front passes on from the daemon's LHLO answer: it does not implement CHUNKING, XCLIENT, STARTTLS."""


def front_capabilities(hostname: str, backend: Reply) -> Reply:
    """Our LHLO answer: our name, then those of the daemon's extensions the front supports too."""
    kept = [line for line in backend.lines[1:] if line.split(" ", 1)[0].upper() in KEPT_CAPABILITIES]
    return Reply(250, (hostname, *kept))


class LmtpClient:
    """One LMTP session with a daemon on a unix socket or TCP port."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float) -> None:
        self.reader, self.writer, self.timeout = reader, writer, timeout
        self.greeting: Reply | None = None
        self.capabilities: Reply | None = None

    @classmethod
    async def connect(cls, target: Path | tuple[str, int], hostname: str, *, within: float = 60.0) -> LmtpClient:
        try:
            if isinstance(target, Path):
                reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(target)), within)
            else:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(*target), within)
        except (OSError, TimeoutError) as exc:
            raise LmtpError(f"cannot connect to the mail daemon's LMTP at {target}: {exc}") from exc
        client = cls(reader, writer, within)
        try:
            client.greeting = await client.read_reply()
            if not client.greeting.ok:
                raise LmtpError(f"the mail daemon's LMTP greeted with {client.greeting.code} {client.greeting.text}")
            client.capabilities = await client.command(f"LHLO {hostname}")
            if not client.capabilities.ok:
                raise LmtpError(f"LHLO refused: {client.capabilities.code} {client.capabilities.text}")
        except LmtpError:
            await client.close()
            raise
        return client

    async def read_reply(self) -> Reply:
        lines: list[bytes] = []
        while True:
            try:
                line = await asyncio.wait_for(self.reader.readline(), self.timeout)
            except (OSError, TimeoutError, ValueError) as exc:
                raise LmtpError(f"reading the mail daemon's reply failed: {exc or type(exc).__name__}") from exc
            if not line:
                raise LmtpError("the mail daemon closed the LMTP connection")
            lines.append(line)
            if not is_continued(line):
                return parse_reply_lines(lines)

    async def send(self, data: bytes) -> None:
        try:
            self.writer.write(data)
            await asyncio.wait_for(self.writer.drain(), self.timeout)
        except (OSError, TimeoutError) as exc:
            raise LmtpError(f"writing to the mail daemon failed: {exc or type(exc).__name__}") from exc

    async def command(self, line: str) -> Reply:
        await self.send(line.encode("utf-8", "surrogateescape") + b"\r\n")
        return await self.read_reply()

    async def data(self, payload: bytes, recipients: int) -> list[Reply]:
        """Send a dot-stuffed payload (ending ``.\\r\\n``) after a 354; one reply per accepted recipient."""
        await self.send(payload)
        return [await self.read_reply() for _ in range(recipients)]

    async def deliver(self, sender: str, recipients: Sequence[str], message: bytes) -> dict[str, Reply]:
        """One whole transaction; the reply for each recipient (its RCPT refusal, or its DATA answer)."""
        answers: dict[str, Reply] = {}
        mail = await self.command(f"MAIL FROM:<{sender}>")
        if not mail.ok:
            return dict.fromkeys(recipients, mail)
        accepted = []
        for recipient in recipients:
            answer = await self.command(f"RCPT TO:<{recipient}>")
            if answer.ok:
                accepted.append(recipient)
            else:
                answers[recipient] = answer
        if not accepted:
            await self.command("RSET")
            return answers
        started = await self.command("DATA")
        if started.code != 354:
            answers.update(dict.fromkeys(accepted, started))
            return answers
        for recipient, answer in zip(accepted, await self.data(stuff(message), len(accepted)), strict=True):
            answers[recipient] = answer
        return answers

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.write(b"QUIT\r\n")
            await asyncio.wait_for(self.writer.drain(), 1.0)
        self.writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.wait_closed(), 1.0)
