"""What asynchronous replication may lose at a failover, and the UIDNEXT floors that keep UIDs unique.

Replication is asynchronous, so when a master dies the replica may lack the
last moments of its mail. The operator cannot recover those messages at that
point, but it must keep them from being silently replaced: the old master
gave them UIDs the replica never saw, and if the new master handed the same
UIDs to new messages, an IMAP client that had cached them would show the
wrong message, and merging the old master back later would have to renumber.
So before the new master is routed to, every mailbox's UIDNEXT is raised
above anything the old master can have assigned (`policy.UID_GAP` explains
the margin), and the count of messages known to be at risk goes into the
failover record.

A mailbox the old master had and the replica never got (a new user's INBOX,
created by its first delivery moments before the master died) is not simply
left to be created again by the next delivery or the journal replay: the new
master would give it a new UIDVALIDITY, and every client that had seen it on
the old master would have to download it again. So the plan says to create
it beforehand with the old master's UIDVALIDITY and a UIDNEXT above anything
the old master can have assigned. A mailbox the new master has under another
UIDVALIDITY than the old master reported is a different mailbox to IMAP: it is
never overwritten (its messages are the ones clients hold now), only raised
like the others and named in `diverged` so that a human hears of it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from mailshard.failover.observations import MailboxUidNext


def _index(summary: Iterable[MailboxUidNext]) -> Mapping[str, MailboxUidNext]:
    return {row.mailbox: row for row in summary}


def messages_at_risk(old_master: Iterable[MailboxUidNext], target: Iterable[MailboxUidNext]) -> int:
    """UIDs the old master had reported that the target lacks, summed over comparable mailboxes.

    A lower bound: the old master may have accepted more after its last report.
    A mailbox whose UIDVALIDITY differs is not comparable and counts nothing.
    """
    replica = _index(target)
    total = 0
    for row in old_master:
        theirs = replica.get(row.mailbox)
        if theirs is None:
            total += max(0, row.uidnext - 1)
        elif theirs.uidvalidity == row.uidvalidity:
            total += max(0, row.uidnext - theirs.uidnext)
    return total


@dataclass(frozen=True)
class MailboxToCreate:
    """A mailbox the new master lacks: create it under the old master's UIDVALIDITY, next UID at least `uidnext`."""

    uidvalidity: int
    uidnext: int


@dataclass(frozen=True)
class UidNextPlan:
    """What the RAISE_UIDNEXT step asks of the new master, per `user/mailbox`."""

    floors: Mapping[str, int] = field(default_factory=dict)
    """Mailboxes the new master has: the minimum UIDNEXT each must have."""
    create: Mapping[str, MailboxToCreate] = field(default_factory=dict)
    """Mailboxes only the old master had: create each as the old master had it, before it is routed to."""
    diverged: tuple[str, ...] = ()
    """Mailboxes the new master has under another UIDVALIDITY than the old master reported (left as they are)."""


def uidnext_plan(
    target: Iterable[MailboxUidNext], old_master: Iterable[MailboxUidNext] | None, *, gap: int
) -> UidNextPlan:
    """What the new master must do before it is routed to, so that no UID is reused and no UIDVALIDITY changes.

    Each mailbox of the target gets a floor: the highest UIDNEXT known on
    either side, plus `gap` for what the old master may have assigned
    unreported. Each mailbox only the old master reported is to be created
    with its UIDVALIDITY and its UIDNEXT plus `gap`. So every mailbox the old
    master reported ends up on the target with the UIDVALIDITY it had and a
    UIDNEXT above anything the old master reported, unless the target already
    has it under another UIDVALIDITY (`diverged`).
    """
    mine = _index(target)
    theirs = _index(old_master or ())
    floors, diverged = {}, []
    for name, row in mine.items():
        old = theirs.get(name)
        if old is None or old.uidvalidity == row.uidvalidity:
            known = row.uidnext if old is None else max(row.uidnext, old.uidnext)
        else:
            known = row.uidnext
            diverged.append(name)
        floors[name] = known + gap
    create = {
        name: MailboxToCreate(uidvalidity=row.uidvalidity, uidnext=row.uidnext + gap)
        for name, row in theirs.items()
        if name not in mine
    }
    return UidNextPlan(floors=floors, create=create, diverged=tuple(sorted(diverged)))
