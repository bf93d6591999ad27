"""Replication lag, measured from what both members actually hold.

Why this module exists: "lag" is the number an operator fails over on, so it
must mean one precise, checkable thing, and it must be computed by pure code
that tests can drive with made-up clocks.

**Definition.** The lag is the age of the oldest change that the master has
and the replica does not, where a change's age is counted from the first time
an agent *observed* the master holding it. Progress is measured per mailbox by
``UIDNEXT``: dsync keeps UIDs, so the same mailbox has the same UIDNEXT on
both sides once in sync, and it only grows. (``HIGHESTMODSEQ`` would also
cover flag changes, but it is a per-server counter: measured on 2.3.19, a
mailbox that dsync reports in sync can have modseq 4 on one side and 6 on the
other, so it cannot be compared across servers.) The tracker remembers, for
each mailbox where the replica is behind, when each higher master UIDNEXT was
first seen; the mailbox's lag is ``now - (first time the master was seen
ahead of the replica's current UIDNEXT)``, and the pair's lag is the largest
over all mailboxes. A mailbox the replica does not have yet counts as UIDNEXT
0 there. Mailboxes that exist on the replica only, or whose UIDVALIDITY
differs, or whose message or unseen counts differ at equal UIDNEXT (an
expunge or a \\Seen change not yet replicated) are *diverged*: their lag
counts from the first observation of the difference. Other flag changes are
not visible in this summary; the replicator's per-user failure state (see
``/status``) is what reports those not reaching the peer.

Consequences, stated so nobody reads more into the number: the lag is 0 when
every mailbox matches; it is a lower bound of the true lag, short by at most
one observation interval (the agent polls every second by default); under
steady load with healthy replication it stays near 0 instead of growing,
because the replica keeps reaching states the master was seen in a moment
ago; while the peer's agent is unreachable the last state it reported is used,
so the lag keeps growing as the master moves on, which is the honest answer
when nobody can vouch for the replica.

**Unbounded.** What the replica lacks at the tracker's *first* observation
(after the agent starts, or after a role change resets it) has no age the
tracker can know: a replica that just came back on an empty volume lacks
years of mail. Counting those changes from that first observation made such a
replica report a lag of 0 and look promotable; a switchover to it was drained
in a second, and the old master was then re-seeded from the empty store (seen
in the e2e tier). So until the replica has reached every position the master
held at that first observation, the lag is None: unbounded, never 0. Healthy
replication clears that within a round.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from mailshard.agent.observe import MailboxKey, MailboxState


@dataclass(frozen=True)
class LagReading:
    lag_seconds: float | None
    """None while the replica still lacks something it lacked at the first observation: no bound (see above)."""
    in_sync: bool
    behind_mailboxes: int
    diverged_mailboxes: int


@dataclass
class LagTracker:
    """Keeps, per mailbox, when the master was first seen at each UIDNEXT the replica has not reached."""

    max_history: int = 3600
    _behind: dict[MailboxKey, list[tuple[float, int]]] = field(default_factory=dict)
    _diverged_since: dict[MailboxKey, float] = field(default_factory=dict)
    _observed: bool = False

    def reset(self) -> None:
        self._behind.clear()
        self._diverged_since.clear()
        self._observed = False

    def update(
        self,
        now: float,
        master: Mapping[MailboxKey, MailboxState],
        replica: Mapping[MailboxKey, MailboxState],
    ) -> LagReading:
        lag = 0.0
        behind = diverged = 0
        # A difference already there at the first observation is older than anything the tracker saw.
        first_seen = now if self._observed else -math.inf
        self._observed = True
        for key in master.keys() | replica.keys():
            m, r = master.get(key), replica.get(key)
            if m is not None and (r is None or m.uidvalidity == r.uidvalidity):
                if r is not None and m.replicated() == r.replicated():
                    self._behind.pop(key, None)
                    self._diverged_since.pop(key, None)
                    continue
                replica_next = 0 if r is None else r.uidnext  # a missing mailbox holds nothing yet
                if replica_next < m.uidnext:
                    self._diverged_since.pop(key, None)
                    history = self._behind.setdefault(key, [])
                    if not history or history[-1][1] < m.uidnext:
                        history.append((first_seen, m.uidnext))
                        if len(history) > self.max_history:
                            del history[1]  # keep the oldest: it carries the lag
                    while history and history[0][1] <= replica_next:
                        history.pop(0)
                    behind += 1
                    lag = max(lag, now - history[0][0])
                    continue
            self._behind.pop(key, None)
            since = self._diverged_since.setdefault(key, first_seen)
            diverged += 1
            lag = max(lag, now - since)
        for gone in (self._behind.keys() | self._diverged_since.keys()) - (master.keys() | replica.keys()):
            self._behind.pop(gone, None)
            self._diverged_since.pop(gone, None)
        return LagReading(
            lag_seconds=lag if math.isfinite(lag) else None,
            in_sync=behind == 0 and diverged == 0,
            behind_mailboxes=behind,
            diverged_mailboxes=diverged,
        )
