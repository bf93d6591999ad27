"""What state a shard is in, named from a closed set, before anything is decided about it.

Why this module exists: as in mysql-operator's `diagnose.py`, naming the state
first, with UNCERTAIN and SPLIT_BRAIN as states of their own, makes every
situation the operator can meet an explicit case with one answer (in
`decide`), instead of a path through nested conditions that nobody reviewed.

The checks run in this order, and the first that matches is the diagnosis:

1. A failover is recorded as under way → FAILOVER_IN_PROGRESS (it is driven
   to its end or aborted, whatever else is seen).
2. Both members are up and claim master, unfenced → SPLIT_BRAIN. (A
   claimant whose daemon is down serves nobody yet; if it is the recorded
   master, failing over fences it, and if it is the replica, it is repaired
   once it is up.)
3. No master is recorded → NO_MASTER.
4. The recorded master's fresh report says it is fenced → MASTER_FENCED;
   says another role while up → UNCERTAIN (the record and the member disagree).
5. The recorded master is DOWN (see `liveness`) → MASTER_DOWN, or BOTH_DOWN
   when the replica is DOWN or SILENT too.
6. The recorded master is SILENT (pod Ready, agent not answering): its
   replica's agent is the second witness. It lost the master too →
   MASTER_DOWN; it still hears it, is not up, or does not say →
   UNCERTAIN, and nobody is promoted.
7. The recorded master is SUSPECT → MASTER_SUSPECT.
8. The master is UP. The replica is DOWN or SILENT → REPLICA_DOWN; SUSPECT →
   REPLICA_SUSPECT; claims a role other than replica (the old master back
   from a failover, or a member whose role file is gone), or is fenced while
   the record lists it as superseded (the operator fenced it and its re-seed
   has not succeeded yet) → REPLICA_NEEDS_RESEED; is fenced otherwise →
   REPLICA_FENCED; its lag is unknown or above `maxLagSeconds` →
   REPLICA_LAGGING; otherwise HEALTHY.

Only fresh reports are believed about roles and fences: a silent member's
last words are history.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from mailshard.api.v1alpha1 import MemberRole
from mailshard.failover.liveness import Heartbeat, Liveness, MemberHealth, assess_member
from mailshard.failover.observations import AgentReport, MemberFacts, ShardFacts


class Diagnosis(enum.StrEnum):
    """The state of a shard as far as failover is concerned. Values are CamelCase, fit for condition reasons."""

    HEALTHY = "Healthy"
    """Master up, replica up, in its role and within the allowed lag: a failover could happen safely."""
    NO_MASTER = "NoMaster"
    """No master is recorded: a new pair, or a status that was lost."""
    MASTER_SUSPECT = "MasterSuspect"
    """The master missed a poll or two: not down yet."""
    MASTER_DOWN = "MasterDown"
    """The master is down for sure: gone, reported down by its own agent, or silent to the replica too."""
    MASTER_FENCED = "MasterFenced"
    """The recorded master is fenced, by a human: the operator never undoes that."""
    REPLICA_SUSPECT = "ReplicaSuspect"
    REPLICA_DOWN = "ReplicaDown"
    REPLICA_FENCED = "ReplicaFenced"
    """The replica is fenced, so it could not be promoted; a human fenced it."""
    REPLICA_LAGGING = "ReplicaLagging"
    """The replica's lag is unknown or above the maximum: it must not be promoted automatically."""
    REPLICA_NEEDS_RESEED = "ReplicaNeedsReseed"
    """The member that should be the replica claims another role: the old master came back, or lost its role file."""
    BOTH_DOWN = "BothDown"
    UNCERTAIN = "Uncertain"
    """The signals conflict or cannot be confirmed; promoting could create two masters, so nobody is promoted."""
    SPLIT_BRAIN = "SplitBrain"
    """Both members claim master."""
    FAILOVER_IN_PROGRESS = "FailoverInProgress"


@dataclass(frozen=True)
class Finding:
    """A diagnosis, the sentence a human reads about it, and the facts the decision needs next."""

    diagnosis: Diagnosis
    reason: str
    health: tuple[MemberHealth, MemberHealth]
    """Each member's liveness, in the order of `ShardFacts.members`."""

    def of(self, name: str) -> MemberHealth:
        return next(h for h in self.health if h.name == name)


def lag_bound(member: MemberFacts, now: datetime, *, resolution: float) -> float | None:
    """An upper bound on the member's replication lag now, or None when nothing bounds it.

    The agent's lag is the age of the oldest change the replica lacks, short by
    at most one observation interval (`resolution`); it can grow by at most one
    second per second since it was measured. Being known fully in sync at some
    moment bounds the lag in the same way. Either may be missing: a replica that
    cannot see its master reports no lag, so the last known one is what counts.
    """
    bounds = []
    if member.lag is not None:
        bounds.append(member.lag.seconds + max(0.0, (now - member.lag.measured_at).total_seconds()))
    if member.last_in_sync is not None:
        bounds.append(max(0.0, (now - member.last_in_sync).total_seconds()))
    return min(bounds) + resolution if bounds else None


def fresh_report(member: MemberFacts, health: MemberHealth) -> AgentReport | None:
    """The member's report if it is believable now (the agent answered within the heartbeat timeout)."""
    return member.report if health.heartbeat is Heartbeat.FRESH else None


def diagnose(facts: ShardFacts) -> Finding:
    """Name the shard's state; see the module docstring for the order of the checks."""
    policy, now, recorded = facts.policy, facts.now, facts.recorded
    first, second = (assess_member(m, policy, now) for m in facts.members)
    health = (first, second)

    def found(diagnosis: Diagnosis, reason: str) -> Finding:
        return Finding(diagnosis, reason, health)

    progress = recorded.failover
    if progress is not None:
        kind = "switchover" if progress.planned else "failover"
        done = progress.completed.value if progress.completed is not None else "none yet"
        return found(
            Diagnosis.FAILOVER_IN_PROGRESS,
            f"{kind} from {progress.source} to {progress.target} under way (last step done: {done})",
        )

    reports = {m.name: fresh_report(m, h) for m, h in zip(facts.members, health, strict=True)}
    claimants = [h.name for h in health if h.up and (report := reports[h.name]) is not None and report.claims_master]
    if len(claimants) == 2:
        kept = f"{recorded.master} is the recorded master" if recorded.master else "no master is recorded"
        return found(Diagnosis.SPLIT_BRAIN, f"both {' and '.join(claimants)} claim to be master; {kept}")
    if recorded.master is None:
        claim = f"; {claimants[0]} claims it" if claimants else ""
        return found(Diagnosis.NO_MASTER, f"no master has been chosen yet{claim}")

    master, replica = facts.member(recorded.master), facts.other(recorded.master)
    master_health, replica_health = (first, second) if first.name == master.name else (second, first)
    master_report, replica_report = reports[master.name], reports[replica.name]

    if master_report is not None and master_report.fenced:
        return found(Diagnosis.MASTER_FENCED, f"the master {master.name} is fenced; only a human unfences it")
    if master_report is not None and master_health.up and master_report.role is not MemberRole.MASTER:
        return found(
            Diagnosis.UNCERTAIN,
            f"the status records {master.name} as master but its agent says its role is {master_report.role.value}",
        )

    if master_health.liveness is Liveness.DOWN:
        if replica_health.liveness in (Liveness.DOWN, Liveness.SILENT):
            return found(Diagnosis.BOTH_DOWN, f"{master_health.reason}; {replica_health.reason}")
        return found(Diagnosis.MASTER_DOWN, master_health.reason)
    if master_health.liveness is Liveness.SILENT:
        return _silent_master(facts, master_health, replica_health, replica_report)
    if master_health.liveness is Liveness.SUSPECT:
        return found(Diagnosis.MASTER_SUSPECT, master_health.reason)

    if replica_health.liveness in (Liveness.DOWN, Liveness.SILENT):
        return found(Diagnosis.REPLICA_DOWN, replica_health.reason)
    if replica_health.liveness is Liveness.SUSPECT or replica_report is None:
        return found(Diagnosis.REPLICA_SUSPECT, replica_health.reason)
    if replica_report.role is not MemberRole.REPLICA:
        fence = ", fenced" if replica_report.fenced else ""
        return found(
            Diagnosis.REPLICA_NEEDS_RESEED,
            f"{replica.name} should be the replica but says its role is {replica_report.role.value}{fence}",
        )
    if replica_report.fenced and replica.name in recorded.superseded:
        return found(
            Diagnosis.REPLICA_NEEDS_RESEED,
            f"{replica.name} was fenced as a superseded master and has not been re-seeded as replica yet",
        )
    if replica_report.fenced:
        return found(Diagnosis.REPLICA_FENCED, f"the replica {replica.name} is fenced; only a human unfences it")
    lag = lag_bound(replica, now, resolution=policy.poll_interval_seconds)
    if lag is None:
        return found(Diagnosis.REPLICA_LAGGING, f"the replica {replica.name} has not reported its lag yet")
    if lag > policy.max_lag_seconds:
        return found(
            Diagnosis.REPLICA_LAGGING,
            f"the replica {replica.name} may be {lag:.1f}s behind, more than the "
            f"{policy.max_lag_seconds:g}s allowed for automatic promotion",
        )
    return found(Diagnosis.HEALTHY, f"{master.name} is master; {replica.name} is at most {lag:.1f}s behind")


def _silent_master(
    facts: ShardFacts, master: MemberHealth, replica: MemberHealth, replica_report: AgentReport | None
) -> Finding:
    """Rule 6: a master whose pod looks Ready but whose agent is silent needs the replica's word."""
    health = (master, replica) if facts.members[0].name == master.name else (replica, master)
    timeout = facts.policy.heartbeat_timeout_seconds
    heard = replica_report.peer_silence_seconds if replica_report is not None and replica.up else None
    if heard is not None and heard >= timeout:
        return Finding(
            Diagnosis.MASTER_DOWN,
            f"{master.reason}, and the replica's agent has not heard from it for {heard:.1f}s either",
            health,
        )
    if heard is not None:
        why = f"the replica's agent heard from it {heard:.1f}s ago: the operator may be the one cut off"
    elif not replica.up:
        why = f"nobody can confirm it: {replica.reason}"
    else:
        why = "the replica's agent does not say when it last heard from it"
    return Finding(Diagnosis.UNCERTAIN, f"{master.reason}; {why}", health)
