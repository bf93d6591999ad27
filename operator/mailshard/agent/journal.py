"""The delivery journal: a copy of every accepted message, kept on the replica until it holds the message.

Why this module exists: replication is asynchronous (about 0.7-0.85 s behind
at 80 deliveries/s), so a master that dies takes the messages of that window
with it, and the sender already got its 250. The master's LMTP front
(``front.py``) therefore writes each accepted message here, on the *replica*,
before it answers the sender; after a failover the promoted replica delivers
again whatever of its journal its own store lacks (``service.replay``).

An entry is two files under ``<data dir>/journal``, written then renamed and
fsynced, the metadata last, so an entry whose ``.json`` exists is whole:

- ``<id>.eml``: the message as the master stored it (stamped with
  ``X-Mailshard-Journal: <id>``, which is how the replay recognises it);
- ``<id>.json``: sender, the recipients the master accepted, and when the
  master finished delivering it (the master's clock).

An entry is dropped once the replica is known to hold it: when it observed its
own mailboxes equal to (in sync with) a master observation that *started
after* the entry was delivered. Both times are the master's clock, so clock
skew between members cannot prune an entry early. UIDNEXT only grows and
dsync keeps UIDs, so equal UIDNEXT everywhere means the replica has seen
every save the master had made by then.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from mailshard.agent.lmtp import valid_journal_id
from mailshard.agent.observe import MailboxKey, MailboxState

log = logging.getLogger("mailshard.agent.journal")

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
"""Largest message the front accepts (and the journal stores); larger ones get a permanent 552."""


@dataclass(frozen=True)
class JournalEntry:
    id: str
    sender: str
    recipients: tuple[str, ...]
    delivered_at: float
    """When the master finished delivering it, on the master's clock (seconds since the epoch)."""

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "sender": self.sender,
            "recipients": list(self.recipients),
            "deliveredAt": self.delivered_at,
        }

    @classmethod
    def from_json(cls, data: object) -> JournalEntry:
        if not isinstance(data, dict):
            raise ValueError("a journal entry is a JSON object")
        entry_id = str(data.get("id", ""))
        recipients = data.get("recipients")
        if not valid_journal_id(entry_id):
            raise ValueError(f"bad journal id {entry_id!r}")
        if not isinstance(recipients, list) or not recipients or not all(isinstance(r, str) for r in recipients):
            raise ValueError("recipients must be a non-empty list of addresses")
        delivered = data.get("deliveredAt")
        if not isinstance(delivered, int | float) or isinstance(delivered, bool):
            raise ValueError("deliveredAt must be a number")
        sender = data.get("sender", "")
        if not isinstance(sender, str):
            raise ValueError("sender must be a string")
        return cls(entry_id, sender, tuple(recipients), float(delivered))


def users_caught_up(master: Mapping[MailboxKey, MailboxState], replica: Mapping[MailboxKey, MailboxState]) -> set[str]:
    """Users (lower-cased) every one of whose mailboxes the replica has up to the master's UIDNEXT, same UIDVALIDITY.

    Per user rather than for the whole store, so that under steady load,
    when some mailbox somewhere is always a moment behind, each user's
    entries are still dropped as soon as that user is caught up.
    """
    behind: set[str] = set()
    users: set[str] = set()
    for key, on_master in master.items():
        users.add(on_master.user.lower())
        on_replica = replica.get(key)
        same_mailbox = on_replica is not None and on_replica.uidvalidity == on_master.uidvalidity
        if not same_mailbox or on_replica is None or on_replica.uidnext < on_master.uidnext:
            behind.add(on_master.user.lower())
    return users - behind


def prunable(
    entries: Iterable[JournalEntry], master_observed_from: float, caught_up: Collection[str] | None = None
) -> list[JournalEntry]:
    """Entries the replica is sure to hold, given a master observation started at `master_observed_from`.

    With `caught_up` None the whole replica was in sync with that observation;
    otherwise only the listed (lower-cased) users were, and an entry qualifies
    when each of its recipients is one of them.
    """
    return [
        entry
        for entry in entries
        if entry.delivered_at < master_observed_from
        and (caught_up is None or all(recipient.lower() in caught_up for recipient in entry.recipients))
    ]


class DeliveryJournal:
    """The entries on disk, indexed in memory (loaded once at start; this agent is their only writer)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._entries: dict[str, JournalEntry] = {}
        self.load_errors: list[str] = []

    def load(self) -> None:
        self._entries.clear()
        self.load_errors = []
        if not self.directory.is_dir():
            return
        for meta in sorted(self.directory.glob("*.json")):
            try:
                entry = JournalEntry.from_json(json.loads(meta.read_text(encoding="utf-8")))
                if not self.message_path(entry.id).is_file():
                    raise ValueError("its message file is missing")
            except (OSError, ValueError) as exc:
                self.load_errors.append(f"journal entry {meta.name}: {exc}")
                continue
            self._entries[entry.id] = entry
        for leftover in self.directory.glob(".*.tmp"):  # a write interrupted before its rename
            leftover.unlink(missing_ok=True)
        if self.load_errors:
            log.error("%d unreadable journal entries (kept on disk): %s", len(self.load_errors), self.load_errors[:3])

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self) -> list[JournalEntry]:
        return sorted(self._entries.values(), key=lambda entry: (entry.delivered_at, entry.id))

    def message_path(self, entry_id: str) -> Path:
        return self.directory / f"{entry_id}.eml"

    def oldest(self) -> float | None:
        return min((entry.delivered_at for entry in self._entries.values()), default=None)

    def write(self, entry: JournalEntry, message: bytes) -> None:
        """Store durably: message, then metadata, each fsynced before its rename, then the directory.

        Blocking (fsync): run it in a thread, then `index` the entry on the event loop.
        """
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._write(self.message_path(entry.id), message)
        self._write(self.directory / f"{entry.id}.json", json.dumps(entry.to_json()).encode())
        self._sync_directory()

    def index(self, entry: JournalEntry) -> None:
        self._entries[entry.id] = entry

    def read(self, entry_id: str) -> bytes:
        return self.message_path(entry_id).read_bytes()

    def remove(self, entry_ids: Iterable[str]) -> int:
        removed = 0
        for entry_id in entry_ids:
            if self._entries.pop(entry_id, None) is None:
                continue
            (self.directory / f"{entry_id}.json").unlink(missing_ok=True)
            self.message_path(entry_id).unlink(missing_ok=True)
            removed += 1
        return removed

    def _write(self, path: Path, data: bytes) -> None:
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        tmp.replace(path)

    def _sync_directory(self) -> None:
        with contextlib.suppress(OSError):
            fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
