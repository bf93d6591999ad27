"""The fixed order of a failover's steps, so a restarted operator resumes exactly where it stopped.

A failover is a sequence of side effects (a Kubernetes patch here, an agent
call there) that can be interrupted anywhere: the operator may crash, lose
its leader lease or be rescheduled between any two calls. So the progress is
not kept in memory but recorded in the MailShard's status after each step, as
the last *completed* step, and what to do next is a pure function of that
record alone. Every step is idempotent (fencing a fenced member, promoting a
master, re-pointing routing that already points there are no-ops), so a step
that ran but whose completion was not recorded is simply run again.

The order is the safety argument, the same as CloudNativePG's: nobody can be
sent writes by the routing layer before the old master is cut off from it,
and the new master is announced only once it holds UIDs above anything the
old one may have handed out.
"""

from __future__ import annotations

import enum
from typing import Final


class FailoverStep(enum.StrEnum):
    """One step of a failover or planned switchover, in the order they run."""

    FENCE_ROUTING = "FenceRouting"
    """Point the routing layer (the master Service and the proxies) at no member at all."""
    DRAIN = "Drain"
    """Wait until the target holds everything the old master accepted (only while the old master is up)."""
    FENCE_OLD_MASTER = "FenceOldMaster"
    """Tell the old master's agent to fence it (skipped, with routing already fenced, when it cannot be reached)."""
    PROMOTE = "Promote"
    """Tell the target's agent to become master."""
    RAISE_UIDNEXT = "RaiseUidNext"
    """Raise every mailbox's UIDNEXT on the new master above any UID the old master may have assigned."""
    REPOINT_ROUTING = "RepointRouting"
    """Point the routing layer at the new master."""
    REJOIN_OLD_MASTER = "RejoinOldMaster"
    """Demote and unfence the old master so it replicates from the new one (skipped when it is not up)."""
    RECORD = "Record"
    """Write the new master and the failover record into the status; the failover is over."""


STEP_ORDER: Final[tuple[FailoverStep, ...]] = tuple(FailoverStep)


def step_index(step: FailoverStep | None) -> int:
    """Position of a completed step; -1 for "nothing completed yet", so comparisons read naturally."""
    return -1 if step is None else STEP_ORDER.index(step)


def next_step(completed: FailoverStep | None) -> FailoverStep | None:
    """The step to run after `completed` (the first one when None); None once RECORD is done."""
    position = step_index(completed) + 1
    return STEP_ORDER[position] if position < len(STEP_ORDER) else None


def has_completed(completed: FailoverStep | None, step: FailoverStep) -> bool:
    """Whether `step` is at or before the last completed one."""
    return step_index(completed) >= step_index(step)
