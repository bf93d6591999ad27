"""Pure parsers for what doveadm reports, and the value types the agent reasons with.

Why this module exists: the agent's decisions (lag, readiness, when to nudge
replication) must be testable without a daemon. Everything that comes out of a
``doveadm`` command is turned into these small frozen types here, with no I/O,
and the I/O layer (``doveadm.py``) only runs the commands.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# doveadm's `replicator status` prints "time since" values as H:MM:SS. A user never synced
# shows the time since the epoch; anything older than this is reported as "never".
_NEVER_SECONDS = 10 * 365 * 24 * 3600

MAILBOX_STATUS_FIELDS = ("messages", "uidvalidity", "uidnext", "highestmodseq", "unseen")


class ParseError(ValueError):
    """doveadm printed something we do not understand."""


@dataclass(frozen=True, order=True)
class MailboxKey:
    user: str
    mailbox: str


@dataclass(frozen=True)
class MailboxState:
    """One mailbox as ``doveadm mailbox status`` sees it."""

    user: str
    mailbox: str
    uidvalidity: int
    uidnext: int
    messages: int
    highestmodseq: int
    unseen: int

    @property
    def key(self) -> MailboxKey:
        return MailboxKey(self.user, self.mailbox)

    def replicated(self) -> tuple[int, int, int, int]:
        """The fields that dsync makes equal on both sides (HIGHESTMODSEQ is per server, so it is not here)."""
        return (self.uidvalidity, self.uidnext, self.messages, self.unseen)

    def to_json(self) -> dict[str, Any]:
        return {
            "user": self.user,
            "mailbox": self.mailbox,
            "uidvalidity": self.uidvalidity,
            "uidnext": self.uidnext,
            "messages": self.messages,
            "highestmodseq": self.highestmodseq,
            "unseen": self.unseen,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> MailboxState:
        try:
            return cls(
                user=str(data["user"]),
                mailbox=str(data["mailbox"]),
                uidvalidity=int(data["uidvalidity"]),
                uidnext=int(data["uidnext"]),
                messages=int(data["messages"]),
                highestmodseq=int(data["highestmodseq"]),
                unseen=int(data["unseen"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ParseError(f"bad mailbox summary {data!r}: {exc}") from exc


@dataclass(frozen=True)
class ReplicatorUser:
    """One user's line of ``doveadm replicator status '*'``. Ages are seconds, None when never."""

    username: str
    priority: str
    last_fast_sync_age: int | None
    last_full_sync_age: int | None
    last_success_age: int | None
    failed: bool

    @property
    def pending(self) -> bool:
        """Queued for a sync or failing: this user may have changes the peer lacks."""
        return self.priority != "none" or self.failed


def _load_json_list(text: str, what: str) -> list[Mapping[str, Any]]:
    text = text.strip()
    if not text:
        return []
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ParseError(f"{what}: not JSON: {text[:200]!r}") from exc
    if not isinstance(data, list) or not all(isinstance(row, dict) for row in data):
        raise ParseError(f"{what}: expected a JSON list of objects, got {text[:200]!r}")
    return data


def parse_mailbox_status(text: str) -> tuple[MailboxState, ...]:
    """Parse ``doveadm -f json mailbox status -A '<MAILBOX_STATUS_FIELDS>' '*'``."""
    states = []
    for row in _load_json_list(text, "mailbox status"):
        try:
            states.append(
                MailboxState(
                    user=str(row["username"]),
                    mailbox=str(row["mailbox"]),
                    uidvalidity=int(row["uidvalidity"]),
                    uidnext=int(row["uidnext"]),
                    messages=int(row["messages"]),
                    highestmodseq=int(row["highestmodseq"]),
                    unseen=int(row["unseen"]),
                )
            )
        except (KeyError, ValueError) as exc:
            raise ParseError(f"mailbox status: bad row {row!r}: {exc}") from exc
    return tuple(sorted(states, key=lambda state: state.key))


def parse_journal_ids(text: str, field: str) -> set[str]:
    """Parse ``doveadm -f json fetch -u <user> hdr.<journal header> ...``: the non-empty header values."""
    found = set()
    for row in _load_json_list(text, "fetch"):
        value = row.get(field)
        if not isinstance(value, str):
            raise ParseError(f"fetch: row without {field}: {row!r}")
        if value.strip():
            found.add(value.strip())
    return found


def parse_age(text: str) -> int | None:
    """Parse a doveadm "time since" value (``H:MM:SS``, hours unbounded; ``-`` for none)."""
    text = text.strip()
    if text in {"", "-"}:
        return None
    parts = text.split(":")
    if len(parts) != 3 or not all(part.isdigit() for part in parts):
        raise ParseError(f"bad duration {text!r}")
    hours, minutes, seconds = (int(part) for part in parts)
    total = hours * 3600 + minutes * 60 + seconds
    return None if total >= _NEVER_SECONDS else total


def parse_replicator_status(text: str) -> tuple[ReplicatorUser, ...]:
    """Parse ``doveadm -f json replicator status '*'``."""
    users = []
    for row in _load_json_list(text, "replicator status"):
        try:
            users.append(
                ReplicatorUser(
                    username=str(row["username"]),
                    priority=str(row["priority"]),
                    last_fast_sync_age=parse_age(str(row["fast sync"])),
                    last_full_sync_age=parse_age(str(row["full sync"])),
                    last_success_age=parse_age(str(row["success sync"])),
                    failed=str(row["failed"]).strip() not in {"", "-"},
                )
            )
        except KeyError as exc:
            raise ParseError(f"replicator status: bad row {row!r}: missing {exc}") from exc
    return tuple(sorted(users, key=lambda user: user.username))


def summary_index(states: Iterable[MailboxState]) -> dict[MailboxKey, MailboxState]:
    return {state.key: state for state in states}
