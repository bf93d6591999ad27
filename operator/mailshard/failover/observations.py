"""Everything a failover decision is made from, as plain frozen values gathered by the service layer.

The decision must be reproducible from its inputs alone, so nothing here is
read from a clock, a socket or the API: the service polls the agents, lists
the pods, reads the MailShard's status and spec, and hands over one
`ShardFacts` with `now` in it. Each field says whose view it is and how stale
it may be, because the rules in `liveness` and `diagnose` depend on exactly
that.

Times are the operator's clock. Values the agents time-stamp with their own
clock (when the peer was last heard from, when the member was last in sync)
must be converted by the service into ages or into operator time using the
report's own `observedAt`, so clock skew between nodes never decides anything.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from mailshard.api.constants import GROUP
from mailshard.api.v1alpha1 import FailoverCause, FailoverRecord, MemberRole
from mailshard.failover.policy import FailoverPolicy
from mailshard.failover.steps import FailoverStep

SWITCHOVER_ANNOTATION: Final = f"{GROUP}/switchover-to"
"""Set on a MailShard to a member name to request a planned switchover to that member."""
FORCE_PROMOTE_ANNOTATION: Final = f"{GROUP}/force-promote"
"""Set on a MailShard to a member name to promote it although the operator refuses to: a human accepts the loss."""


class PodState(enum.StrEnum):
    """The member's pod as the API server last showed it (the kubelet's readiness may lag by up to 15 s)."""

    ABSENT = "absent"
    """No pod, or one being deleted: it is going away whatever its agent says."""
    NOT_READY = "not-ready"
    READY = "ready"


@dataclass(frozen=True)
class MailboxUidNext:
    """One mailbox's UIDNEXT as an agent reported it, keyed by `user/mailbox`."""

    mailbox: str
    uidvalidity: int
    uidnext: int


@dataclass(frozen=True)
class AgentReport:
    """What the member's agent said in its last successful `/status` answer."""

    role: MemberRole
    """The role in the member's role file; UNKNOWN when the file is missing or unreadable (served as fenced)."""
    fenced: bool
    daemon_up: bool
    peer_silence_seconds: float | None = None
    """How long this agent had not heard from its peer's agent when it answered; None if never heard."""
    mailboxes: tuple[MailboxUidNext, ...] | None = None
    """The per-mailbox UIDNEXT summary, when the agent sent one."""

    @property
    def claims_master(self) -> bool:
        """Whether the member would serve writes: role master and not fenced (daemon up or about to be)."""
        return self.role is MemberRole.MASTER and not self.fenced


@dataclass(frozen=True)
class LagSample:
    """A replication lag this member reported as a replica, and when the operator received it."""

    seconds: float
    measured_at: datetime
    in_sync: bool | None = None
    """Whether the member held everything its master had (no mailbox behind or diverged); None: not reported.

    Not the same as a lag of 0: the lag is a lower bound that starts at 0 when a difference is first seen."""

    def __post_init__(self) -> None:
        if self.seconds < 0:
            raise ValueError(f"a lag cannot be negative: {self.seconds}")

    @property
    def caught_up(self) -> bool:
        """Whether this sample shows the member holding everything its master had."""
        return self.in_sync if self.in_sync is not None else self.seconds == 0


@dataclass(frozen=True)
class MemberFacts:
    """One member as the operator knows it now."""

    name: str
    pod: PodState
    node_ready: bool | None = None
    """Kubernetes' view of the node, which lags a dead node by the node-monitor grace period. Informative only."""
    last_heartbeat: datetime | None = None
    """When the operator's last successful poll of the agent returned; None if none since the operator started."""
    failed_polls: int = 0
    """Consecutive polls that failed since then (0 when the latest succeeded)."""
    report: AgentReport | None = None
    """What the last successful poll said; kept, though stale, while the agent is silent."""
    lag: LagSample | None = None
    """The most recent lag known for this member, even if its latest report had none."""
    last_in_sync: datetime | None = None
    """When this member was last known to hold everything its master had."""
    volume_leaving: bool = False
    """Its mail claim is being deleted or is gone: whatever it holds now, it comes back on a new, empty volume."""

    def __post_init__(self) -> None:
        if self.failed_polls < 0:
            raise ValueError(f"{self.name}: failed_polls cannot be negative")
        if (self.last_heartbeat is None) != (self.report is None):
            raise ValueError(f"{self.name}: a successful poll has both a time and a report, or neither")


@dataclass(frozen=True)
class FailoverProgress:
    """A failover or switchover under way, as recorded in the status after each step."""

    source: str
    """The old master (`status.master` until the failover is recorded)."""
    target: str
    """The member being promoted (`status.targetMaster`)."""
    planned: bool
    """A switchover a human asked for: it waits for the target to catch up before fencing the old master."""
    started: datetime
    reason: str
    completed: FailoverStep | None
    """The last step done; None right after the start."""
    completed_at: datetime
    """When that step was recorded (the start time while none is)."""
    messages_at_risk: int | None = None
    """Messages the old master had reported that the target lacked, when both summaries were known at the start."""
    forced: bool = False
    """A promotion a human forced (`FORCE_PROMOTE_ANNOTATION`): it runs even with failover disabled."""
    serving_since: datetime | None = None
    """When routing was pointed at the target (REPOINT_ROUTING done): where the outage ended. The old master's
    rejoin, which follows, can take minutes (a re-seed) and is not part of it."""

    @property
    def cause(self) -> FailoverCause:
        if self.planned:
            return FailoverCause.SWITCHOVER
        return FailoverCause.FORCED_PROMOTION if self.forced else FailoverCause.MASTER_DOWN


@dataclass(frozen=True)
class RecordedState:
    """The failover-related part of the MailShard's status: the operator's memory across restarts."""

    master: str | None
    failing_since: datetime | None = None
    """When the master was first seen down in the current episode of trouble."""
    recovering_since: datetime | None = None
    """While `failing_since` is set: when the master was seen back up, if it still is."""
    uncertain_since: datetime | None = None
    failover: FailoverProgress | None = None
    last_failover: FailoverRecord | None = None
    superseded: tuple[str, ...] = ()
    """Old masters fenced by a failover or split-brain repair, until re-seeded: the shard's contract tells them."""


@dataclass(frozen=True)
class ShardFacts:
    """Everything one decision about a shard is made from."""

    members: tuple[MemberFacts, MemberFacts]
    recorded: RecordedState
    policy: FailoverPolicy
    now: datetime
    switchover_to: str | None = None
    """The value of the switchover annotation, verbatim, if the shard has one."""
    force_promote_to: str | None = None
    """The value of the forced-promotion annotation, verbatim, if the shard has one."""

    def __post_init__(self) -> None:
        first, second = self.members
        if first.name == second.name:
            raise ValueError(f"the two members must differ, got {first.name!r} twice")
        recorded = self.recorded
        if recorded.master is not None and recorded.master not in self.names:
            raise ValueError(f"recorded master {recorded.master!r} is not one of {self.names}")
        progress = recorded.failover
        if progress is not None:
            if progress.source != recorded.master:
                raise ValueError(f"a failover from {progress.source!r} needs it recorded as master")
            if progress.target not in self.names or progress.target == progress.source:
                raise ValueError(f"failover target {progress.target!r} must be the other member of {self.names}")

    @property
    def names(self) -> tuple[str, str]:
        first, second = self.members
        return first.name, second.name

    def member(self, name: str) -> MemberFacts:
        return self.members[self.names.index(name)]

    def other(self, name: str) -> MemberFacts:
        return self.members[1 - self.names.index(name)]
