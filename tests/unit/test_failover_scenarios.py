"""Failover timelines: the decision loop run second by second against a simulated pair.

The transition table checks one decision at a time; these check what only a
sequence shows: that the delay is honoured across flapping, that a failover's
steps run once each and in order, that an operator restarted at any step
resumes it, that a switchover drains first, and that the default timing meets
the 5 s goal. `failover_support.Pair` plays the service layer.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from failover_support import MASTER, POLICY, REPLICA, UNKNOWN, A, Agent, B, Pair, at, healthy_pair

from mailshard.api.v1alpha1 import FailoverSettings, ReplicationSettings
from mailshard.failover import (
    STEP_ORDER,
    Action,
    Decision,
    Diagnosis,
    FailoverPolicy,
    FailoverStep,
    LagSample,
    MailboxUidNext,
    PodState,
    RecordedState,
    UidNextPlan,
    decide,
    messages_at_risk,
    next_step,
    uidnext_plan,
)
from mailshard.failover.policy import RECOMMENDED_DELAY_SECONDS
from mailshard.failover.steps import step_index

pytestmark = pytest.mark.unit


def actions(log: list[tuple[float, Decision]]) -> list[tuple[float, Action]]:
    return [(t, d.action) for t, d in log]


def first(log: list[tuple[float, Decision]], action: Action) -> float | None:
    return next((t for t, d in log if d.action is action), None)


# --- a master dies -----------------------------------------------------------------------------------


def test_a_dead_master_is_replaced_once_the_delay_has_passed_with_every_step_once_in_order() -> None:
    mail = (MailboxUidNext("alice/INBOX", 7, 120),)
    pair = healthy_pair()
    pair.a.mailboxes, pair.b.mailboxes = mail, (MailboxUidNext("alice/INBOX", 7, 117),)
    pair.tick(-1)
    pair.a.die()

    log = pair.run(0, 7)

    assert actions(log)[:6] == [(0, Action.MARK_FAILING)] + [(t, Action.WAIT) for t in range(1, 5)] + [
        (5, Action.START_FAILOVER)
    ]
    steps = [(d.step, d.member, d.route_to) for _, d in log if d.action is Action.CONTINUE_FAILOVER]
    assert steps == [
        (FailoverStep.FENCE_ROUTING, None, None),
        (FailoverStep.DRAIN, None, None),
        (FailoverStep.FENCE_OLD_MASTER, None, None),  # it cannot be told: the routing fence stands for it
        (FailoverStep.PROMOTE, B, None),
        (FailoverStep.RAISE_UIDNEXT, B, None),
        (FailoverStep.REPOINT_ROUTING, None, B),
        (FailoverStep.REPLAY_JOURNAL, B, B),
        (FailoverStep.REJOIN_OLD_MASTER, None, B),
        (FailoverStep.RECORD, None, B),
    ]
    raise_step = next(d for _, d in log if d.step is FailoverStep.RAISE_UIDNEXT)
    assert raise_step.uidnext_plan == UidNextPlan(floors={"alice/INBOX": 120 + POLICY.uid_gap})
    assert pair.record.master == B
    assert pair.record.failover is None
    assert pair.record.failing_since is None
    last = pair.record.last_failover
    assert last is not None
    assert (last.from_member, last.to_member, last.started) == (A, B, at(5))
    assert last.duration_seconds == 5.0  # down at 0, routed to B at 5: the rejoin after it is not outage
    assert last.messages_at_risk == 3
    assert "its pod is gone" in last.reason
    assert actions(log)[-1] == (6, Action.WAIT)  # B is master now, A is gone: the replica is down


def test_the_recorded_outage_ends_where_routing_reaches_the_new_master() -> None:
    """`lastFailover.durationSeconds` is how long the shard had no writable master: the journal replay and the
    old master's rejoin after the repoint (a re-seed can take minutes) are not part of it. Seen on real pods: a
    Cyrus failover served clients again after 6.5 s and recorded 30 s."""
    pair = healthy_pair()
    pair.tick(-1)
    pair.a.die()
    pair.pause_after = FailoverStep.REPOINT_ROUTING
    pair.run(0, 6)
    assert pair.record.failover is not None
    assert pair.record.failover.serving_since == at(5)

    pair.tick(40)  # the rest took 35 s

    last = pair.record.last_failover
    assert last is not None
    assert (pair.record.master, last.duration_seconds) == (B, 5.0)


@pytest.mark.parametrize("delay", [0, 1, 5, 20])
def test_promotion_comes_exactly_when_the_delay_has_passed(delay: int) -> None:
    pair = healthy_pair(policy=replace(POLICY, delay_seconds=delay))
    pair.tick(-1)
    pair.a.die()

    log = pair.run(0, delay + 2)

    assert first(log, Action.START_FAILOVER) == delay
    assert all(d.action is not Action.START_FAILOVER for t, d in log if t < delay)


def test_both_members_down_calls_a_human_and_the_replica_is_promoted_once_it_returns() -> None:
    pair = healthy_pair()
    pair.tick(-1)
    pair.a.die()
    pair.b.answers = False

    log = pair.run(0, 8)

    assert {d.diagnosis for _, d in log[2:]} == {Diagnosis.BOTH_DOWN}
    assert {d.action for _, d in log[2:]} == {Action.RAISE_ALARM}
    assert pair.record.failing_since == at(0)

    pair.b.answers = True
    assert pair.tick(8)[0].action is Action.START_FAILOVER  # down since t=0: the delay is long over


def test_a_replica_that_returns_long_after_the_master_died_is_bounded_by_when_the_master_stopped() -> None:
    """In sync a second before the master died, silent for 40 s: the dead master took nothing meanwhile, so the
    replica lacks at most that second (before, its lag was bounded at now: 41 s, and it was never promoted)."""
    pair = healthy_pair()
    pair.tick(-1)
    pair.a.die()
    pair.b.answers = False
    pair.run(0, 40)
    pair.b.answers = True

    decision = pair.tick(40)[0]

    assert decision.action is Action.START_FAILOVER, decision.reason
    assert decision.member == "inbox-1-b"


def test_a_replica_already_too_far_behind_when_the_master_died_is_not_promoted() -> None:
    pair = healthy_pair()
    pair.b.lag = LagSample(45.0, at(-1))
    pair.tick(-1)
    pair.a.die()

    log = pair.run(0, 60)

    assert Action.START_FAILOVER not in {d.action for _, d in log}
    assert "more than the 30s allowed" in log[-1][1].reason


def test_a_replica_whose_lag_was_never_known_is_never_promoted() -> None:
    pair = healthy_pair()
    pair.b.lag = None
    pair.tick(-1)
    pair.a.die()

    log = pair.run(0, 60)

    assert Action.START_FAILOVER not in {d.action for _, d in log}
    assert first(log, Action.RAISE_ALARM) == 5
    assert "lag is unknown" in log[-1][1].reason


def test_with_failover_disabled_a_dead_master_is_only_reported_until_it_is_enabled() -> None:
    pair = healthy_pair(policy=replace(POLICY, enabled=False))
    pair.tick(-1)
    pair.a.die()

    log = pair.run(0, 10)

    assert {d.action for _, d in log} == {Action.RAISE_ALARM}
    assert "automatic failover is disabled" in log[-1][1].reason
    assert pair.record.failing_since == at(0)  # reported from the first sight
    pair.policy = POLICY
    assert pair.tick(10)[0].action is Action.START_FAILOVER


# --- flapping ------------------------------------------------------------------------------------------


def flap(pair: Pair, schedule: str) -> list[tuple[float, Decision]]:
    """Run one second per character: `d` the master is down (pod gone), `u` it is up."""
    for second, state in enumerate(schedule):
        if state == "d":
            pair.a.die()
        else:
            pair.a.pod, pair.a.answers = PodState.READY, True
        pair.tick(second)
    return pair.log


def test_a_master_that_flaps_within_the_delay_is_replaced_at_the_delay_after_its_first_fall() -> None:
    log = flap(healthy_pair(), "ddudddd")
    assert actions(log)[:5] == [
        (0, Action.MARK_FAILING),
        (1, Action.WAIT),
        (2, Action.WAIT),  # back: still failing until it has stayed up for the delay
        (3, Action.WAIT),  # down again: failingSince is still t=0, not reset
        (4, Action.WAIT),
    ]
    assert first(log, Action.START_FAILOVER) == 5


def test_a_master_that_is_down_more_than_up_but_never_for_a_whole_delay_is_still_replaced() -> None:
    log = flap(healthy_pair(), "ddduddduddd")  # down 3 s, up 1 s: a reset on every return would never promote
    assert first(log, Action.START_FAILOVER) == 5


def test_a_master_that_stays_back_for_the_delay_is_forgiven_and_its_next_fall_waits_a_whole_delay() -> None:
    log = flap(healthy_pair(), "duuuuuu" + "d" * 6)
    assert first(log, Action.CLEAR_FAILING) == 6  # back at 1, up for 5 s
    assert first(log, Action.MARK_FAILING) == 0
    assert [t for t, d in log if d.action is Action.MARK_FAILING] == [0, 7]
    assert first(log, Action.START_FAILOVER) == 12  # 7 + 5, not at once


def test_an_up_phase_at_the_promotion_time_promotes_nobody() -> None:
    log = flap(healthy_pair(), "dddddu")
    assert first(log, Action.START_FAILOVER) is None
    assert log[-1][1].action is Action.WAIT


# --- uncertainty --------------------------------------------------------------------------------------


def test_a_master_only_the_operator_cannot_reach_is_never_replaced_and_a_human_is_called() -> None:
    pair = healthy_pair()
    pair.tick(-1)
    pair.a.answers = False  # its pod stays Ready and the replica still hears it

    log = pair.run(0, 45)

    assert Action.START_FAILOVER not in {d.action for _, d in log}
    uncertain_from = next(t for t, d in log if d.diagnosis is Diagnosis.UNCERTAIN)
    assert uncertain_from == 1  # two failed polls, 2 s of silence
    assert first(log, Action.RAISE_ALARM) == uncertain_from + 30

    pair.b.peer_silence = 5.0  # now the replica has lost it too: confirmed, and the delay starts now
    pair.b.lag = LagSample(0.5, at(44.5))
    log = pair.run(45, 51)
    assert actions(log)[0] == (45, Action.MARK_FAILING)
    assert first(log, Action.START_FAILOVER) == 50


# --- the failover steps, interrupted ----------------------------------------------------------------


def started_failover(**hooks: FailoverStep) -> Pair:
    """A master dead since t=0 and the failover about to start at t=5 (the delay), with `Pair` hooks set."""
    pair = healthy_pair()
    pair.a.mailboxes = (MailboxUidNext("bob/INBOX", 3, 50),)
    pair.b.mailboxes = (MailboxUidNext("bob/INBOX", 3, 48),)
    pair.tick(-1)
    pair.a.die()
    pair.run(0, 5)
    for name, step in hooks.items():
        setattr(pair, name, step)
    return pair


def continued(log: list[tuple[float, Decision]]) -> list[Decision]:
    return [d for _, d in log if d.action is Action.CONTINUE_FAILOVER]


@pytest.mark.parametrize("completed", [None, *STEP_ORDER[:-1]], ids=lambda s: f"after-{s or 'start'}")
def test_a_restarted_operator_resumes_the_failover_at_the_step_after_the_last_recorded(
    completed: FailoverStep | None,
) -> None:
    reference = started_failover()
    reference.tick(5)
    start = next(d for _, d in reference.log if d.action is Action.START_FAILOVER)
    records = {None: start.record} | {d.step: d.record for d in continued(reference.log)}
    expected = next(d for d in continued(reference.log) if d.step is next_step(completed))
    promoted = step_index(completed) >= step_index(FailoverStep.PROMOTE)

    # After a restart only the status survives: no report of the dead master, no lag sample of the target.
    restarted = Pair(
        Agent(A, MASTER, pod=PodState.ABSENT, answers=False, failed_polls=3),
        Agent(B, MASTER if promoted else REPLICA, mailboxes=reference.b.mailboxes),
        record=records[completed],
    )
    restarted.b.poll(at(60))
    decision = decide(restarted.facts(at(60)))

    assert (decision.action, decision.step, decision.member, decision.route_to) == (
        expected.action,
        expected.step,
        expected.member,
        expected.route_to,
    )
    if decision.step is FailoverStep.RAISE_UIDNEXT:
        assert expected.uidnext_plan is not None
        assert decision.uidnext_plan is not None
        assert expected.uidnext_plan.floors == {"bob/INBOX": 50 + POLICY.uid_gap}
        assert decision.uidnext_plan.floors == {"bob/INBOX": 48 + POLICY.uid_gap}  # best known after the restart


def switchover_steps(pair: Pair) -> list[tuple[FailoverStep | None, str | None]]:
    """Run a switchover from A to B to its end; the target catches up, and says so, from t=1 on."""
    pair.tick(-1)
    pair.switchover_to = B
    for second in range(6):
        if second >= 1:
            pair.b.lag = LagSample(0.0, at(second), in_sync=True)
            if pair.b.role is REPLICA:
                pair.b.mailboxes = pair.a.mailboxes
        pair.tick(second)
    return [(d.step, d.member) for d in continued(pair.log)]


SWITCHOVER = [
    (FailoverStep.FENCE_ROUTING, None),
    (FailoverStep.DRAIN, None),
    (FailoverStep.FENCE_OLD_MASTER, A),
    (FailoverStep.PROMOTE, B),
    (FailoverStep.RAISE_UIDNEXT, B),
    (FailoverStep.REPOINT_ROUTING, None),
    (FailoverStep.REPLAY_JOURNAL, B),
    (FailoverStep.REJOIN_OLD_MASTER, A),
    (FailoverStep.RECORD, None),
]


@pytest.mark.parametrize("step", STEP_ORDER, ids=str)
def test_a_step_carried_out_but_not_recorded_is_run_again_and_the_switchover_still_ends_well(
    step: FailoverStep,
) -> None:
    pair = healthy_pair()
    pair.crash_after = step

    steps = switchover_steps(pair)

    position = [s for s, _ in SWITCHOVER].index(step)
    assert steps == SWITCHOVER[: position + 1] + SWITCHOVER[position:]
    assert pair.record.master == B
    assert pair.record.failover is None
    assert (pair.a.role, pair.a.fenced, pair.b.role, pair.b.fenced) == (REPLICA, False, MASTER, False)


def test_an_old_master_that_comes_back_claiming_master_mid_failover_is_fenced_again() -> None:
    pair = started_failover(pause_after=FailoverStep.FENCE_OLD_MASTER)
    pair.tick(5)
    assert pair.record.failover is not None
    paused = pair.record
    pair.a.pod, pair.a.answers = PodState.READY, True  # restarted unfenced, its role file still says master

    decisions = pair.tick(6)

    assert (decisions[0].action, decisions[0].step, decisions[0].member) == (
        Action.CONTINUE_FAILOVER,
        FailoverStep.FENCE_OLD_MASTER,
        A,
    )
    assert decisions[0].record == paused  # fencing again is not progress
    assert [d.step for d in decisions[1:]] == [
        FailoverStep.PROMOTE,
        FailoverStep.RAISE_UIDNEXT,
        FailoverStep.REPOINT_ROUTING,
        FailoverStep.REPLAY_JOURNAL,
        FailoverStep.REJOIN_OLD_MASTER,
        FailoverStep.RECORD,
        None,
    ]
    assert all(d.route_to != A for d in decisions)
    assert pair.record.master == B
    assert (pair.a.role, pair.a.fenced) == (REPLICA, False)  # it rejoined as a replica


def test_a_target_lost_before_promotion_while_the_old_master_is_back_aborts_to_the_old_master() -> None:
    pair = started_failover(pause_after=FailoverStep.FENCE_ROUTING)
    pair.tick(5)
    pair.b.die()
    pair.a.pod, pair.a.answers = PodState.READY, True

    decision = pair.tick(6)[0]

    assert (decision.action, decision.member, decision.route_to) == (Action.ABORT_FAILOVER, A, A)
    assert decision.record.failover is None
    assert decision.record.master == A


# --- split brain, reseeding, electing ------------------------------------------------------------------


def test_split_brain_fences_the_member_that_is_not_the_recorded_master_then_reseeds_it() -> None:
    pair = healthy_pair()
    pair.b.role = MASTER

    log = pair.run(0, 2)

    assert [(d.action, d.member, d.route_to) for _, d in log[:3]] == [
        (Action.REPAIR_SPLIT_BRAIN, B, A),
        (Action.RESEED_REPLICA, B, A),
        (Action.WAIT, None, A),
    ]
    assert (pair.b.role, pair.b.fenced) == (REPLICA, False)
    assert log[-1][1].diagnosis is Diagnosis.HEALTHY


def test_a_new_pair_elects_the_member_that_claims_master_once_both_answer() -> None:
    pair = Pair(Agent(A, REPLICA), Agent(B, MASTER), record=RecordedState(master=None))
    pair.b.answers = False
    assert pair.tick(0)[0].action is Action.WAIT
    pair.b.answers = True

    decision = pair.tick(1)[0]

    assert (decision.action, decision.member, decision.route_to, decision.record.master) == (
        Action.ELECT_MASTER,
        B,
        B,
        B,
    )


def test_without_a_claimant_the_member_with_more_mail_is_elected() -> None:
    a = Agent(A, UNKNOWN, mailboxes=(MailboxUidNext("u/INBOX", 1, 10),))
    b = Agent(B, UNKNOWN, mailboxes=(MailboxUidNext("u/INBOX", 1, 12),))
    decision = Pair(a, b, record=RecordedState(master=None)).tick(0)[0]
    assert (decision.action, decision.member) == (Action.ELECT_MASTER, B)


# --- planned switchover --------------------------------------------------------------------------------


def test_a_switchover_drains_the_master_then_swaps_the_roles() -> None:
    pair = healthy_pair()
    pair.a.mailboxes, pair.b.mailboxes = (MailboxUidNext("c/INBOX", 9, 30),), (MailboxUidNext("c/INBOX", 9, 29),)

    steps = switchover_steps(pair)

    assert [(d.action, d.step) for t, d in pair.log if t == 0] == [
        (Action.DRAIN_THEN_SWITCH, None),
        (Action.CONTINUE_FAILOVER, FailoverStep.FENCE_ROUTING),
        (Action.WAIT, None),  # caught up counts only from one poll after the fence
    ]
    assert steps == SWITCHOVER
    assert first(pair.log, Action.CONTINUE_FAILOVER) == 0
    assert pair.record.master == B
    last = pair.record.last_failover
    assert last is not None
    assert (last.reason, last.duration_seconds) == ("switchover to inbox-1-b requested", 1.0)
    assert (pair.a.role, pair.a.fenced, pair.b.role) == (REPLICA, False, MASTER)
    plan = next(d.uidnext_plan for _, d in pair.log if d.step is FailoverStep.RAISE_UIDNEXT)
    assert plan == UidNextPlan(floors={"c/INBOX": 30 + POLICY.uid_gap})


@pytest.mark.parametrize(
    ("word", "holds"),
    [
        # First seen behind, the lag (a lower bound) is 0 for a moment: not in sync all the same.
        (LagSample(0.0, at(0), in_sync=False), (MailboxUidNext("c/INBOX", 9, 30),)),
        # In sync by its own word, yet its summary lacks what the master holds: the summaries win.
        (LagSample(0.0, at(0), in_sync=True), (MailboxUidNext("c/INBOX", 9, 12),)),
        # A replica back on an empty volume.
        (LagSample(0.0, at(0), in_sync=True), ()),
        (LagSample(0.0, at(0), in_sync=True), (MailboxUidNext("c/INBOX", 4, 30),)),
    ],
    ids=["lag-0-not-in-sync", "summary-behind", "empty", "other-uidvalidity"],
)
def test_a_switchover_never_promotes_a_target_that_lacks_mail(
    word: LagSample, holds: tuple[MailboxUidNext, ...]
) -> None:
    pair = healthy_pair()
    pair.a.mailboxes = (MailboxUidNext("c/INBOX", 9, 30),)
    pair.tick(-1)
    pair.switchover_to = B
    pair.b.lag, pair.b.mailboxes = word, holds

    log = pair.run(0, 32)

    assert all(d.step not in (FailoverStep.DRAIN, FailoverStep.PROMOTE) for _, d in log)
    assert first(log, Action.ABORT_FAILOVER) == 30
    assert (pair.record.master, pair.b.role) == (A, REPLICA)


def test_a_switchover_whose_target_never_catches_up_is_abandoned_and_the_master_kept() -> None:
    pair = healthy_pair()
    pair.tick(-1)
    pair.switchover_to = B
    pair.b.lag = LagSample(3.0, at(0))

    log = pair.run(0, 32)

    assert first(log, Action.ABORT_FAILOVER) == 30
    assert pair.record.failover is None
    assert pair.record.master == A
    assert log[-1][1].route_to == A


# --- the timing budget ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("delay", "within"), [(RECOMMENDED_DELAY_SECONDS, 3.5), (5, 7.5)])
def test_kill_to_promotion_with_the_default_detection_timing(delay: int, within: float) -> None:
    """A master killed at t=0.3, between polls, its pod still looking Ready: the slowest detection path."""
    policy = FailoverPolicy(enabled=True, delay_seconds=delay, max_lag_seconds=30)
    pair = healthy_pair(policy=policy)
    pair.tick(0)
    pair.a.answers = False
    for second in range(1, 12):
        pair.b.peer_silence = second - 0.0  # the replica last heard the master at its poll at t=0
        pair.b.lag = LagSample(0.5, at(0))
        for decision in pair.tick(second):
            if decision.action is Action.START_FAILOVER:
                assert second - 0.3 <= within
                return
    raise AssertionError("never promoted")


# --- the pure helpers ----------------------------------------------------------------------------------


def test_the_step_order_is_walked_once_from_start_to_record() -> None:
    walked, step = [], next_step(None)
    while step is not None:
        walked.append(step)
        step = next_step(step)
    assert tuple(walked) == STEP_ORDER
    assert next_step(FailoverStep.RECORD) is None


def test_messages_at_risk_counts_what_the_old_master_had_that_the_target_lacks() -> None:
    old = (MailboxUidNext("a/INBOX", 1, 10), MailboxUidNext("a/Sent", 2, 5), MailboxUidNext("b/INBOX", 1, 4))
    new = (MailboxUidNext("a/INBOX", 1, 8), MailboxUidNext("a/Sent", 3, 1))
    assert messages_at_risk(old, new) == 2 + 0 + 3  # a/Sent was recreated (new UIDVALIDITY): not comparable


def test_uidnext_floors_clear_every_uid_either_side_may_have_assigned() -> None:
    target = (MailboxUidNext("a/INBOX", 1, 8), MailboxUidNext("a/Sent", 3, 1), MailboxUidNext("a/Junk", 1, 2))
    old = (MailboxUidNext("a/INBOX", 1, 10), MailboxUidNext("a/Sent", 2, 50))
    assert uidnext_plan(target, old, gap=100).floors == {"a/INBOX": 110, "a/Sent": 101, "a/Junk": 102}
    assert uidnext_plan(target, None, gap=100).floors == {"a/INBOX": 108, "a/Sent": 101, "a/Junk": 102}


def test_the_policy_takes_the_shards_resolved_settings_and_the_default_detection_timing() -> None:
    policy = FailoverPolicy.from_settings(
        FailoverSettings(enabled=False, delay_seconds=7), ReplicationSettings(max_lag_seconds=12)
    )
    assert (policy.enabled, policy.delay_seconds, policy.max_lag_seconds) == (False, 7, 12)
    assert (policy.poll_interval_seconds, policy.missed_polls, policy.heartbeat_timeout_seconds) == (1.0, 2, 2.0)
    assert policy.recovery_window_seconds == 7
    with pytest.raises(ValueError, match="must be positive"):
        FailoverPolicy(enabled=True, delay_seconds=1, max_lag_seconds=30, missed_polls=0)


def test_the_spec_default_delay_is_the_one_the_detection_budget_calls_for() -> None:
    """`failover.policy` justifies 1 s; a shard that sets nothing must get exactly that."""
    assert FailoverSettings().delay_seconds == RECOMMENDED_DELAY_SECONDS == 1
