"""How fast the operator calls a master dead and fails over, and why the numbers are what they are.

**What detection runs on.** The operator polls every member's agent
(`GET /status`) every second. Nothing in Kubernetes' own view is fast or
trustworthy enough to detect a failure: the readiness probe (period 5 s,
3 failures) takes up to 15 s to mark a dead member NotReady, and a node that
dies keeps its pods Ready, and itself Ready, for the node-monitor grace period
(40 s by default). Pods that are gone and pods the kubelet already marked
NotReady are used as corroboration, never waited for; node readiness is not
used at all.

**When a member is silent.** After `missed_polls` (2) *consecutive failed
polls* spanning at least `heartbeat_timeout` (2 s) since its last answer.
Both conditions, so that neither a burst of fast failures nor the operator
itself stalling (its own GC, a hung API call: no poll is attempted, so none
fails) can make a member silent.

**Why `failover.delaySeconds` defaults to 1 s.** The goal is
master killed → mail served by the replica in ≤ 5 s at p99. Worst case, a
silent death (pod or node gone, nobody to report it), master killed at t = 0:

====================================================  ============
its last successful poll                               t in (-1, 0]
declared down: 2 s of silence, plus the timeout of     ≤ 2.5 s
the failing poll (≤ 0.5 s; refused connections fail
at once)
`delaySeconds`                                         + d
the steps: fence routing, drain and fence (both      ~1-1.5 s
skipped: it is dead), promote, raise UIDNEXT,
re-point routing, record; about six API and agent
calls of 0.1-0.3 s each
====================================================  ============

So the default d = 1 gives 4.5-5 s at worst, inside the goal; d = 5 would
give 8.5-9 s, and the goal could not be met. (A master whose pod still looks
Ready also needs the replica's agent to have lost it for 2 s, which happens in
the same time only if the agent's own peer poll fails within a second:
connection refused does, a dropped packet must time out.) The false positives
the numbers must still absorb:

- A brief network blip, or the agent stalling (CPython's GC pauses are
  milliseconds; a multi-second stall means CPU throttling or swapping): the
  master must be unreachable for ≥ 2 s to be declared down and ≥ 3 s
  (timeout + delay) to be replaced. One lost poll, or one TCP SYN
  retransmission (1 s), never triggers anything.
- The operator alone losing the master: does not count. A master whose pod
  still looks Ready is declared down only when the replica's agent has lost
  it too (see `diagnose`); otherwise the shard is UNCERTAIN and nobody is
  promoted.
- A daemon crash that the agent reports: waits only for the delay, and 1 s
  outlasts the agent supervisor's first restart (0.5 s backoff, then start-up),
  so a single crash does not move the master; a second within the window does.

Raising the delay buys tolerance to longer blips at one second of outage per
second of delay; lowering it to 0 cuts the silence tolerated to 2 s and fails
over on the very first crash of a daemon that would have come back by itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from mailshard.api.v1alpha1 import FailoverSettings, ReplicationSettings

POLL_INTERVAL_SECONDS: Final = 1.0
"""How often the operator polls each agent; also the agent's own observation interval."""
MISSED_POLLS: Final = 2
"""Consecutive failed polls that, with `MISSED_POLLS * POLL_INTERVAL_SECONDS` of silence, make a member silent."""
RECOMMENDED_DELAY_SECONDS: Final = 1
"""The `failover.delaySeconds` the budget above calls for (see the module docstring)."""
ALARM_AFTER_SECONDS: Final = 30.0
"""How long an UNCERTAIN shard, or a failover step that cannot proceed, waits before calling a human.

Long enough for every slower signal to have settled the question by itself
(a dead member's readiness flips within 15 s), short enough that a shard that
may be down pages someone within the minute.
"""
UID_GAP: Final = 10_000
"""How far above the highest UIDNEXT known, per mailbox, the new master's UIDNEXT is raised.

It must exceed the UIDs the old master assigned after its last report that
the operator saw: at most one heartbeat timeout plus the delay, about 3 s, of
deliveries; at 80 deliveries/s all into one mailbox that is 240. When the old
master's last report is not known (an operator restart mid-failover) it must
cover the replica's whole lag, at most `maxLagSeconds` (30 s by default):
2,400. 10,000 covers both with margin and costs nothing: UIDs are 32-bit, so
a mailbox survives 400,000 failovers before its UIDs run out.
"""


@dataclass(frozen=True)
class FailoverPolicy:
    """The shard's failover settings plus the detection timing, with the defaults justified above."""

    enabled: bool
    delay_seconds: float
    max_lag_seconds: float
    poll_interval_seconds: float = POLL_INTERVAL_SECONDS
    missed_polls: int = MISSED_POLLS
    alarm_after_seconds: float = ALARM_AFTER_SECONDS
    uid_gap: int = UID_GAP

    def __post_init__(self) -> None:
        if self.delay_seconds < 0 or self.max_lag_seconds <= 0 or self.alarm_after_seconds <= 0:
            raise ValueError(f"failover timings must be positive (the delay may be 0): {self}")
        if self.poll_interval_seconds <= 0 or self.missed_polls < 1 or self.uid_gap < 1:
            raise ValueError(f"heartbeat settings must be positive: {self}")

    @property
    def heartbeat_timeout_seconds(self) -> float:
        """Silence after which a member whose polls keep failing counts as silent."""
        return self.poll_interval_seconds * self.missed_polls

    @property
    def drain_timeout_seconds(self) -> float:
        """How long a switchover waits for the target to catch up: a healthy replica is within the max lag."""
        return self.max_lag_seconds

    @property
    def recovery_window_seconds(self) -> float:
        """How long a master that came back must stay up before its failing state is forgotten.

        Equal to the delay: a master that flaps, down and back within the delay, keeps
        its failing state, so its next fall is measured from the first one and the
        replica is promoted once the delay has passed since then (never earlier, and
        not never). A master that stays up as long as it would have had to stay down
        is forgiven.
        """
        return self.delay_seconds

    @classmethod
    def from_settings(cls, failover: FailoverSettings, replication: ReplicationSettings) -> FailoverPolicy:
        """The policy of a resolved shard, with the default detection timing."""
        return cls(
            enabled=failover.enabled,
            delay_seconds=failover.delay_seconds,
            max_lag_seconds=replication.max_lag_seconds,
        )
