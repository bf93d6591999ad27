"""A forced promotion: a human accepts the loss the operator would not accept, and only where that makes sense.

The request is the annotation `mailshard.io/force-promote=<member>`. The grid
below is written by hand from the rule in `mailshard.failover.decide`: it is
weighed only while the master does not serve or cannot be shown to (MasterDown,
BothDown, MasterFenced, Uncertain), waits while the master or the target only
missed a poll, and promotes a target that answers and is not fenced, whatever
its lag. Everything else is rejected with a reason (and the request removed).
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from failover_support import (
    DISABLED,
    MASTER,
    MASTER_PROFILES,
    POLICY,
    REPLICA,
    REPLICA_PROFILES,
    T0,
    A,
    Agent,
    B,
    Pair,
    ago,
    at,
    grid,
    shard,
)

from mailshard.api.v1alpha1 import FailoverCause
from mailshard.failover import (
    Action,
    FailoverStep,
    LagSample,
    MailboxUidNext,
    PodState,
    RecordedState,
    decide,
)

pytestmark = pytest.mark.unit

GRID = """
master \\ replica  sees blind laggy nolag blindnolag suspect silent gone fenced returned roleless rogue
up                 R    R     R     R     R          R       R      R    R      R        R        R
suspect            W    W     W     W     W          W       W      W    W      W        W        W
silent             F    F     F     F     F          W       R      R    R      R        F        F
gone               F    F     F     F     F          W       R      R    R      R        F        F
crashed            F    F     F     F     F          W       R      R    R      R        F        F
unready            F    F     F     F     F          W       R      R    R      R        F        F
fenced             F    F     F     F     F          W       R      R    R      R        F        F
disowns            F    F     F     F     F          W       R      R    R      R        F        F
"""
"""F: FORCE_PROMOTION of B. W: WAIT (the request is kept). R: REJECT_FORCED_PROMOTION. The master is A."""

ACTIONS = {"F": Action.FORCE_PROMOTION, "W": Action.WAIT, "R": Action.REJECT_FORCED_PROMOTION}
REJECTIONS = {
    "up": "is not down",
    "silent": "it is not up",
    "gone": "it is not up",
    "fenced": "unfence it first",
    "returned": "unfence it first",
}
"""Why a rejection is given, by the replica's profile (a serving master comes first: 'is not down')."""


CELLS = [(master, replica, cell) for (master, replica), cell in grid(GRID).items()]


def test_the_grid_covers_every_pair_of_profiles() -> None:
    assert {(m, r) for m, r, _ in CELLS} == {(m, r) for m in MASTER_PROFILES for r in REPLICA_PROFILES}


@pytest.mark.parametrize("enabled", [True, False], ids=["enabled", "disabled"])
@pytest.mark.parametrize(("master", "replica", "cell"), CELLS, ids=[f"{m}-{r}" for m, r, _ in CELLS])
def test_forced_promotion(master: str, replica: str, cell: str, enabled: bool) -> None:
    facts = shard(
        MASTER_PROFILES[master](A, T0),
        REPLICA_PROFILES[replica](B, T0),
        recorded=RecordedState(master=A, superseded=(B,)),
        policy=POLICY if enabled else DISABLED,
        force_promote_to=B,
    )

    decision = decide(facts)

    assert decision.action is ACTIONS[cell], decision.reason
    if cell == "F":
        progress = decision.record.failover
        assert progress is not None
        assert (progress.source, progress.target, progress.forced, progress.planned) == (A, B, True, False)
        assert progress.completed is None
        assert decision.member == B
        assert decision.route_to == A  # routing moves only with the steps that follow
        assert decision.record.superseded == ()  # a member being promoted is never told it was superseded
        assert "a human accepted losing" in progress.reason
    else:
        assert decision.record.failover is None
        assert decision.record.master == A
    if cell == "R":
        expected = REJECTIONS["up" if master == "up" else replica]
        assert expected in decision.reason


@pytest.mark.parametrize(
    ("wanted", "recorded", "phrase"),
    [
        (A, RecordedState(master=A), "inbox-1-a is already the master"),
        ("inbox-1-c", RecordedState(master=A), "not a member of this shard"),
        ("", RecordedState(master=A), "not a member of this shard"),
        (B, RecordedState(master=None), "no master yet"),
    ],
    ids=["the-master", "a-stranger", "empty", "no-master"],
)
def test_a_forced_promotion_that_names_nobody_promotable_is_rejected(
    wanted: str, recorded: RecordedState, phrase: str
) -> None:
    facts = shard(
        MASTER_PROFILES["gone"](A, T0), REPLICA_PROFILES["laggy"](B, T0), recorded=recorded, force_promote_to=wanted
    )
    decision = decide(facts)
    assert decision.action is Action.REJECT_FORCED_PROMOTION
    assert phrase in decision.reason
    assert decision.record.failover is None


def test_a_healthy_shard_is_told_to_use_a_switchover() -> None:
    facts = shard(MASTER_PROFILES["up"](A, T0), REPLICA_PROFILES["sees"](B, T0), force_promote_to=B)
    decision = decide(facts)
    assert decision.action is Action.REJECT_FORCED_PROMOTION
    assert "mailshard.io/switchover-to=inbox-1-b" in decision.reason


def test_the_messages_at_risk_are_what_the_master_last_reported_that_the_target_lacks() -> None:
    old = (MailboxUidNext("u/INBOX", 1, 120), MailboxUidNext("u/Sent", 1, 7))
    new = (MailboxUidNext("u/INBOX", 1, 100), MailboxUidNext("u/Sent", 1, 7))
    gone, laggy = MASTER_PROFILES["gone"](A, T0), REPLICA_PROFILES["laggy"](B, T0)
    assert gone.report is not None
    assert laggy.report is not None
    master = replace(gone, report=replace(gone.report, mailboxes=old))
    replica = replace(laggy, report=replace(laggy.report, mailboxes=new))
    decision = decide(shard(master, replica, force_promote_to=B))
    assert decision.action is Action.FORCE_PROMOTION
    assert decision.record.failover is not None
    assert decision.record.failover.messages_at_risk == 20
    assert "20 message(s)" in decision.reason


def test_a_replica_too_far_behind_raises_an_alarm_that_says_what_a_human_can_do_then_is_forced() -> None:
    """The whole story through the service loop: alarm, human decision, every step, recorded as forced."""
    pair = Pair(Agent(A, MASTER), Agent(B, REPLICA, lag=LagSample(45.0, at(-0.5))))
    pair.tick(0)
    pair.a.die()
    alarms = [d for _, d in pair.run(1, 12) if d.action is Action.RAISE_ALARM]
    assert alarms, "a dead master over a replica too far behind calls a human"
    assert "more than the 30s allowed" in alarms[-1].reason
    assert "bring inbox-1-a back" in alarms[-1].reason
    assert "mailshard.io/force-promote=inbox-1-b" in alarms[-1].reason
    assert pair.record.master == A

    pair.force_promote_to = B
    decisions = pair.tick(12)
    assert decisions[0].action is Action.FORCE_PROMOTION
    steps = [d.step for d in decisions if d.action is Action.CONTINUE_FAILOVER]
    assert steps == list(FailoverStep)
    assert pair.record.master == B
    last = pair.record.last_failover
    assert last is not None
    assert last.cause is FailoverCause.FORCED_PROMOTION
    assert (last.from_member, last.to_member) == (A, B)
    assert pair.force_promote_to is None
    assert pair.record.superseded == (A,), "the dead old master could not be told: the contract says it"


def test_a_forced_failover_runs_on_with_failover_disabled() -> None:
    pair = Pair(Agent(A, MASTER), Agent(B, REPLICA, lag=LagSample(45.0, at(-0.5))), policy=DISABLED)
    pair.tick(0)
    pair.a.die()
    pair.run(1, 8)
    assert pair.record.master == A
    pair.force_promote_to = B
    pair.tick(8)
    assert pair.record.master == B
    assert pair.record.last_failover is not None
    assert pair.record.last_failover.cause is FailoverCause.FORCED_PROMOTION


def test_while_the_master_only_missed_a_poll_the_request_waits_and_is_kept() -> None:
    pair = Pair(Agent(A, MASTER), Agent(B, REPLICA, lag=LagSample(45.0, ago(T0, 0.5))))
    pair.tick(0)
    pair.a.answers = False  # one missed poll: suspect, not down
    pair.force_promote_to = B
    decisions = pair.tick(1)
    assert decisions[-1].action is Action.WAIT
    assert pair.force_promote_to == B
    assert pair.a.pod is PodState.READY
