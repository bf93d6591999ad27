"""An old master a failover fences is recorded as superseded, until it is re-seeded as a replica.

`status.superseded` reaches the members through the shard's contract
(`shard.json`), which an agent reads before it serves: a listed member whose
role file still says master starts fenced, whatever it can reach, which is
what matters for an old master that could not be told anything. These rows
say when `decide` adds a member to the list and when it takes it off, and
that a listed member found fenced is re-seeded (again) rather than left to a
human.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import pytest
from failover_support import MASTER, REPLICA, T0, A, Agent, B, Pair, ago, answering, shard, silent

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

OLD_MASTER = {
    "gone": lambda: silent(A, T0, role=MASTER, pod=PodState.ABSENT),
    "silent": lambda: silent(A, T0, role=MASTER),
    "fenced": lambda: answering(A, T0, role=MASTER, fenced=True, lag=None),
    "serving": lambda: answering(A, T0, role=MASTER, lag=None),
}


def _target() -> MemberFacts:
    return answering(B, T0, role=REPLICA, lag=0.0, lag_age=0.0)


def _under_way(completed: FailoverStep | None, superseded: tuple[str, ...] = ()) -> RecordedState:
    progress = FailoverProgress(
        source=A,
        target=B,
        planned=False,
        started=ago(T0, 5),
        reason="test",
        completed=completed,
        completed_at=ago(T0, 0.5),
    )
    return RecordedState(master=A, failing_since=ago(T0, 8), failover=progress, superseded=superseded)


@dataclass(frozen=True)
class Row:
    completed: FailoverStep
    old: str
    before: tuple[str, ...]
    step: FailoverStep
    member: str | None
    after: tuple[str, ...]

    @property
    def id(self) -> str:
        return f"{self.completed.value}-{self.old}-{'listed' if self.before else 'unlisted'}"


ROWS = [
    # last step done, old master, listed before, → step, addressed, listed after
    Row(FailoverStep.DRAIN, "gone", (), FailoverStep.FENCE_OLD_MASTER, None, (A,)),
    Row(FailoverStep.DRAIN, "silent", (), FailoverStep.FENCE_OLD_MASTER, None, (A,)),
    Row(FailoverStep.DRAIN, "serving", (), FailoverStep.FENCE_OLD_MASTER, A, (A,)),
    Row(FailoverStep.DRAIN, "fenced", (), FailoverStep.FENCE_OLD_MASTER, A, (A,)),
    Row(FailoverStep.DRAIN, "gone", (A,), FailoverStep.FENCE_OLD_MASTER, None, (A,)),
    Row(FailoverStep.FENCE_OLD_MASTER, "gone", (A,), FailoverStep.PROMOTE, B, (A,)),
    Row(FailoverStep.REPLAY_JOURNAL, "gone", (A,), FailoverStep.REJOIN_OLD_MASTER, None, (A,)),
    Row(FailoverStep.REPLAY_JOURNAL, "fenced", (A,), FailoverStep.REJOIN_OLD_MASTER, A, ()),
    Row(FailoverStep.REJOIN_OLD_MASTER, "gone", (A,), FailoverStep.RECORD, None, (A,)),
]


@pytest.mark.parametrize("row", ROWS, ids=lambda row: row.id)
def test_superseded_during_a_failover(row: Row) -> None:
    decision = decide(shard(OLD_MASTER[row.old](), _target(), recorded=_under_way(row.completed, row.before)))
    assert (decision.action, decision.step, decision.member) == (Action.CONTINUE_FAILOVER, row.step, row.member), (
        decision.reason
    )
    assert decision.record.superseded == row.after
    if row.after and not row.before and row.member is None:
        assert "starts fenced whenever it comes back" in decision.reason


def test_an_aborted_failover_takes_the_old_master_off_the_list() -> None:
    """Fenced in the contract while it could not be reached, it came back before the target was promoted."""
    target_gone = silent(B, T0, role=REPLICA, pod=PodState.ABSENT)
    decision = decide(
        shard(OLD_MASTER["fenced"](), target_gone, recorded=_under_way(FailoverStep.FENCE_OLD_MASTER, (A,)))
    )
    assert (decision.action, decision.member) == (Action.ABORT_FAILOVER, A)
    assert decision.record.superseded == ()


def test_a_returning_old_master_is_taken_off_the_list_when_it_is_reseeded() -> None:
    master = answering(B, T0, role=MASTER, lag=None)
    returned = answering(A, T0, role=MASTER, fenced=True, lag=None)
    decision = decide(shard(master, returned, recorded=RecordedState(master=B, superseded=(A,))))
    assert (decision.action, decision.member) == (Action.RESEED_REPLICA, A)
    assert decision.record.superseded == ()


def test_a_listed_member_stays_listed_while_it_does_not_answer() -> None:
    master = answering(B, T0, role=MASTER, lag=None)
    away = silent(A, T0, role=MASTER, pod=PodState.ABSENT)
    decision = decide(shard(master, away, recorded=RecordedState(master=B, superseded=(A,))))
    assert decision.action is Action.WAIT
    assert decision.record.superseded == (A,)


def test_a_dead_master_is_listed_through_the_failover_and_off_once_back_and_reseeded() -> None:
    pair = Pair(Agent(A, MASTER), Agent(B, REPLICA, lag=LagSample(0.5, ago(T0, 0.5))))
    pair.tick(0)
    pair.a.die()
    pair.run(1, 10)
    assert pair.record.master == B
    assert pair.record.superseded == (A,)
    assert pair.record.last_failover is not None

    # It comes back, fenced at start because the contract lists it (what the agent does), and is re-seeded.
    pair.a.pod, pair.a.answers, pair.a.fenced = PodState.READY, True, True
    pair.b.lag = None
    pair.a.lag = LagSample(0.0, T0 + timedelta(seconds=10))
    reseeded = [d for _, d in pair.run(10, 13) if d.action is Action.RESEED_REPLICA]
    assert [d.member for d in reseeded] == [A]
    assert not pair.record.superseded
    assert (pair.a.role, pair.a.fenced) == (REPLICA, False)


def test_a_listed_replica_left_fenced_by_a_failed_re_seed_is_re_seeded_again() -> None:
    """Demoted, then the re-seed failed (its master was out of reach): the operator's own fence, not a human's."""
    master = answering(B, T0, role=MASTER, lag=None)
    half_done = answering(A, T0, role=REPLICA, fenced=True, lag=None)
    listed = decide(shard(master, half_done, recorded=RecordedState(master=B, superseded=(A,))))
    assert (listed.action, listed.member) == (Action.RESEED_REPLICA, A), listed.reason
    assert not listed.record.superseded
    unlisted = decide(shard(master, half_done, recorded=RecordedState(master=B)))
    assert unlisted.action is Action.RAISE_ALARM  # a fence the operator did not set is a human's to lift
    assert "only a human unfences it" in unlisted.reason


def test_a_split_brain_repair_lists_the_member_it_fences() -> None:
    master = answering(A, T0, role=MASTER, lag=None)
    rogue = answering(B, T0, role=MASTER, lag=0.0)
    decision = decide(shard(master, rogue))
    assert (decision.action, decision.member) == (Action.REPAIR_SPLIT_BRAIN, B)
    assert decision.record.superseded == (B,)
