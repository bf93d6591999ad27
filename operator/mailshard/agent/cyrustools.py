"""Runs Cyrus's local tools against the member's own Cyrus and returns parsed results.

Why this module exists: the Cyrus counterpart of ``doveadm.py``. A Cyrus
replica serves no IMAP (see ``mailshard.backends.cyrus``), so the agent reads
mailbox state with ``mbexamine``, an offline tool that opens each mailbox's
index under the mailbox lock, exactly as the daemon does, and needs no network
and no login. It also builds the SASL user database (``saslpasswd2``) and
checks that the peer's replication port answers. The parser is pure and sits
beside the runner so that both stay small.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import imaplib
import json
import os
import re
import secrets
import string
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from mailshard.agent.identity import RunAs
from mailshard.agent.lmtp import JOURNAL_HEADER
from mailshard.agent.observe import MailboxState, ParseError

_EXAMINING = re.compile(r"^Examining (\S+)\.\.\.")
_MESSAGES = re.compile(r"Number of Messages: (\d+)")
_UIDS = re.compile(r"UIDValidity: (\d+)\s+Last UID: (\d+)")
_MODSEQ = re.compile(r"Highest Mod Sequence: (\d+)")


IMAP_TIMEOUT = 30.0
"""Seconds for any one step of the admin's IMAP session."""


class CyrusToolError(RuntimeError):
    pass


@dataclass(frozen=True)
class CyrusInstall:
    """Where Cyrus and saslpasswd2 live: ``/`` for a system install, or an extracted prefix."""

    root: Path = Path("/")

    @property
    def libexec(self) -> Path:
        return self.root / "usr/lib/cyrus/bin"

    @property
    def pop3d(self) -> Path:
        return self.libexec / "pop3d"

    @property
    def has_pop3d(self) -> bool:
        """POP3 is a package of its own (``cyrus-pop3d``); the images have it, a test prefix may not."""
        return self.pop3d.exists()

    @property
    def saslpasswd2(self) -> Path:
        return self.root / "usr/sbin/saslpasswd2"

    def env(self) -> dict[str, str]:
        """The environment Cyrus processes run with (a prefix needs its libraries on the path)."""
        env = dict(os.environ)
        if self.root != Path("/"):
            extra = f"{self.root}/usr/lib/x86_64-linux-gnu:{self.root}/lib/x86_64-linux-gnu"
            env["LD_LIBRARY_PATH"] = extra + (":" + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else "")
        return env


def _split_name(external: str) -> tuple[str, str]:
    """``user/alice@example.test`` -> (``alice@example.test``, ``INBOX``); ``user/alice/Sent@d`` -> (…, ``Sent``)."""
    name, _, domain = external.rpartition("@") if "@" in external else (external, "", "")
    parts = name.split("/")
    if len(parts) < 2 or parts[0] != "user":
        return (external, "")  # not a personal mailbox (shared folders are not used)
    user = parts[1] + (f"@{domain}" if domain else "")
    return user, "/".join(parts[2:]) or "INBOX"


def parse_mbexamine(text: str) -> tuple[MailboxState, ...]:
    """Parse ``mbexamine '*'``: one block per mailbox, its header, then one record per message.

    UIDNEXT is ``Last UID + 1``; unseen counts the records without ``FLAG_SEEN`` (the owner's \\Seen lives in
    the index in Cyrus) among those not expunged.
    """
    states: list[MailboxState] = []
    current: dict[str, int | str] | None = None
    seen = 0

    def finish() -> None:
        if current is None:
            return
        try:
            user, mailbox = _split_name(str(current["name"]))
            messages = int(current["messages"])
            states.append(
                MailboxState(
                    user=user,
                    mailbox=mailbox,
                    uidvalidity=int(current["uidvalidity"]),
                    uidnext=int(current["lastuid"]) + 1,
                    messages=messages,
                    highestmodseq=int(current.get("modseq", 0)),
                    unseen=max(messages - seen, 0),
                )
            )
        except KeyError as exc:
            raise ParseError(f"mbexamine: no {exc} for {current.get('name')}") from exc

    for line in text.splitlines():
        if match := _EXAMINING.match(line):
            finish()
            current, seen = {"name": match.group(1)}, 0
        elif current is None:
            continue
        elif match := _MESSAGES.search(line):
            current["messages"] = int(match.group(1))
        elif match := _UIDS.search(line):
            current["uidvalidity"], current["lastuid"] = int(match.group(1)), int(match.group(2))
        elif match := _MODSEQ.search(line):
            current["modseq"] = int(match.group(1))
        elif "SYSTEMFLAGS:" in line:
            internal, _, system = line.partition("SYSTEMFLAGS:")
            if "FLAG_SEEN" in system and "EXPUNGED" not in internal:
                seen += 1
    finish()
    return tuple(sorted((s for s in states if s.mailbox), key=lambda state: state.key))


class CyrusTools:
    def __init__(self, install: CyrusInstall, imapd_conf: Path, run_as: RunAs, *, timeout: float = 15.0) -> None:
        self.install = install
        self.imapd_conf = imapd_conf
        self.run_as = run_as
        self.timeout = timeout

    async def _run(self, argv: list[str], stdin: bytes | None = None) -> str:
        code, out, err = await self._exec(argv, stdin)
        if code != 0:
            message = err.strip().splitlines()
            raise CyrusToolError(f"{Path(argv[0]).name} exited {code}: {message[-1] if message else 'no output'}")
        return out

    async def _exec(self, argv: list[str], stdin: bytes | None = None) -> tuple[int, str, str]:
        """Run one tool; its exit code, standard output and standard error (only a timeout or no binary raises)."""
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=self.install.env(),
                **self.run_as.spawn_kwargs(),  # type: ignore[arg-type]
            )
        except FileNotFoundError:
            raise CyrusToolError(f"Cyrus tool {argv[0]!r} not found") from None
        name = Path(argv[0]).name
        try:
            out, err = await asyncio.wait_for(proc.communicate(stdin), self.timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise CyrusToolError(f"{name} timed out after {self.timeout:.0f}s") from None
        assert proc.returncode is not None
        return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")

    async def mailbox_status(self) -> tuple[MailboxState, ...]:
        """Every personal mailbox of every user."""
        argv = [str(self.install.libexec / "mbexamine"), "-C", str(self.imapd_conf), "*"]
        return parse_mbexamine(await self._run(argv))

    async def raise_uidnext(self, user: str, mailbox: str, floor: int) -> None:
        """Make the next UID of one existing mailbox at least ``floor``, keeping UIDVALIDITY and every message.

        Cyrus 3.6 has no command for it (neither IMAP nor a tool sets a mailbox's last UID), but
        ``reconstruct`` adopts a message file it finds in the mailbox's directory under a UID above the
        last one, and raises the last UID to it. So a placeholder message is put there as UID
        ``floor - 1``, ``reconstruct`` adopts it (UIDNEXT is now ``floor``), the file is removed and a
        second ``reconstruct`` drops its record, which leaves UIDNEXT where it is. Both steps replicate
        like any change. The caller makes sure ``floor`` is above the current UIDNEXT; the mailbox is
        fenced from deliveries during a failover, and a message that took the placeholder's name anyway
        is never removed.
        """
        name = mailbox_name(user, mailbox)
        mbpath = await self._run([str(self.install.libexec / "mbpath"), "-C", str(self.imapd_conf), name])
        directory = Path(mbpath.strip().splitlines()[-1])
        placeholder = directory / f"{floor - 1}."
        content = (
            f"From: mailshard@localhost\r\nSubject: UIDNEXT {floor}\r\nX-Mailshard-Uidnext: {floor}\r\n\r\n"
            "A placeholder that raised this mailbox's next UID after a failover; it is removed at once.\r\n"
        ).encode()
        reconstruct = [str(self.install.libexec / "reconstruct"), "-C", str(self.imapd_conf), name]
        try:
            with placeholder.open("xb") as handle:  # never over an existing message
                handle.write(content)
        except FileExistsError:
            raise CyrusToolError(f"{name}: UID {floor - 1} exists already; UIDNEXT is past {floor - 1}") from None
        try:
            self.run_as.own(placeholder)
            await self._run(reconstruct)
        finally:
            if placeholder.read_bytes() == content:
                placeholder.unlink()
        await self._run(reconstruct)

    async def create_mailbox(self, admin: AdminLogin, user: str, mailbox: str, uidvalidity: int, uidnext: int) -> None:
        """Create a user's mailbox under a given UIDVALIDITY, its next UID at least ``uidnext``.

        What a failover needs for a mailbox the old master had and the replica never got: created afresh it
        would get a new UIDVALIDITY, and every client that had seen it would download it again. Cyrus 3.6 has
        no command that sets a mailbox's UIDVALIDITY, but a mailbox created under a name that has a tombstone
        in mailboxes.db (what deleting a mailbox leaves behind, so that the next one of that name is told
        apart) gets the tombstone's UIDVALIDITY plus one. So a tombstone with ``uidvalidity - 1`` is written
        (``ctl_mboxlist -u``), the admin creates the mailbox over IMAP (as ``create_inboxes`` does) and
        ``raise_uidnext`` sets its next UID. Measured on 3.6.1: the mailbox gets exactly that UIDVALIDITY and
        replication gives the replica the same. Never over an existing mailbox: the name must be unknown to
        ``mbpath`` (a tombstone is unknown to it too) just before the tombstone is written.
        """
        name = mailbox_name(user, mailbox)
        argv = [str(self.install.libexec / "mbpath"), "-C", str(self.imapd_conf), name]
        code, _, err = await self._exec(argv)
        if code == 0:
            raise CyrusToolError(f"{name} exists already")
        if "Invalid mailbox name" not in err:
            raise CyrusToolError(f"cannot tell whether {name} exists: mbpath exited {code}: {err.strip()}")
        tombstone = {
            "name": internal_name(user, mailbox),
            "mtime": str(int(time.time())),
            "uidvalidity": str(uidvalidity - 1),
            "createdmodseq": "1",
            "foldermodseq": "1",
            "mbtype": "ed",  # an email mailbox, deleted
            "partition": "default",
            "acl": {},
            "uniqueid": "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(24)),
            "name_history": [],
        }
        undump = [str(self.install.libexec / "ctl_mboxlist"), "-C", str(self.imapd_conf), "-u"]
        await self._run(undump, stdin=json.dumps({tombstone["name"]: tombstone}).encode())
        try:
            created = await asyncio.to_thread(_create_mailboxes, admin, [name])
        except (OSError, imaplib.IMAP4.error) as exc:
            raise CyrusToolError(f"cannot create {name} over IMAP {admin.host}:{admin.port}: {exc}") from exc
        if not created:
            raise CyrusToolError(f"{name} exists already")
        if uidnext > 1:
            await self.raise_uidnext(user, mailbox, uidnext)

    async def push_all_users(self, *, within: float) -> None:
        """One ``sync_client -A``: every user, whole, to the replica (a master's side of a Cyrus re-seed)."""
        argv = [str(self.install.libexec / "sync_client"), "-C", str(self.imapd_conf), "-A"]
        timeout, self.timeout = self.timeout, within
        try:
            await self._run(argv)
        finally:
            self.timeout = timeout

    async def write_sasldb(self, path: Path, users: Iterable[tuple[str, str]], admins: Mapping[str, str]) -> None:
        """Build a fresh sasldb at ``path`` (atomically) from (user, password) pairs plus the admins."""
        tmp = path.with_name(f".{path.name}.new")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        self.run_as.own(path.parent)
        for user, password in [*users, *admins.items()]:
            argv = [str(self.install.saslpasswd2), "-p", "-c", "-f", str(tmp), user]
            await self._run(argv, stdin=password.encode())
        tmp.chmod(0o600)
        tmp.replace(path)


def personal_mailbox(user: str) -> str:
    """The admin's name for a user's INBOX (``virtdomains: userid``, ``unixhierarchysep: yes``)."""
    return mailbox_name(user, "INBOX")


def mailbox_name(user: str, mailbox: str) -> str:
    """The admin's name of a user's mailbox, as ``mbexamine`` lists it: ``user/alice/Sent@example.test``."""
    local, at, domain = user.partition("@")
    folder = "" if mailbox == "INBOX" else f"/{mailbox}"
    return f"user/{local}{folder}{at}{domain}"


@dataclass(frozen=True)
class AdminLogin:
    """Where the member's IMAP listens, and the admin (the replication login) who may act as any user."""

    host: str
    port: int
    name: str
    password: str


def internal_name(user: str, mailbox: str) -> str:
    """Cyrus's own name of a user's mailbox, as mailboxes.db keys it: ``example.test!user.alice.Sent``.

    ``virtdomains: userid`` puts the domain in front; with ``unixhierarchysep: yes`` clients see ``/`` as the
    separator, while inside it is ``.`` and a ``.`` within a name is ``^``.
    """
    local, _, domain = user.partition("@")
    parts = ["user", local, *([] if mailbox == "INBOX" else mailbox.split("/"))]
    name = ".".join(part.replace(".", "^") for part in parts)
    return f"{domain}!{name}" if domain else name


def _quoted(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _create_mailboxes(admin: AdminLogin, names: list[str]) -> list[str]:
    """Create each mailbox (admin names) in turn in one admin session; the names created, not those that exist."""
    created = []
    client = imaplib.IMAP4(admin.host, admin.port, timeout=IMAP_TIMEOUT)
    try:
        client.login(admin.name, admin.password)
        for name in names:
            typ, data = client.create(_quoted(name))
            if typ == "OK":
                created.append(name)
            elif not any(isinstance(d, bytes) and b"already exists" in d.lower() for d in data):
                raise CyrusToolError(f"cannot create {name}: {data!r}")
    finally:
        with contextlib.suppress(OSError, imaplib.IMAP4.error):
            client.logout()
    return created


async def create_inboxes(host: str, port: int, admin: str, password: str, users: list[str]) -> int:
    """Create every user's INBOX that is missing, one after the other in one admin session; returns how many.

    Why not leave it to ``autocreate_post``: measured on Cyrus 3.6.1, mailboxes created at the same moment by
    different Cyrus processes (four LMTP sessions delivering to four new users) get the *same* mailbox id, and
    with it the same directory on disk, so those users see each other's mail. One session creates them in turn.
    """
    try:
        login = AdminLogin(host, port, admin, password)
        return len(await asyncio.to_thread(_create_mailboxes, login, [personal_mailbox(user) for user in users]))
    except (OSError, imaplib.IMAP4.error) as exc:
        raise CyrusToolError(f"cannot create INBOXes over IMAP {host}:{port}: {exc}") from exc


_LIST_LINE = re.compile(rb'^\((?P<flags>[^)]*)\) (?:"(?:[^"\\]|\\.)*"|NIL) (?P<name>.+)$')
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
FETCH_CHUNK = 500
"""UIDs per FETCH of the journal header."""


def parse_list(lines: Iterable[bytes | tuple[bytes, bytes] | None]) -> list[str]:
    """The selectable mailbox names of an IMAP LIST answer, quoted as a command needs them."""
    names = []
    for item in lines:
        if isinstance(item, tuple):  # a name sent as a literal
            flags, name = item[0], b'"' + item[1].replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
            if b"\\noselect" not in flags.lower():
                names.append(name.decode())
            continue
        match = _LIST_LINE.match(item or b"")
        if match and b"\\noselect" not in match.group("flags").lower():
            names.append(match.group("name").decode())
    return names


def imap_date(day: datetime.date) -> str:
    """``02-Dec-2026``: IMAP's date, in English whatever the locale."""
    return f"{day.day:02d}-{_MONTHS[day.month - 1]}-{day.year}"


def parse_journal_header(fetched: Iterable[bytes | tuple[bytes, bytes] | None]) -> set[str]:
    """The journal ids in a ``FETCH (BODY.PEEK[HEADER.FIELDS (X-Mailshard-Journal)])`` answer."""
    found: set[str] = set()
    pattern = re.compile(rb"^" + re.escape(JOURNAL_HEADER.encode()) + rb":[ \t]*(\S+)", re.IGNORECASE | re.MULTILINE)
    for item in fetched:
        if isinstance(item, tuple):
            found.update(value.decode() for value in pattern.findall(item[1]))
    return found


def _journal_ids(admin: AdminLogin, user: str, since: datetime.date) -> set[str]:
    client = imaplib.IMAP4(admin.host, admin.port, timeout=IMAP_TIMEOUT)
    try:
        # An admin may act as any user (SASL authorization id): the user's own view, no ACL to change.
        client.authenticate("PLAIN", lambda _: f"{user}\0{admin.name}\0{admin.password}".encode())
        typ, listing = client.list()
        if typ != "OK":
            raise CyrusToolError(f"LIST for {user} failed: {listing!r}")
        found: set[str] = set()
        for mailbox in parse_list(listing):
            typ, data = client.select(mailbox, readonly=True)
            if typ != "OK":
                raise CyrusToolError(f"EXAMINE {mailbox} of {user} failed: {data!r}")
            typ, data = client.uid("SEARCH", "SAVEDSINCE", imap_date(since))
            if typ != "OK":
                raise CyrusToolError(f"SEARCH in {mailbox} of {user} failed: {data!r}")
            uids = (data[0] or b"").split()
            for start in range(0, len(uids), FETCH_CHUNK):
                chunk = b",".join(uids[start : start + FETCH_CHUNK]).decode()
                typ, fetched = client.uid("FETCH", chunk, f"(BODY.PEEK[HEADER.FIELDS ({JOURNAL_HEADER})])")
                if typ != "OK":
                    raise CyrusToolError(f"FETCH in {mailbox} of {user} failed: {fetched!r}")
                found |= parse_journal_header(fetched)
        return found
    finally:
        with contextlib.suppress(OSError, imaplib.IMAP4.error):
            client.logout()


async def journal_ids(admin: AdminLogin, user: str, since: datetime.date) -> set[str]:
    """The journal ids (``X-Mailshard-Journal``) of a user's messages saved since ``since``, in every mailbox.

    Read over IMAP as the user (the admin authorizing as them): the counterpart of ``doveadm fetch
    ... SAVEDSINCE``. IMAP's SAVEDSINCE takes a day, so the caller passes a day that is early enough;
    more messages looked at only makes the answer surer.
    """
    try:
        return await asyncio.to_thread(_journal_ids, admin, user, since)
    except (OSError, imaplib.IMAP4.error) as exc:
        raise CyrusToolError(f"cannot read {user}'s journal ids over IMAP {admin.host}:{admin.port}: {exc}") from exc
