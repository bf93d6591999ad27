"""Whether one member is up, down, or not known to be either, from the operator's own signals.

Why a module of its own: "down" is the word a failover is triggered on, so it
must mean one explicit thing, and it must never mean "Kubernetes has not
noticed yet" or "the operator itself is stalled".

First, how fresh the agent's last answer is (`Heartbeat`), with
`timeout = missed_polls * poll_interval` (2 polls at 1 s by default, see `policy`):

==========================================================  ==========
the latest poll succeeded, less than `timeout` ago            FRESH
≥ `missed_polls` consecutive polls failed, and the last       SILENT
success is ≥ `timeout` ago (or there was none)
anything else: fewer failures, or no poll made lately         LATE
==========================================================  ==========

Then the member (`Liveness`), from the pod, the heartbeat and what a fresh
agent said; the first matching row wins:

=========  =========  =================  ========  =============================================
pod        heartbeat  agent says          liveness  why
=========  =========  =================  ========  =============================================
ABSENT     any        any                DOWN      the pod is gone or terminating
any        FRESH      daemon down        DOWN      its own agent says the daemon is not running
any        FRESH      daemon up          UP        the freshest signal wins over a lagging probe
NOT_READY  SILENT     (stale)            DOWN      the kubelet's probe fails too
READY      SILENT     (stale)            SILENT    maybe dead, maybe only cut off from the
                                                    operator: `diagnose` asks the peer's agent
any        LATE       (stale)            SUSPECT   missed a poll or two: not down yet
=========  =========  =================  ========  =============================================

Node readiness is in no row: a dead node is reported NotReady only after the
node-monitor grace period, and a live pod on a node whose kubelet lost its
lease still answers. It is mentioned in the reasons, for humans.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from mailshard.failover.observations import MemberFacts, PodState
from mailshard.failover.policy import FailoverPolicy


class Heartbeat(enum.StrEnum):
    """How recent the agent's last answer is, in the operator's terms."""

    FRESH = "fresh"
    LATE = "late"
    SILENT = "silent"


class Liveness(enum.StrEnum):
    """What the operator may conclude about a member on its own."""

    UP = "up"
    SUSPECT = "suspect"
    SILENT = "silent"
    DOWN = "down"


@dataclass(frozen=True)
class MemberHealth:
    """A member's liveness, its heartbeat, and a sentence saying why."""

    name: str
    liveness: Liveness
    heartbeat: Heartbeat
    reason: str

    @property
    def up(self) -> bool:
        return self.liveness is Liveness.UP


def heartbeat(member: MemberFacts, policy: FailoverPolicy, now: datetime) -> Heartbeat:
    """Classify the agent's last answer; see the first table of the module docstring."""
    timeout = policy.heartbeat_timeout_seconds
    silent_for = None if member.last_heartbeat is None else (now - member.last_heartbeat).total_seconds()
    if member.failed_polls == 0 and silent_for is not None and silent_for < timeout:
        return Heartbeat.FRESH
    if member.failed_polls >= policy.missed_polls and (silent_for is None or silent_for >= timeout):
        return Heartbeat.SILENT
    return Heartbeat.LATE


def assess_member(member: MemberFacts, policy: FailoverPolicy, now: datetime) -> MemberHealth:
    """Classify the member; see the second table of the module docstring."""
    beat = heartbeat(member, policy, now)
    name = member.name

    def health(liveness: Liveness, reason: str) -> MemberHealth:
        return MemberHealth(name, liveness, beat, f"{name}: {reason}{_node_note(member)}")

    if member.pod is PodState.ABSENT:
        return health(Liveness.DOWN, "its pod is gone or terminating")
    report = member.report
    if beat is Heartbeat.FRESH and report is not None:  # a fresh heartbeat always has a report
        if not report.daemon_up:
            return health(Liveness.DOWN, "its agent reports the mail daemon is not running")
        return health(Liveness.UP, "its agent answers and the mail daemon runs")
    silence = _silence(member, now)
    if beat is Heartbeat.SILENT:
        if member.pod is PodState.NOT_READY:
            return health(Liveness.DOWN, f"its agent is silent ({silence}) and its pod is not ready")
        return health(Liveness.SILENT, f"its agent is silent ({silence}) though its pod still looks ready")
    if member.failed_polls == 0:
        return health(Liveness.SUSPECT, f"its agent has not been polled lately ({silence})")
    return health(Liveness.SUSPECT, f"its agent missed {member.failed_polls} poll(s) ({silence})")


def _silence(member: MemberFacts, now: datetime) -> str:
    if member.last_heartbeat is None:
        return f"{member.failed_polls} failed polls, no answer since the operator started"
    return f"last answer {(now - member.last_heartbeat).total_seconds():.1f}s ago"


def _node_note(member: MemberFacts) -> str:
    return "; Kubernetes reports its node NotReady" if member.node_ready is False else ""
