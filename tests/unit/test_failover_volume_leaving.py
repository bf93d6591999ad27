"""A member whose mail claim is being deleted is never promoted, though it still answers with all its mail.

Its pod comes back on a new, empty volume: promoted, it would serve an empty store, and the old master would
then be re-seeded from it. Seen on the real node: a switchover asked for right after a replica's claim was
deleted was accepted while that replica still ran on its old volume.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest
from failover_support import MASTER, POLICY, REPLICA, T0, A, B, ago, answering, shard, silent

from mailshard.failover import (
    Action,
    FailoverProgress,
    FailoverStep,
    LagSample,
    MemberFacts,
    PodState,
    RecordedState,
    decide,
)

pytestmark = pytest.mark.unit


def leaving_replica() -> MemberFacts:
    return replace(answering(B, T0, role=REPLICA, lag=0.0), volume_leaving=True)


def test_a_switchover_to_a_member_whose_claim_is_being_deleted_is_rejected() -> None:
    decision = decide(shard(answering(A, T0, role=MASTER, lag=None), leaving_replica(), switchover_to=B))
    assert decision.action is Action.REJECT_SWITCHOVER, decision.reason
    assert "mail claim is being deleted" in decision.reason


@pytest.mark.parametrize("done", [FailoverStep.FENCE_ROUTING, FailoverStep.DRAIN, FailoverStep.FENCE_OLD_MASTER])
def test_a_switchover_under_way_is_abandoned_when_the_target_claim_starts_being_deleted(done: FailoverStep) -> None:
    progress = FailoverProgress(
        source=A, target=B, planned=True, started=ago(T0, 3), reason="test", completed=done, completed_at=ago(T0, 2)
    )
    recorded = RecordedState(master=A, failover=progress)
    target = replace(leaving_replica(), lag=LagSample(0.0, ago(T0, 0.5), in_sync=True))
    fenced = done is FailoverStep.FENCE_OLD_MASTER
    decision = decide(shard(answering(A, T0, role=MASTER, lag=None, fenced=fenced), target, recorded=recorded))
    assert (decision.action, decision.route_to) == (Action.ABORT_FAILOVER, A), decision.reason
    assert "mail claim is being deleted" in decision.reason


def test_a_dead_master_is_not_replaced_by_a_replica_whose_claim_is_being_deleted() -> None:
    master = silent(A, T0, role=MASTER, pod=PodState.ABSENT)
    recorded = RecordedState(master=A, failing_since=T0 - timedelta(seconds=POLICY.delay_seconds + 5))
    decision = decide(shard(master, leaving_replica(), recorded=recorded))
    assert decision.action not in (Action.START_FAILOVER, Action.FORCE_PROMOTION), decision.reason
    assert decision.record.failover is None
    assert "mail claim is being deleted" in decision.reason
