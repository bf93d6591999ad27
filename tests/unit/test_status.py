"""Status from observations: phases, kstatus conditions, and transition times that move only on a flip."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from mailshard.api import Condition, ConditionStatus, MailShardStatus, MemberRole, ShardConditionType, ShardPhase
from mailshard.api.v1alpha1 import FailoverCause, FailoverProgressStatus, FailoverRecord
from mailshard.builders import MemberObservation, Problem, ShardObservation, compute_shard_status, failed_status
from mailshard.builders.conditions import set_condition
from mailshard.builders.status import lag_to_show

pytestmark = pytest.mark.unit

T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
A, B = "inbox-1-a", "inbox-1-b"

READY, REPLICATING, DEGRADED = ShardConditionType.READY, ShardConditionType.REPLICATING, ShardConditionType.DEGRADED
FAILING_OVER, RECONCILING, STALLED = (
    ShardConditionType.FAILING_OVER,
    ShardConditionType.RECONCILING,
    ShardConditionType.STALLED,
)
TRUE, FALSE, UNKNOWN = ConditionStatus.TRUE, ConditionStatus.FALSE, ConditionStatus.UNKNOWN


def member(
    name: str, *, up: bool = True, exists: bool = True, replacing: bool = False, lag: float | None = 0.5
) -> MemberObservation:
    role = MemberRole.MASTER if name == A else MemberRole.REPLICA
    return MemberObservation(
        name=name,
        pod_exists=exists,
        ready=up,
        role=role if exists else MemberRole.UNKNOWN,
        node=f"node-{name[-1]}" if exists else None,
        lag_seconds=(lag if name == B else None) if up else None,
        replacing=replacing,
    )


def observe(a: MemberObservation, b: MemberObservation, **kwargs: Any) -> ShardObservation:
    fields: dict[str, Any] = {"generation": 1, "master": A, "max_lag_seconds": 30.0, **kwargs}
    return ShardObservation(members=(a, b), **fields)


NOTHING = observe(member(A, up=False, exists=False), member(B, up=False, exists=False), master=None)
STARTING = observe(member(A, up=False), member(B, up=False))
HALF_UP = observe(member(A), member(B, up=False))
BOTH_UP = observe(member(A), member(B))
REPLICA_REPLACED = observe(member(A), member(B, up=False, replacing=True))
REPLICA_LOST = observe(member(A), member(B, up=False))
MASTER_LOST = observe(member(A, up=False), member(B))


def run(*observations: ShardObservation, step: timedelta = timedelta(seconds=10)) -> list[MailShardStatus]:
    """The statuses written for a sequence of observations, each reconcile `step` after the last."""
    statuses: list[MailShardStatus] = []
    previous = None
    for index, observation in enumerate(observations):
        previous = compute_shard_status(observation, previous=previous, now=T0 + index * step)
        statuses.append(previous)
    return statuses


def condition(status: MailShardStatus, condition_type: str) -> Condition:
    found = status.condition(condition_type)
    assert found is not None, f"no {condition_type} condition"
    return found


def conditions(status: MailShardStatus) -> dict[str, tuple[ConditionStatus, str]]:
    return {c.type: (c.status, c.reason) for c in status.conditions}


@pytest.mark.parametrize(
    ("history", "phase", "expected"),
    [
        pytest.param(
            [NOTHING],
            ShardPhase.PENDING,
            {READY: (FALSE, "Pending"), RECONCILING: (TRUE, "Pending"), DEGRADED: (FALSE, "AsExpected")},
            id="nothing created yet",
        ),
        pytest.param(
            [NOTHING, STARTING, HALF_UP],
            ShardPhase.PROVISIONING,
            {READY: (FALSE, "Provisioning"), RECONCILING: (TRUE, "Provisioning"), DEGRADED: (FALSE, "AsExpected")},
            id="first build, one member up",
        ),
        pytest.param(
            [STARTING, BOTH_UP],
            ShardPhase.HEALTHY,
            {
                READY: (TRUE, "MembersReady"),
                REPLICATING: (TRUE, "InSync"),
                RECONCILING: (FALSE, "Reconciled"),
                STALLED: (FALSE, "AsExpected"),
                DEGRADED: (FALSE, "AsExpected"),
                FAILING_OVER: (FALSE, "AsExpected"),
            },
            id="both members ready",
        ),
        pytest.param(
            [BOTH_UP, REPLICA_REPLACED],
            ShardPhase.UPDATING,
            {READY: (FALSE, "Updating"), RECONCILING: (TRUE, "Updating"), DEGRADED: (FALSE, "AsExpected")},
            id="rollout replaces the replica",
        ),
        pytest.param(
            [BOTH_UP, REPLICA_LOST],
            ShardPhase.DEGRADED,
            {
                READY: (FALSE, "MemberUnavailable"),
                DEGRADED: (TRUE, "MemberUnavailable"),
                REPLICATING: (FALSE, "ReplicaUnavailable"),
                RECONCILING: (TRUE, "MemberUnavailable"),
            },
            id="healthy pair loses its replica",
        ),
        pytest.param(
            [BOTH_UP, REPLICA_REPLACED, observe(member(A, up=False), member(B, up=False, replacing=True))],
            ShardPhase.DEGRADED,
            {DEGRADED: (TRUE, "MemberUnavailable")},
            id="master lost during a rollout",
        ),
        pytest.param(
            [BOTH_UP, MASTER_LOST, observe(member(A, up=False), member(B), target_master=B)],
            ShardPhase.FAILING_OVER,
            {FAILING_OVER: (TRUE, "Promoting"), READY: (FALSE, "FailingOver"), RECONCILING: (TRUE, "FailingOver")},
            id="failover in progress",
        ),
        pytest.param(
            [BOTH_UP, observe(member(A, up=False), member(B), fenced=Problem("LagTooHigh", "replica is 90s behind"))],
            ShardPhase.FENCED,
            {STALLED: (TRUE, "LagTooHigh"), RECONCILING: (FALSE, "Stalled"), READY: (FALSE, "Fenced")},
            id="master fenced, waiting for a human",
        ),
        pytest.param(
            [BOTH_UP, observe(member(A), member(B), failure=Problem("ClusterNotFound", "no MailCluster demo"))],
            ShardPhase.FAILED,
            {STALLED: (TRUE, "ClusterNotFound"), RECONCILING: (FALSE, "Stalled"), READY: (TRUE, "MembersReady")},
            id="spec cannot be applied but the pair still serves",
        ),
        pytest.param(
            [BOTH_UP, observe(member(A), member(B, lag=95.0))],
            ShardPhase.HEALTHY,
            {REPLICATING: (FALSE, "LagTooHigh")},
            id="replica too far behind to promote",
        ),
        pytest.param(
            [observe(member(A), member(B, lag=None))],
            ShardPhase.HEALTHY,
            {REPLICATING: (UNKNOWN, "LagUnknown")},
            id="replica has not reported its lag",
        ),
        pytest.param(
            [observe(member(A), member(B), master=None)],
            ShardPhase.PROVISIONING,
            {READY: (FALSE, "Provisioning"), REPLICATING: (UNKNOWN, "MasterUnknown")},
            id="members up, master not chosen yet",
        ),
    ],
)
def test_phase_and_conditions(history: list[ShardObservation], phase: ShardPhase, expected: dict[str, object]) -> None:
    status = run(*history)[-1]
    assert status.phase is phase
    actual = conditions(status)
    assert {key: actual[key] for key in expected} == expected
    assert len(status.conditions) == 6


def test_never_degraded_during_a_normal_rollout() -> None:
    """Replica first, then a switchover, then the old master: Degraded stays False throughout."""
    rollout = [
        STARTING,
        BOTH_UP,
        REPLICA_REPLACED,
        observe(member(A), member(B, up=True, replacing=True)),
        BOTH_UP,
        observe(member(A), member(B), target_master=B),
        observe(member(A, up=False, replacing=True), member(B), master=B),
        observe(member(A), member(B), master=B),
    ]
    statuses = run(*rollout)
    assert all(condition(s, DEGRADED).status is FALSE for s in statuses)
    assert statuses[-1].phase is ShardPhase.HEALTHY
    assert statuses[-1].master == B
    assert statuses[-1].replica == A


def test_never_degraded_while_the_pair_is_first_built() -> None:
    statuses = run(NOTHING, STARTING, HALF_UP, observe(member(A, up=False), member(B)), BOTH_UP)
    assert [s.phase for s in statuses] == [
        ShardPhase.PENDING,
        ShardPhase.PROVISIONING,
        ShardPhase.PROVISIONING,
        ShardPhase.PROVISIONING,
        ShardPhase.HEALTHY,
    ]
    assert all(condition(s, DEGRADED).status is FALSE for s in statuses)


def test_a_spec_failure_does_not_make_a_healthy_pair_forget_it_was_healthy() -> None:
    healthy = run(BOTH_UP)[-1]
    failed = failed_status(healthy, generation=2, problem=Problem("InvalidSpec", "bad"), now=T0 + timedelta(seconds=5))
    assert failed.phase is ShardPhase.FAILED
    assert conditions(failed)[STALLED] == (TRUE, "InvalidSpec")
    after = compute_shard_status(REPLICA_LOST, previous=failed, now=T0 + timedelta(seconds=10))
    assert after.phase is ShardPhase.DEGRADED


def test_failed_status_of_a_new_shard() -> None:
    failed = failed_status(None, generation=1, problem=Problem("InvalidSpec", "bad size"), now=T0)
    assert failed.phase is ShardPhase.FAILED
    assert failed.observed_generation == 1
    assert conditions(failed) == {
        RECONCILING: (FALSE, "Stalled"),
        STALLED: (TRUE, "InvalidSpec"),
        READY: (FALSE, "Pending"),
    }
    # once the spec is fixed the pair is built normally, never Degraded
    assert compute_shard_status(HALF_UP, previous=failed, now=T0).phase is ShardPhase.PROVISIONING


def test_status_fields_describe_the_pair() -> None:
    status = run(observe(member(A), member(B, lag=2.5), mailboxes=42, failing_since=T0))[-1]
    assert (status.master, status.replica, status.lag_seconds) == (A, B, 2.5)
    assert status.mailboxes == 42
    assert status.failing_since == T0
    assert status.observed_generation == 1
    assert [(m.name, m.role, m.ready, m.node) for m in status.members] == [
        (A, MemberRole.MASTER, True, "node-a"),
        (B, MemberRole.REPLICA, True, "node-b"),
    ]
    assert all(c.observed_generation == 1 for c in status.conditions)


def test_transition_time_moves_only_when_the_status_flips() -> None:
    statuses = run(STARTING, HALF_UP, BOTH_UP, BOTH_UP, REPLICA_LOST, REPLICA_LOST)
    ready_times = [condition(s, READY).last_transition_time for s in statuses]
    # False, False (reason changed), True, True, False, False
    assert (
        ready_times
        == [T0, T0, T0 + timedelta(seconds=20), T0 + timedelta(seconds=20)] + [T0 + timedelta(seconds=40)] * 2
    )
    degraded_times = [condition(s, DEGRADED).last_transition_time for s in statuses]
    assert degraded_times == [T0] * 4 + [T0 + timedelta(seconds=40)] * 2


def test_condition_times_are_whole_utc_seconds() -> None:
    now = datetime(2025, 3, 1, 13, 0, 0, 999_999, tzinfo=timezone(timedelta(hours=2)))
    [condition] = set_condition(
        (), condition_type="Ready", status=TRUE, reason="R", message="", observed_generation=1, now=now
    )
    assert condition.last_transition_time == datetime(2025, 3, 1, 11, 0, 0, tzinfo=UTC)


def test_naive_clock_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        compute_shard_status(BOTH_UP, previous=None, now=datetime(2025, 1, 1))


def test_set_condition_keeps_the_order_and_other_conditions() -> None:
    first = set_condition((), condition_type="A", status=TRUE, reason="R", message="", observed_generation=1, now=T0)
    both = set_condition(first, condition_type="B", status=TRUE, reason="R", message="", observed_generation=1, now=T0)
    updated = set_condition(
        both, condition_type="A", status=FALSE, reason="S", message="m", observed_generation=2, now=T0
    )
    assert [c.type for c in updated] == ["A", "B"]
    assert updated[1] == both[1]


@pytest.mark.parametrize(
    "observation",
    [
        observe(member(A), member(B), master="inbox-1-c"),
        observe(member(A), member(B), target_master="elsewhere"),
        observe(member(A), member(A)),
    ],
)
def test_inconsistent_observations_are_refused(observation: ShardObservation) -> None:
    with pytest.raises(ValueError, match="member"):
        compute_shard_status(observation, previous=None, now=T0)


def test_status_is_written_through_its_wire_form_unchanged() -> None:
    status = run(BOTH_UP, REPLICA_LOST)[-1]
    wire = status.model_dump(mode="json", exclude_none=True)
    assert MailShardStatus.model_validate(wire) == status
    again = compute_shard_status(
        REPLICA_LOST, previous=MailShardStatus.model_validate(wire), now=T0 + timedelta(hours=1)
    )
    assert again.conditions == status.conditions


def test_observed_generation_comes_from_the_observation() -> None:
    moved = replace(BOTH_UP, generation=7)
    assert compute_shard_status(moved, previous=None, now=T0).observed_generation == 7


# --- after a failover: Degraded until the member left behind is back in sync ------------------------------


def _record(cause: FailoverCause | None, in_sync_at: datetime | None = None) -> FailoverRecord:
    return FailoverRecord(
        from_member=A,
        to_member=B,
        reason="test",
        started=T0,
        duration_seconds=4.0,
        cause=cause,
        replica_in_sync_at=in_sync_at,
    )


def _after(record: FailoverRecord, *, a_up: bool = True, lag: float | None = 3.0) -> ShardObservation:
    """The pair after a failover from A to B: A, back or not, as B's replica with `lag`."""
    old_master = replace(member(A, up=a_up), role=MemberRole.REPLICA, lag_seconds=lag if a_up else None)
    new_master = replace(member(B), role=MemberRole.MASTER, lag_seconds=None)
    return observe(old_master, new_master, master=B, last_failover=record)


UNPLANNED = _record(FailoverCause.MASTER_DOWN)
FAILING_OVER_UNPLANNED = observe(
    member(A, up=False),
    member(B),
    target_master=B,
    failover=FailoverProgressStatus.model_validate(
        {"from": A, "to": B, "planned": False, "started": T0, "reason": "down", "completedAt": T0}
    ),
)


@pytest.mark.parametrize(
    ("history", "phase", "expected"),
    [
        pytest.param(
            [BOTH_UP, FAILING_OVER_UNPLANNED],
            ShardPhase.FAILING_OVER,
            {DEGRADED: (TRUE, "FailingOver"), READY: (FALSE, "FailingOver"), STALLED: (FALSE, "AsExpected")},
            id="an unplanned failover under way is Degraded",
        ),
        pytest.param(
            [BOTH_UP, FAILING_OVER_UNPLANNED, _after(UNPLANNED, a_up=False)],
            ShardPhase.DEGRADED,
            {DEGRADED: (TRUE, "MemberUnavailable"), READY: (FALSE, "MemberUnavailable")},
            id="failover done, old master away",
        ),
        pytest.param(
            [BOTH_UP, FAILING_OVER_UNPLANNED, _after(UNPLANNED, a_up=False), _after(UNPLANNED)],
            ShardPhase.DEGRADED,
            {
                DEGRADED: (TRUE, "ReplicaCatchingUp"),
                READY: (FALSE, "ReplicaCatchingUp"),
                RECONCILING: (TRUE, "ReplicaCatchingUp"),
                STALLED: (FALSE, "AsExpected"),
                REPLICATING: (TRUE, "InSync"),
            },
            id="old master back as replica, not yet seen in sync",
        ),
        pytest.param(
            [BOTH_UP, _after(UNPLANNED, lag=0.0)],
            ShardPhase.DEGRADED,
            {DEGRADED: (TRUE, "ReplicaCatchingUp")},
            id="a lag of 0 is not in sync until the monitor has recorded it",
        ),
        pytest.param(
            [BOTH_UP, _after(UNPLANNED, lag=None)],
            ShardPhase.DEGRADED,
            {DEGRADED: (TRUE, "ReplicaCatchingUp"), REPLICATING: (UNKNOWN, "LagUnknown")},
            id="old master back, lag not reported yet",
        ),
        pytest.param(
            [BOTH_UP, _after(UNPLANNED), _after(_record(FailoverCause.MASTER_DOWN, T0 + timedelta(seconds=9)))],
            ShardPhase.HEALTHY,
            {
                DEGRADED: (FALSE, "AsExpected"),
                READY: (TRUE, "MembersReady"),
                RECONCILING: (FALSE, "Reconciled"),
                STALLED: (FALSE, "AsExpected"),
            },
            id="replica seen in sync: healthy",
        ),
        pytest.param(
            [BOTH_UP, _after(_record(FailoverCause.FORCED_PROMOTION))],
            ShardPhase.DEGRADED,
            {DEGRADED: (TRUE, "ReplicaCatchingUp")},
            id="a forced promotion catches up like a failover",
        ),
        pytest.param(
            [BOTH_UP, _after(_record(FailoverCause.SWITCHOVER))],
            ShardPhase.HEALTHY,
            {DEGRADED: (FALSE, "AsExpected"), READY: (TRUE, "MembersReady")},
            id="a planned switchover is never Degraded",
        ),
        pytest.param(
            [BOTH_UP, _after(_record(None))],
            ShardPhase.HEALTHY,
            {DEGRADED: (FALSE, "AsExpected")},
            id="a record from before causes were recorded",
        ),
    ],
)
def test_after_a_failover(history: list[ShardObservation], phase: ShardPhase, expected: dict[str, object]) -> None:
    status = run(*history)[-1]
    assert status.phase is phase
    actual = conditions(status)
    assert {key: actual[key] for key in expected} == expected


def test_the_catch_up_message_says_who_and_how_far_behind() -> None:
    ready = condition(run(BOTH_UP, _after(UNPLANNED, lag=3.0))[-1], READY)
    assert ready.message == (
        f"{B} is master since the failover from {A}; {A} has not been seen in sync with it yet as its replica (lag 3s)"
    )


def test_degraded_lasts_from_the_failover_to_the_catch_up_without_a_gap() -> None:
    caught_up = _record(FailoverCause.MASTER_DOWN, T0 + timedelta(seconds=30))
    statuses = run(
        BOTH_UP,
        FAILING_OVER_UNPLANNED,
        _after(UNPLANNED, a_up=False),
        _after(UNPLANNED, lag=None),
        _after(UNPLANNED, lag=2.0),
        _after(caught_up, lag=0.0),
    )
    degraded = [condition(s, DEGRADED) for s in statuses]
    assert [d.status for d in degraded] == [FALSE, TRUE, TRUE, TRUE, TRUE, FALSE]
    assert len({d.last_transition_time for d in degraded[1:5]}) == 1, "one Degraded episode, not several"
    assert all(condition(s, STALLED).status is FALSE for s in statuses)


def test_lag_jitter_after_the_catch_up_flips_no_condition() -> None:
    """Only the lag figures themselves follow the lag (lagSeconds, Replicating's message); no state flips."""
    caught_up = _record(FailoverCause.MASTER_DOWN, T0 + timedelta(seconds=5))
    settled = run(BOTH_UP, _after(UNPLANNED), _after(caught_up, lag=0.0))[-1]
    for lag in (1.0, 0.0, 2.0, None, 0.0):
        again = compute_shard_status(_after(caught_up, lag=lag), previous=settled, now=T0 + timedelta(minutes=5))
        assert again.phase is ShardPhase.HEALTHY
        for kind in (READY, DEGRADED, RECONCILING, STALLED, FAILING_OVER):
            assert condition(again, kind) == condition(settled, kind)


@pytest.mark.parametrize(
    ("shown", "measured", "expected"),
    [
        (None, None, None),
        (None, 0.4, 0.0),
        (None, 0.6, 1.0),
        (0.0, 0.6, 0.0),
        (0.0, 0.99, 0.0),
        (0.0, 1.0, 1.0),
        (1.0, 0.3, 1.0),
        (1.0, 0.0, 0.0),
        (1.0, 2.4, 2.0),
        (3.0, None, None),
        (0.0, 45.2, 45.0),
    ],
)
def test_the_lag_shown_moves_only_a_whole_step_away(
    shown: float | None, measured: float | None, expected: float | None
) -> None:
    assert lag_to_show(shown, measured) == expected


def test_lag_hovering_across_a_rounding_boundary_changes_nothing_shown() -> None:
    """Steady load: the measured lag flips around 0.5 s; the status would be written at every flip otherwise."""
    measurements = (0.4, 0.6, 0.45, 0.7, 0.3, 0.55, 0.9, 0.2, 0.6)
    shown: float | None = None
    values = []
    for measured in measurements:
        shown = lag_to_show(shown, measured)
        values.append(shown)
    assert set(values) == {0.0}
    assert all(abs(v - m) < 1.0 for v, m in zip(values, measurements, strict=True) if v is not None)
