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
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

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


def uidnext_floors(
    target: Iterable[MailboxUidNext], old_master: Iterable[MailboxUidNext] | None, *, gap: int
) -> dict[str, int]:
    """The minimum UIDNEXT each mailbox of the new master must have before it is routed to.

    The highest UIDNEXT known on either side, plus `gap` for what the old master
    may have assigned unreported. Only the target's own mailboxes can be raised;
    one that only the old master had is counted in `messages_at_risk` instead.
    """
    theirs = _index(old_master or ())
    floors = {}
    for row in target:
        old = theirs.get(row.mailbox)
        known = row.uidnext if old is None or old.uidvalidity != row.uidvalidity else max(row.uidnext, old.uidnext)
        floors[row.mailbox] = known + gap
    return floors
