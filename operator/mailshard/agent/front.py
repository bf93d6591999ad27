"""The master's LMTP front: relays each delivery to the local daemon and journals it on the replica before the 250.

Why this module exists: the one promise replication cannot keep alone is that
a message acknowledged to the sender survives the master's death (replication
is asynchronous; see ``journal.py``). So the member's public LMTP port is not
the daemon's but this front's, while the member is master. Per transaction:

1. MAIL and RCPT are passed to the daemon (its LMTP on a local socket) and its
   answers passed back, so unknown users are refused exactly as before (a
   daemon that would accept anyone, Cyrus with mailbox autocreation, gets a
   ``recipient_known`` check that refuses them here first);
2. at DATA the whole message is read, stamped ``X-Mailshard-Journal: <id>``
   and handed to the daemon, which answers once per recipient;
3. the message and the recipients the daemon accepted are written to the
   replica's journal (``journal`` callback: an HTTP call to the peer agent,
   which fsyncs before it answers);
4. only then do the daemon's per-recipient answers go back to the sender.

If the journal write fails (the replica is down or fenced) the sender still
gets its 250: the message is on the master's disk, and with the replica gone
there is nothing to fail over to, so refusing mail would buy no safety. Such
deliveries are counted (``unjournaled``) and reported, never hidden.

A full volume is the one case where the front refuses mail itself: at MAIL,
at each RCPT, and once the message's size is known, the agent's ``space``
check (see ``volume.py``) may answer that the store would fall below its
reserve, and the sender gets ``452 4.3.1`` (try again later) instead of a
message the store might not be able to keep.

The cost is one HTTP round trip and one fsync on the replica per message;
``docs/benchmarks.md`` has the measured figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from mailshard.agent.journal import MAX_MESSAGE_BYTES, JournalEntry
from mailshard.agent.lmtp import (
    LmtpClient,
    LmtpError,
    Reply,
    address_of,
    front_capabilities,
    reply,
    stamp_line,
    unstuff,
)

log = logging.getLogger("mailshard.agent.front")

JournalWriter = Callable[[JournalEntry, bytes], Awaitable[str | None]]
"""Writes one entry to the replica's journal; returns None when stored, else why it was not."""
SpaceCheck = Callable[[int, int], str | None]
"""Why the store cannot take this many more bytes in this many more files now, or None when it can."""
MAIL_SYSTEM_FULL = reply(452, "4.3.1 Mail system full, try again later")

READ_LIMIT = 1024 * 1024
"""Longest line a client may send (messages' lines are at most 998 bytes by RFC 5322, but some exceed it)."""
IDLE_TIMEOUT = 300.0


@dataclass
class FrontCounters:
    deliveries: int = 0
    """Transactions with at least one recipient accepted."""
    journaled: int = 0
    unjournaled: int = 0
    last_journal_error: str | None = None


class _ClosedError(Exception):
    """The client went away or broke the protocol; end the session quietly."""


class JournalingFront:
    def __init__(
        self,
        daemon: Path | tuple[str, int],
        hostname: str,
        journal: JournalWriter,
        *,
        recipient_known: Callable[[str], bool] | None = None,
        space: SpaceCheck | None = None,
    ) -> None:
        self.daemon = daemon
        self.hostname = hostname
        self.journal = journal
        self.recipient_known = recipient_known
        self.space = space
        self.counters = FrontCounters()
        self._server: asyncio.Server | None = None
        self._sessions: set[asyncio.Task[None]] = set()

    @property
    def listening(self) -> bool:
        return self._server is not None

    async def start(self, host: str, port: int) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._session, host, port, limit=READ_LIMIT, reuse_address=True)
            log.info("LMTP front listening on %s:%d, relaying to %s", host, port, self.daemon)

    async def stop(self) -> None:
        """Close the port at once and end every session (a fence must cut deliveries off immediately)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task in list(self._sessions):
            task.cancel()
        for task in list(self._sessions):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 5)
        log.info("LMTP front closed")

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._sessions.add(task)
        session = _Session(self, reader, writer)
        try:
            await session.run()
        except (_ClosedError, ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass
        except LmtpError as exc:
            log.error("LMTP session ended: %s", exc)
        finally:
            self._sessions.discard(task)
            await session.close()


class _Session:
    def __init__(self, front: JournalingFront, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.front, self.reader, self.writer = front, reader, writer
        self.daemon: LmtpClient | None = None
        self.greeted = False
        self.sender: str | None = None
        self.recipients: list[str] = []

    async def close(self) -> None:
        if self.daemon is not None:
            await self.daemon.close()
        self.writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.wait_closed(), 1.0)

    async def send(self, *replies: Reply) -> None:
        self.writer.write(b"".join(answer.render() for answer in replies))
        await asyncio.wait_for(self.writer.drain(), IDLE_TIMEOUT)

    async def readline(self) -> bytes:
        try:
            line = await asyncio.wait_for(self.reader.readline(), IDLE_TIMEOUT)
        except ValueError:  # longer than READ_LIMIT
            await self.send(reply(500, "5.5.2 Line too long"))
            raise _ClosedError from None
        if not line:
            raise _ClosedError
        return line

    def reset(self) -> None:
        self.sender, self.recipients = None, []

    async def run(self) -> None:
        await self.send(reply(220, f"{self.front.hostname} Mailshard LMTP ready"))
        while True:
            line = await self.readline()
            text = line.decode("utf-8", "surrogateescape").rstrip("\r\n")
            verb = text.partition(" ")[0]
            verb = verb.upper()
            if verb == "LHLO":
                await self.lhlo()
            elif verb == "MAIL":
                await self.mail(text)
            elif verb == "RCPT":
                await self.rcpt(text)
            elif verb == "DATA":
                await self.data()
            elif verb == "RSET":
                if self.daemon is not None:
                    await self.relay("RSET")
                self.reset()
                await self.send(reply(250, "2.0.0 OK"))
            elif verb == "NOOP":
                await self.send(reply(250, "2.0.0 OK"))
            elif verb == "VRFY":
                await self.send(reply(252, "2.5.0 Cannot verify, but will try delivery"))
            elif verb == "QUIT":
                await self.send(reply(221, "2.0.0 Bye"))
                return
            else:
                await self.send(reply(500, "5.5.2 Unknown command"))

    async def lhlo(self) -> None:
        self.reset()
        if self.daemon is None:
            await self.connect_daemon()
        else:
            await self.relay("RSET")
        assert self.daemon is not None
        assert self.daemon.capabilities is not None
        self.greeted = True
        await self.send(front_capabilities(self.front.hostname, self.daemon.capabilities))

    async def connect_daemon(self) -> None:
        try:
            self.daemon = await LmtpClient.connect(self.front.daemon, self.front.hostname)
        except LmtpError as exc:
            log.error("%s", exc)
            await self.send(reply(421, "4.3.0 Mail store unavailable, try again later"))
            raise _ClosedError from None

    async def drop_daemon(self) -> None:
        """End the daemon's session mid-transaction (it waits for data it will not get); the next MAIL opens one."""
        if self.daemon is not None:
            await self.daemon.close()
            self.daemon = None

    def out_of_space(self, incoming_bytes: int, files: int) -> bool:
        check = self.front.space
        return check is not None and check(incoming_bytes, files) is not None

    async def relay(self, command: str) -> Reply:
        assert self.daemon is not None
        try:
            return await self.daemon.command(command)
        except LmtpError as exc:
            log.error("%s", exc)
            await self.send(reply(421, "4.3.0 Mail store unavailable, try again later"))
            raise _ClosedError from None

    async def mail(self, text: str) -> None:
        if not self.greeted:
            await self.send(reply(503, "5.5.1 Say LHLO first"))
            return
        if self.sender is not None:
            await self.send(reply(503, "5.5.1 MAIL already given"))
            return
        if self.out_of_space(0, 1):
            await self.send(MAIL_SYSTEM_FULL)
            return
        if self.daemon is None:
            await self.connect_daemon()
        answer = await self.relay(text)
        if answer.ok:
            self.sender = address_of(text.split(":", 1)[1] if ":" in text else "")
        await self.send(answer)

    async def rcpt(self, text: str) -> None:
        if self.sender is None:
            await self.send(reply(503, "5.5.1 MAIL first"))
            return
        recipient = address_of(text.split(":", 1)[1] if ":" in text else "")
        known = self.front.recipient_known
        if known is not None and not known(recipient):
            await self.send(reply(550, f"5.1.1 <{recipient}>: no such user here"))
            return
        if self.out_of_space(0, 1):
            await self.send(MAIL_SYSTEM_FULL)
            return
        answer = await self.relay(text)
        if answer.ok:
            self.recipients.append(recipient)
        await self.send(answer)

    async def data(self) -> None:
        if not self.recipients or self.daemon is None:
            await self.send(reply(503, "5.5.1 No valid recipients"))
            return
        started = await self.relay("DATA")
        if started.code != 354:
            self.reset()
            await self.send(started)
            return
        await self.send(reply(354, "Start mail input; end with <CRLF>.<CRLF>"))
        lines: list[bytes] = []
        size = 0
        while True:
            line = await self.readline()
            if line in (b".\r\n", b".\n"):
                break
            size += len(line)
            if size <= MAX_MESSAGE_BYTES:
                lines.append(line)
        recipients, sender = self.recipients, self.sender or ""
        self.reset()
        if size > MAX_MESSAGE_BYTES:
            # The daemon waits for data we will not send it: drop that session rather than deliver half a message.
            await self.drop_daemon()
            too_big = reply(552, f"5.3.4 Message exceeds {MAX_MESSAGE_BYTES} bytes")
            await self.send(*([too_big] * len(recipients)))
            return
        if self.out_of_space(size * len(recipients), len(recipients)):  # one copy per recipient, at worst
            await self.drop_daemon()
            await self.send(*([MAIL_SYSTEM_FULL] * len(recipients)))
            return
        journal_id = uuid.uuid4().hex
        stamp = stamp_line(journal_id)
        try:
            answers = await self.daemon.data(stamp + b"".join(lines) + b".\r\n", len(recipients))
        except LmtpError as exc:
            log.error("delivery failed mid-transaction: %s", exc)
            self.daemon = None
            await self.send(*([reply(451, "4.3.0 Mail store failed, try again later")] * len(recipients)))
            raise _ClosedError from None
        accepted = tuple(rcpt for rcpt, answer in zip(recipients, answers, strict=True) if answer.ok)
        if accepted:
            await self._journal(JournalEntry(journal_id, sender, accepted, time.time()), stamp + unstuff(lines))
        await self.send(*answers)

    async def _journal(self, entry: JournalEntry, message: bytes) -> None:
        counters = self.front.counters
        counters.deliveries += 1
        problem = await self.front.journal(entry, message)
        if problem is None:
            counters.journaled += 1
            return
        counters.unjournaled += 1
        if counters.last_journal_error != problem:
            log.error("delivery %s is not journaled on the replica: %s", entry.id, problem)
        counters.last_journal_error = problem
