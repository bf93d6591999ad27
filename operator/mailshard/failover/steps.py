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

from mailshard.api.v1alpha1 import STEP_ORDER, FailoverStep, step_index

__all__ = ["STEP_ORDER", "FailoverStep", "has_completed", "next_step", "step_index"]
"""The step enum and its order live in the API, because `status.failover.completedStep` holds them."""


def next_step(completed: FailoverStep | None) -> FailoverStep | None:
    """The step to run after `completed` (the first one when None); None once RECORD is done."""
    position = step_index(completed) + 1
    return STEP_ORDER[position] if position < len(STEP_ORDER) else None


def has_completed(completed: FailoverStep | None, step: FailoverStep) -> bool:
    """Whether `step` is at or before the last completed one."""
    return step_index(completed) >= step_index(step)
