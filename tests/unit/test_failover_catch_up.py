"""When the member a failover left behind is back in sync: recorded once, by `decide`, as `replicaInSyncAt`.

The shard is Degraded from an unplanned failover until this is recorded
(`builders.status`), so the rule is a table over what can be known of the
replica: its report (fresh or not, its role, its fence) and when it was last
in sync, before or after the failover began.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

import pytest
from failover_support import MASTER, REPLICA, T0, UNKNOWN, A, B, ago, answering, silent

from mailshard.api.v1alpha1 import FailoverCause, FailoverRecord
from mailshard.failover import Action, Diagnosis, LagSample, MemberFacts, RecordedState, ShardFacts, decide
from mailshard.failover.policy import FailoverPolicy

pytestmark = pytest.mark.unit

POLICY = FailoverPolicy(enabled=True, delay_seconds=1, max_lag_seconds=30)
STARTED = ago(T0, 60)
SEEN = {"never": None, "before": ago(T0, 61), "after": ago(T0, 2)}
"""When the replica was last in sync: never known, before the failover began, after it began."""


def _last(in_sync_at: datetime | None = None, cause: FailoverCause = FailoverCause.MASTER_DOWN) -> FailoverRecord:
    return FailoverRecord(
        from_member=A,
        to_member=B,
        reason="master down",
        started=STARTED,
        duration_seconds=4.0,
        cause=cause,
        replica_in_sync_at=in_sync_at,
    )


REPLICA_STATES = {
    "replica": lambda t: answering(A, t, role=REPLICA, lag=0.0, lag_age=0.0),
    "fenced": lambda t: answering(A, t, role=REPLICA, fenced=True, lag=0.0, lag_age=0.0),
    "returned": lambda t: answering(A, t, role=MASTER, fenced=True, lag=None),
    "roleless": lambda t: answering(A, t, role=UNKNOWN, lag=None),
    "silent": lambda t: silent(A, t, role=REPLICA),
}
"""The old master A now: an unfenced replica; a fenced replica (mid re-seed); back claiming master, fenced;
without a role file; silent (its last report said replica)."""

ROWS = [
    # state,     last in sync, recorded already, expected
    ("replica", "after", False, "recorded"),
    ("replica", "before", False, "unset"),
    ("replica", "never", False, "unset"),
    ("replica", "after", True, "kept"),
    ("fenced", "after", False, "unset"),
    ("returned", "after", False, "unset"),
    ("roleless", "after", False, "unset"),
    ("silent", "after", False, "unset"),
]


def _facts(replica: MemberFacts, last: FailoverRecord) -> ShardFacts:
    master = answering(B, T0, role=MASTER, lag=None)
    return ShardFacts(
        members=(replica, master), recorded=RecordedState(master=B, last_failover=last), policy=POLICY, now=T0
    )


@pytest.mark.parametrize(("state", "seen", "already", "expected"), ROWS, ids=[f"{r[0]}-{r[1]}-{r[2]}" for r in ROWS])
def test_replica_in_sync_after_a_failover(state: str, seen: str, already: bool, expected: str) -> None:
    earlier = ago(T0, 30)
    last = _last(earlier if already else None)
    replica = replace(REPLICA_STATES[state](T0), last_in_sync=SEEN[seen])

    decision = decide(_facts(replica, last))

    assert decision.record.last_failover is not None
    noted = decision.record.last_failover.replica_in_sync_at
    assert noted == {"recorded": SEEN[seen], "unset": None, "kept": earlier}[expected]
    assert decision.record.master == B
    assert decision.record.failover is None
    if state == "replica":
        assert decision.action is Action.WAIT  # recording it is a status write, not an act


@pytest.mark.parametrize("cause", list(FailoverCause))
def test_it_is_recorded_whatever_the_cause(cause: FailoverCause) -> None:
    replica = replace(REPLICA_STATES["replica"](T0), last_in_sync=SEEN["after"])
    decision = decide(_facts(replica, _last(cause=cause)))
    assert decision.record.last_failover is not None
    assert decision.record.last_failover.replica_in_sync_at == SEEN["after"]


def test_once_recorded_lag_jitter_never_changes_the_record() -> None:
    replica = replace(REPLICA_STATES["replica"](T0), last_in_sync=SEEN["after"])
    first = decide(_facts(replica, _last()))
    assert first.diagnosis is Diagnosis.HEALTHY
    recorded = first.record
    for seconds, lag in enumerate((0.0, 1.2, 0.4, 2.0, 0.0, 0.9)):
        now = T0.replace(second=seconds + 1)
        later = replace(
            replica,
            last_heartbeat=ago(now, 0.5),
            lag=LagSample(lag, ago(now, 0.5)),
            last_in_sync=ago(now, 0.5) if lag == 0.0 else replica.last_in_sync,
        )
        facts = ShardFacts(
            members=(later, answering(B, now, role=MASTER, lag=None)), recorded=recorded, policy=POLICY, now=now
        )
        assert decide(facts).record == recorded
