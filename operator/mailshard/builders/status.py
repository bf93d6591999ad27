"""A shard's status computed from observed facts: phase, members, lag and kstatus conditions.

The service layer observes (pods, their readiness and roles, the agents' lag
reports, its own failover state) and this module decides what that means,
purely, so every rule below is a table test rather than a cluster scenario.

The rules:

- Ready is True when both members are ready, the master is known and, after a
  failover the operator did not plan with a human (`lastFailover.cause`
  MasterDown or ForcedPromotion), the member it left behind has been seen in
  sync with the new master (`lastFailover.replicaInSyncAt`). It describes the
  data plane only: a spec the operator cannot apply makes the shard Stalled,
  not un-Ready.
- Reconciling is True while the operator is still converging (building the
  pair, replacing a member, recovering a lost one, failing over); Stalled is
  True when it cannot converge without a human (a spec it cannot apply, a
  fenced master it will not promote over). At most one of the two is True.
- Degraded is True only when a pair that had been fully ready lost a member it
  did not choose to lose, from the moment it is seen lost until the pair is
  whole again: during an unplanned failover (FailingOver), while the old
  master is away (MemberUnavailable), and while it catches up as the new
  replica (ReplicaCatchingUp: Reconciling, never Stalled). Building the pair
  is Provisioning, a member the operator is replacing on purpose (a rollout)
  is Updating, and a planned switchover is FailingOver: none is ever
  Degraded. Whether the replica caught up is recorded once, by the failover
  monitor, so the replica's lag moving afterwards changes nothing here.

Whether the pair had been fully ready is remembered in the Ready condition
itself: while it is False, its reason says Pending or Provisioning only until
the pair has been ready once, and something else ever after.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from mailshard.api.v1alpha1 import (
    UNPLANNED_CAUSES,
    Condition,
    ConditionStatus,
    FailoverProgressStatus,
    FailoverRecord,
    MailShardStatus,
    MemberRole,
    MemberStatus,
    ShardConditionType,
    ShardPhase,
)
from mailshard.builders.conditions import set_condition


@dataclass(frozen=True)
class MemberObservation:
    """What the service saw of one member."""

    name: str
    pod_exists: bool = False
    ready: bool = False
    role: MemberRole = MemberRole.UNKNOWN
    node: str | None = None
    lag_seconds: float | None = None
    last_sync_time: datetime | None = None
    replacing: bool = False
    """The operator deleted this member's pod on purpose (a rollout) and it has not been ready since."""


@dataclass(frozen=True)
class Problem:
    """Why the operator cannot go on by itself, as a condition reason (CamelCase) and a message."""

    reason: str
    message: str


@dataclass(frozen=True)
class ShardObservation:
    """Everything the status of one shard is computed from."""

    generation: int
    members: tuple[MemberObservation, MemberObservation]
    master: str | None
    """The member the operator currently treats as master (None before it has decided)."""
    max_lag_seconds: float
    target_master: str | None = None
    """Set while a failover to this member is in progress."""
    failing_since: datetime | None = None
    recovering_since: datetime | None = None
    uncertain_since: datetime | None = None
    failover: FailoverProgressStatus | None = None
    """The failover under way, as the failover monitor recorded it (its target is `target_master`)."""
    alarm: Problem | None = None
    """The failover monitor will not act on its own and says why (a human must decide)."""
    last_failover: FailoverRecord | None = None
    mailboxes: int | None = None
    fenced: Problem | None = None
    """The master is fenced out and the operator waits for a human before promoting."""
    failure: Problem | None = None
    """The operator cannot apply the spec (e.g. the shard's MailCluster does not exist)."""


_NEVER_READY_REASONS: Final = frozenset({"Pending", "Provisioning"})
_AS_EXPECTED: Final = "AsExpected"


@dataclass(frozen=True)
class _DataPlane:
    phase: ShardPhase
    reason: str
    message: str
    lost: bool = False
    """A member was lost rather than taken out on purpose: Degraded, whatever the phase says."""


def _names(members: Sequence[MemberObservation]) -> str:
    return " and ".join(m.name for m in members)


def was_established(previous: MailShardStatus | None) -> bool:
    """Whether the pair had been fully ready at some point (see the module docstring)."""
    if previous is None:
        return False
    ready = previous.condition(ShardConditionType.READY)
    return ready is not None and (ready.status is ConditionStatus.TRUE or ready.reason not in _NEVER_READY_REASONS)


def _data_plane(observation: ShardObservation, *, established: bool) -> _DataPlane:
    members = observation.members
    master = observation.master
    if observation.fenced is not None:
        return _DataPlane(ShardPhase.FENCED, "Fenced", observation.fenced.message)
    if observation.target_master is not None:
        progress = observation.failover
        kind = "switching over" if progress is not None and progress.planned else "promoting"
        step = progress.completed_step if progress is not None else None
        done = f" (done: {step.value})" if step is not None else ""
        return _DataPlane(
            ShardPhase.FAILING_OVER,
            "FailingOver",
            f"{kind} {observation.target_master} to master in place of {master or 'an unknown member'}{done}",
            lost=progress is not None and not progress.planned,
        )
    if not established and not any(m.pod_exists for m in members):
        return _DataPlane(ShardPhase.PENDING, "Pending", f"waiting for the pods of {_names(members)}")
    unready = [m for m in members if not m.ready]
    if not unready and master is not None:
        catching_up = _catching_up(observation)
        if catching_up is not None:
            return _DataPlane(ShardPhase.DEGRADED, "ReplicaCatchingUp", catching_up, lost=True)
        return _DataPlane(ShardPhase.HEALTHY, "MembersReady", f"{master} is master and both members are ready")
    lost = [m for m in unready if not m.replacing]
    if established and lost:
        return _DataPlane(ShardPhase.DEGRADED, "MemberUnavailable", f"{_names(lost)} not ready", lost=True)
    if unready:
        replacing = [m for m in unready if m.replacing]
        if replacing:
            return _DataPlane(ShardPhase.UPDATING, "Updating", f"replacing {_names(replacing)}")
        return _DataPlane(ShardPhase.PROVISIONING, "Provisioning", f"waiting for {_names(unready)} to become ready")
    if established:
        return _DataPlane(
            ShardPhase.DEGRADED, "MasterUnknown", "both members are ready but neither is master", lost=True
        )
    return _DataPlane(ShardPhase.PROVISIONING, "Provisioning", "both members are ready; choosing the master")


def _catching_up(observation: ShardObservation) -> str | None:
    """Why the pair is not whole yet after an unplanned failover although both members are ready, or None."""
    last, master = observation.last_failover, observation.master
    if last is None or last.cause not in UNPLANNED_CAUSES or last.replica_in_sync_at is not None:
        return None
    replica = next(m for m in observation.members if m.name != master)
    lag = "not reported yet" if replica.lag_seconds is None else f"{replica.lag_seconds:g}s"
    return (
        f"{master} is master since the failover from {last.from_member}; {replica.name} has not been seen "
        f"in sync with it yet as its replica (lag {lag})"
    )


def _replicating(observation: ShardObservation) -> tuple[ConditionStatus, str, str, MemberObservation | None]:
    master = observation.master
    if master is None:
        return ConditionStatus.UNKNOWN, "MasterUnknown", "no master yet", None
    replica = next(m for m in observation.members if m.name != master)
    if not replica.ready:
        return ConditionStatus.FALSE, "ReplicaUnavailable", f"replica {replica.name} is not ready", replica
    if replica.lag_seconds is None:
        return ConditionStatus.UNKNOWN, "LagUnknown", f"replica {replica.name} has not reported its lag", replica
    if replica.lag_seconds > observation.max_lag_seconds:
        return (
            ConditionStatus.FALSE,
            "LagTooHigh",
            f"replica {replica.name} is {replica.lag_seconds:g}s behind, more than the "
            f"{observation.max_lag_seconds:g}s allowed for automatic promotion",
            replica,
        )
    return ConditionStatus.TRUE, "InSync", f"replica {replica.name} is {replica.lag_seconds:g}s behind", replica


def _check_members(observation: ShardObservation) -> None:
    names = {m.name for m in observation.members}
    if len(names) != len(observation.members):
        raise ValueError(f"the two observed members must differ, got {sorted(names)}")
    for role_holder in (observation.master, observation.target_master):
        if role_holder is not None and role_holder not in names:
            raise ValueError(f"{role_holder!r} is not one of the observed members {sorted(names)}")


def compute_shard_status(
    observation: ShardObservation, *, previous: MailShardStatus | None, now: datetime
) -> MailShardStatus:
    """The status to write for `observation`, given the status currently stored (`previous`)."""
    _check_members(observation)
    data = _data_plane(observation, established=was_established(previous))
    stall = observation.failure or observation.fenced or observation.alarm
    phase = ShardPhase.FAILED if observation.failure is not None else data.phase
    replicating, replicating_reason, replicating_message, replica = _replicating(observation)
    generation = observation.generation

    conditions: tuple[Condition, ...] = previous.conditions if previous is not None else ()

    def put(condition_type: ShardConditionType, status: ConditionStatus, reason: str, message: str) -> None:
        nonlocal conditions
        conditions = set_condition(
            conditions,
            condition_type=condition_type,
            status=status,
            reason=reason,
            message=message,
            observed_generation=generation,
            now=now,
        )

    healthy = data.phase is ShardPhase.HEALTHY
    put(ShardConditionType.READY, _bool(healthy), data.reason, data.message)
    put(ShardConditionType.REPLICATING, replicating, replicating_reason, replicating_message)
    if data.lost:
        put(ShardConditionType.DEGRADED, ConditionStatus.TRUE, data.reason, data.message)
    else:
        put(ShardConditionType.DEGRADED, ConditionStatus.FALSE, _AS_EXPECTED, "no member lost")
    if observation.target_master is not None:
        put(ShardConditionType.FAILING_OVER, ConditionStatus.TRUE, "Promoting", data.message)
    else:
        put(ShardConditionType.FAILING_OVER, ConditionStatus.FALSE, _AS_EXPECTED, "no failover in progress")
    if stall is not None:
        put(ShardConditionType.RECONCILING, ConditionStatus.FALSE, "Stalled", "waiting for a human; see Stalled")
        put(ShardConditionType.STALLED, ConditionStatus.TRUE, stall.reason, stall.message)
    else:
        put(ShardConditionType.RECONCILING, _bool(not healthy), "Reconciled" if healthy else data.reason, data.message)
        put(ShardConditionType.STALLED, ConditionStatus.FALSE, _AS_EXPECTED, "making progress")

    return MailShardStatus(
        phase=phase,
        master=observation.master,
        replica=replica.name if replica is not None else None,
        lag_seconds=replica.lag_seconds if replica is not None else None,
        members=tuple(_member_status(m) for m in observation.members),
        conditions=conditions,
        observed_generation=generation,
        last_failover=observation.last_failover,
        mailboxes=observation.mailboxes,
        target_master=observation.target_master,
        failing_since=observation.failing_since,
        recovering_since=observation.recovering_since,
        uncertain_since=observation.uncertain_since,
        failover=observation.failover,
    )


LAG_STEP_SECONDS: Final = 1.0
"""How far the measured lag must move from the lag shown before the status shows the new one."""


def lag_to_show(shown: float | None, measured: float | None) -> float | None:
    """The replication lag for the status: whole seconds, and unchanged while the measurement stays near it.

    Under steady load the agent's lag hovers across a rounding boundary (0.4 s,
    0.6 s, 0.4 s...); following it would be a status write every second or two
    per shard, telling nobody anything. The lag shown moves only once the
    measurement is a whole step away from it, so it is never off by a step or more.
    """
    if measured is None:
        return None
    if shown is not None and abs(measured - shown) < LAG_STEP_SECONDS:
        return shown
    return float(round(measured))


def failed_status(
    previous: MailShardStatus | None, *, generation: int, problem: Problem, now: datetime
) -> MailShardStatus:
    """The status of a shard whose spec cannot be parsed or resolved at all.

    Nothing new was observed, so the facts of `previous` are kept; only the phase,
    Reconciling and Stalled change.
    """
    base = previous if previous is not None else MailShardStatus()
    conditions = base.conditions
    for condition_type, status, reason, message in (
        (ShardConditionType.RECONCILING, ConditionStatus.FALSE, "Stalled", "waiting for a human; see Stalled"),
        (ShardConditionType.STALLED, ConditionStatus.TRUE, problem.reason, problem.message),
    ):
        conditions = set_condition(
            conditions,
            condition_type=condition_type,
            status=status,
            reason=reason,
            message=message,
            observed_generation=generation,
            now=now,
        )
    if base.condition(ShardConditionType.READY) is None:
        conditions = set_condition(
            conditions,
            condition_type=ShardConditionType.READY,
            status=ConditionStatus.FALSE,
            reason="Pending",
            message="waiting for a spec the operator can apply",
            observed_generation=generation,
            now=now,
        )
    return base.model_copy(
        update={"phase": ShardPhase.FAILED, "conditions": conditions, "observed_generation": generation}
    )


def _bool(value: bool) -> ConditionStatus:
    return ConditionStatus.TRUE if value else ConditionStatus.FALSE


def _member_status(member: MemberObservation) -> MemberStatus:
    return MemberStatus(
        name=member.name,
        node=member.node,
        role=member.role,
        ready=member.ready,
        lag_seconds=member.lag_seconds,
        last_sync_time=member.last_sync_time,
    )
