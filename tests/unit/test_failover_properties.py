"""Failover properties that must hold for every input, not just the ones in the tables.

Hypothesis draws arbitrary shards: any pod state, heartbeat age, failed-poll
count, claimed role, fence, lag sample, recorded timers, failover in progress
at any step, spec flags, switchover and forced-promotion requests, superseded
members. Over all of them: one action with a reason; UNCERTAIN never promotes
unless a human forced it; a promotion names the one other member, which is up
and unfenced, and, unless forced, within the lag bound and only after the
delay; disabled never acts unless a human asked; routing never names a member
being fenced; a failover's steps only move forward; node readiness changes
nothing; a member being promoted, or kept as master, is never listed as
superseded. A last property runs random flapping timelines through the
service loop.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import pytest
from failover_support import MASTER_PROFILES, POLICY, REPLICA_PROFILES, T0, A, B, Profile, healthy_pair
from hypothesis import given, settings
from hypothesis import strategies as st

from mailshard.api import MemberRole
from mailshard.failover import (
    PROMOTING,
    STEP_ORDER,
    Action,
    AgentReport,
    Diagnosis,
    FailoverPolicy,
    FailoverProgress,
    FailoverStep,
    LagSample,
    MailboxUidNext,
    MemberFacts,
    PodState,
    RecordedState,
    ShardFacts,
    decide,
    diagnose,
    lag_bound,
    next_step,
    promotion_refusal,
)
from mailshard.failover.steps import step_index

pytestmark = pytest.mark.unit

SETTINGS = settings(max_examples=400, database=None, deadline=None)


def _ago(seconds: float) -> datetime:
    return T0 - timedelta(seconds=seconds)


ages = st.floats(min_value=0, max_value=90, allow_nan=False)
maybe_age = st.none() | ages
mailboxes = st.lists(
    st.builds(
        MailboxUidNext,
        mailbox=st.sampled_from(["u/INBOX", "u/Sent", "v/INBOX"]),
        uidvalidity=st.integers(1, 3),
        uidnext=st.integers(1, 500),
    ),
    max_size=3,
    unique_by=lambda row: row.mailbox,
).map(tuple)
reports = st.builds(
    AgentReport,
    role=st.sampled_from(MemberRole),
    fenced=st.booleans(),
    daemon_up=st.booleans(),
    peer_silence_seconds=st.none() | st.floats(min_value=0, max_value=10),
    mailboxes=st.none() | mailboxes,
)


@st.composite
def arbitrary_members(draw: st.DrawFn, name: str) -> MemberFacts:
    heard = draw(st.booleans())
    lag_age = draw(maybe_age)
    in_sync_age = draw(maybe_age)
    return MemberFacts(
        name=name,
        pod=draw(st.sampled_from(PodState)),
        node_ready=draw(st.sampled_from([None, True, False])),
        last_heartbeat=_ago(draw(st.floats(min_value=0, max_value=10))) if heard else None,
        failed_polls=draw(st.integers(0, 5)),
        report=draw(reports) if heard else None,
        lag=LagSample(draw(st.floats(min_value=0, max_value=60)), _ago(lag_age)) if lag_age is not None else None,
        last_in_sync=_ago(in_sync_age) if in_sync_age is not None else None,
    )


@st.composite
def profiled_members(draw: st.DrawFn, name: str, profiles: list[Profile]) -> MemberFacts:
    """A named profile (see `failover_support`), its lag and its view of the peer sometimes redrawn."""
    member = draw(st.sampled_from(profiles))(name, T0)
    if draw(st.integers(0, 3)) == 0:
        lag_age = draw(maybe_age)
        seconds = draw(st.floats(min_value=0, max_value=60))
        member = replace(member, lag=LagSample(seconds, _ago(lag_age)) if lag_age is not None else None)
    if member.report is not None and draw(st.booleans()):
        silence = draw(st.none() | st.floats(min_value=0, max_value=10))
        member = replace(member, report=replace(member.report, peer_silence_seconds=silence))
    return member


def members(name: str, master: str | None) -> st.SearchStrategy[MemberFacts]:
    """Arbitrary or realistic for its role: arbitrary facts alone almost never make a promotable pair."""
    if master is None:
        profiles = [*MASTER_PROFILES.values(), *REPLICA_PROFILES.values()]
    else:
        profiles = list((MASTER_PROFILES if name == master else REPLICA_PROFILES).values())
    realistic = profiled_members(name, profiles)
    return st.one_of(arbitrary_members(name), realistic, realistic)


@st.composite
def records(draw: st.DrawFn) -> RecordedState:
    master = draw(st.one_of(st.just(A), st.sampled_from([None, A, B])))
    failover = None
    if master is not None and draw(st.booleans()):
        step_age = draw(st.floats(min_value=0, max_value=60))
        failover = FailoverProgress(
            source=master,
            target=B if master == A else A,
            planned=(planned := draw(st.booleans())),
            forced=not planned and draw(st.booleans()),
            started=_ago(step_age + draw(st.floats(min_value=0, max_value=10))),
            reason="drawn",
            completed=draw(st.sampled_from([None, *STEP_ORDER[:-1]])),
            completed_at=_ago(step_age),
            messages_at_risk=draw(st.none() | st.integers(0, 100)),
        )
    return RecordedState(
        master=master,
        failing_since=_ago(draw(st.sampled_from([0.0, 0.5, 4.0, 6.0, 40.0]) | ages)) if draw(st.booleans()) else None,
        recovering_since=_ago(draw(ages)) if draw(st.booleans()) else None,
        uncertain_since=_ago(draw(ages)) if draw(st.booleans()) else None,
        failover=failover,
        superseded=tuple(draw(st.lists(st.sampled_from([A, B]), max_size=2, unique=True))),
    )


policies = st.builds(
    FailoverPolicy,
    enabled=st.booleans(),
    delay_seconds=st.sampled_from([0, 1, 5, 30]),
    max_lag_seconds=st.sampled_from([5, 30]),
)


@st.composite
def near_promotion(draw: st.DrawFn) -> ShardFacts:
    """Shards at the edge of a promotion: the master down or not, the replica close to the lag limit,
    failingSince on either side of the delay, or a switchover asked of a healthy pair."""
    master = draw(st.sampled_from(["gone", "crashed", "unready", "silent", "up", "up"]))
    replica = draw(st.sampled_from(["sees", "blind", "rogue", "suspect", "laggy", "fenced"]))
    policy = draw(policies)
    lag = LagSample(draw(st.floats(min_value=0, max_value=policy.max_lag_seconds)), _ago(draw(ages)))
    failing = draw(st.none() | st.floats(min_value=0, max_value=2 * policy.delay_seconds + 2))
    return ShardFacts(
        members=(
            MASTER_PROFILES[master](A, T0),
            replace(REPLICA_PROFILES[replica](B, T0), lag=lag if draw(st.booleans()) else None),
        ),
        recorded=RecordedState(master=A, failing_since=_ago(failing) if failing is not None else None),
        policy=policy,
        now=T0,
        switchover_to=draw(st.sampled_from([None, A, B, B, "inbox-1-c"])),
        force_promote_to=draw(st.sampled_from([None, None, None, B, A, "inbox-1-c"])),
    )


def shards() -> st.SearchStrategy[ShardFacts]:
    return st.one_of(anything(), near_promotion())


@st.composite
def anything(draw: st.DrawFn) -> ShardFacts:
    recorded = draw(records())
    return ShardFacts(
        members=(draw(members(A, recorded.master)), draw(members(B, recorded.master))),
        recorded=recorded,
        policy=draw(policies),
        now=T0,
        switchover_to=draw(st.one_of(st.none(), st.none(), st.sampled_from([A, B, "inbox-1-c", ""]))),
        force_promote_to=draw(st.one_of(st.none(), st.none(), st.none(), st.sampled_from([A, B, "inbox-1-c"]))),
    )


@SETTINGS
@given(facts=shards())
def test_every_shard_gets_one_action_with_a_reason_and_the_same_one_every_time(facts: ShardFacts) -> None:
    decision = decide(facts)
    assert isinstance(decision.action, Action)
    assert decision.reason
    assert 0 <= decision.recheck_after <= facts.policy.poll_interval_seconds
    assert decide(facts) == decision
    assert decision.diagnosis is diagnose(facts).diagnosis


@SETTINGS
@given(facts=shards())
def test_uncertain_never_promotes_nor_acts_unless_a_human_forces_it(facts: ShardFacts) -> None:
    decision = decide(facts)
    if decision.diagnosis is Diagnosis.UNCERTAIN and facts.force_promote_to is None:
        assert decision.action in (Action.WAIT, Action.RAISE_ALARM, Action.REJECT_SWITCHOVER)
        assert decision.record.master == facts.recorded.master
        assert decision.record.failover is None


@SETTINGS
@given(facts=shards())
def test_a_promotion_names_the_one_other_member_and_only_if_it_is_up_unfenced_and_close_enough(
    facts: ShardFacts,
) -> None:
    decision = decide(facts)
    if decision.action not in PROMOTING:
        return
    master = facts.recorded.master
    assert master is not None
    assert decision.member == facts.other(master).name != master
    assert decision.member not in decision.record.superseded
    progress = decision.record.failover
    assert progress is not None
    assert (progress.source, progress.target, progress.completed) == (master, decision.member, None)
    if decision.action is Action.FORCE_PROMOTION:
        # A human accepted the loss: lag and delay do not count, but the target must answer, unfenced.
        assert facts.force_promote_to == decision.member
        assert progress.forced
        assert not progress.planned
        assert decision.diagnosis in (
            Diagnosis.MASTER_DOWN,
            Diagnosis.BOTH_DOWN,
            Diagnosis.MASTER_FENCED,
            Diagnosis.UNCERTAIN,
        )
        health = diagnose(facts).of(decision.member)
        report = facts.member(decision.member).report
        assert health.up
        assert report is not None
        assert not report.fenced
        return
    # A dead master took nothing after it was marked failing: the replica's lag counts up to then.
    stopped = decision.record.failing_since if decision.action is Action.START_FAILOVER else None
    assert promotion_refusal(facts, diagnose(facts), decision.member, master_stopped_at=stopped) is None
    bounded_at = facts.now if stopped is None else min(facts.now, stopped)
    lag = lag_bound(facts.member(decision.member), bounded_at, resolution=facts.policy.poll_interval_seconds)
    assert lag is not None
    assert lag <= facts.policy.max_lag_seconds
    assert not progress.forced
    if decision.action is Action.START_FAILOVER:
        assert decision.diagnosis is Diagnosis.MASTER_DOWN
        assert facts.policy.enabled
        assert decision.record.failing_since is not None
        assert decision.record.failing_since + timedelta(seconds=facts.policy.delay_seconds) <= facts.now
    else:
        assert decision.diagnosis is Diagnosis.HEALTHY
        assert facts.switchover_to == decision.member


@SETTINGS
@given(facts=shards())
def test_with_failover_disabled_the_operator_only_reports_unless_a_human_asked(facts: ShardFacts) -> None:
    progress = facts.recorded.failover
    human_asked = (
        facts.switchover_to is not None
        or facts.force_promote_to is not None
        or (progress is not None and (progress.planned or progress.forced))
    )
    if facts.policy.enabled or human_asked:
        return
    decision = decide(facts)
    assert decision.action in (Action.WAIT, Action.RAISE_ALARM, Action.CLEAR_FAILING, Action.ELECT_MASTER)
    if decision.action is Action.ELECT_MASTER:
        assert facts.recorded.master is None  # choosing a new pair's first master is not a failover
    assert decision.record.failover == progress


@SETTINGS
@given(facts=shards())
def test_routing_names_at_most_one_member_and_never_the_one_being_fenced(facts: ShardFacts) -> None:
    decision = decide(facts)
    progress = facts.recorded.failover
    allowed = {None, facts.recorded.master, decision.record.master, progress.target if progress else None}
    assert decision.route_to in allowed
    fencing = decision.action in (Action.REPAIR_SPLIT_BRAIN, Action.RESEED_REPLICA) or (
        decision.action is Action.CONTINUE_FAILOVER and decision.step is FailoverStep.FENCE_OLD_MASTER
    )
    if fencing and decision.member is not None:  # fencing an unreachable old master addresses nobody
        assert decision.route_to != decision.member
    if decision.diagnosis is Diagnosis.SPLIT_BRAIN:
        assert decision.route_to in (facts.recorded.master, None)
        if decision.action is Action.REPAIR_SPLIT_BRAIN:
            assert decision.route_to == facts.recorded.master != decision.member


@SETTINGS
@given(facts=shards())
def test_only_the_matching_diagnosis_leads_to_each_acting_action(facts: ShardFacts) -> None:
    decision = decide(facts)
    only_from = {
        Action.START_FAILOVER: {Diagnosis.MASTER_DOWN},
        Action.MARK_FAILING: {Diagnosis.MASTER_DOWN},
        Action.REPAIR_SPLIT_BRAIN: {Diagnosis.SPLIT_BRAIN},
        Action.RESEED_REPLICA: {Diagnosis.REPLICA_NEEDS_RESEED},
        Action.ELECT_MASTER: {Diagnosis.NO_MASTER},
        Action.CONTINUE_FAILOVER: {Diagnosis.FAILOVER_IN_PROGRESS},
        Action.ABORT_FAILOVER: {Diagnosis.FAILOVER_IN_PROGRESS},
        Action.DRAIN_THEN_SWITCH: {Diagnosis.HEALTHY},
        Action.FORCE_PROMOTION: {
            Diagnosis.MASTER_DOWN,
            Diagnosis.BOTH_DOWN,
            Diagnosis.MASTER_FENCED,
            Diagnosis.UNCERTAIN,
        },
    }
    if decision.action in only_from:
        assert decision.diagnosis in only_from[decision.action]


@SETTINGS
@given(facts=shards())
def test_a_failover_only_moves_forward_and_a_recorded_step_is_never_asked_for_again(facts: ShardFacts) -> None:
    progress = facts.recorded.failover
    if progress is None:
        return
    decision = decide(facts)
    after = decision.record.failover
    if after is not None:
        assert (after.source, after.target, after.planned, after.forced) == (
            progress.source,
            progress.target,
            progress.planned,
            progress.forced,
        )
        assert step_index(after.completed) >= step_index(progress.completed)
    if decision.action is Action.CONTINUE_FAILOVER:
        refencing = decision.step is FailoverStep.FENCE_OLD_MASTER and decision.record == facts.recorded
        assert decision.step is next_step(progress.completed) or refencing
        again = decide(replace(facts, recorded=decision.record))
        if again.action is Action.CONTINUE_FAILOVER and not refencing:
            assert again.step is not decision.step or again.step is FailoverStep.FENCE_OLD_MASTER
    if decision.action is Action.ABORT_FAILOVER:
        assert not (
            progress.completed is not None and step_index(progress.completed) >= step_index(FailoverStep.PROMOTE)
        )
        assert decision.route_to == decision.member == progress.source


@SETTINGS
@given(facts=shards(), flips=st.tuples(st.sampled_from([None, True, False]), st.sampled_from([None, True, False])))
def test_node_readiness_never_changes_what_is_decided(
    facts: ShardFacts, flips: tuple[bool | None, bool | None]
) -> None:
    first, second = facts.members
    flipped = replace(facts, members=(replace(first, node_ready=flips[0]), replace(second, node_ready=flips[1])))

    def essence(facts: ShardFacts) -> tuple[Any, ...]:
        """Everything but the sentences for humans, which may mention the node."""
        d = decide(facts)
        record = d.record
        if record.failover is not None:
            record = replace(record, failover=replace(record.failover, reason=""))
        return (d.action, d.diagnosis, d.member, d.step, d.route_to, record, d.recheck_after, d.uidnext_plan)

    assert essence(flipped) == essence(facts)


@settings(max_examples=150, database=None, deadline=None)
@given(
    schedule=st.lists(st.booleans(), min_size=1, max_size=25),
    delay=st.sampled_from([0, 1, 2, 5]),
)
def test_flapping_never_promotes_before_the_delay_since_the_first_fall_and_never_fails_to_promote(
    schedule: list[bool], delay: int
) -> None:
    """Each second the master is up (True) or gone (False); the replica stays healthy throughout."""
    pair = healthy_pair(policy=replace(POLICY, delay_seconds=delay), lag_at=0)
    pair.tick(-1)
    promoted_at = None
    for second, up in enumerate(schedule):
        if up:
            pair.a.pod, pair.a.answers = PodState.READY, True
        else:
            pair.a.die()
        if any(d.action is Action.START_FAILOVER for d in pair.tick(second)):
            promoted_at = second
            break

    # The rule, restated: a fall starts an episode, which ends once the master has been up for `delay` seconds.
    episode_start, back_since, due = None, None, None
    for second, up in enumerate(schedule[: (promoted_at + 1) if promoted_at is not None else None]):
        if not up:
            episode_start, back_since = (second if episode_start is None else episode_start), None
            if second - episode_start >= delay and due is None:
                due = second
        elif episode_start is not None:
            back_since = second if back_since is None else back_since
            if second - back_since >= delay:
                episode_start = back_since = None
    assert promoted_at == due


@SETTINGS
@given(facts=shards())
def test_superseded_lists_only_old_masters_never_the_master_kept_or_the_one_promoted(facts: ShardFacts) -> None:
    """A member joins the list only as the old master fenced by a failover, or the rogue of a split brain; it
    leaves it by being re-seeded, kept as master (an abort) or promoted."""
    decision = decide(facts)
    before, after = set(facts.recorded.superseded), set(decision.record.superseded)
    progress = facts.recorded.failover
    for joined in after - before:
        if decision.action is Action.REPAIR_SPLIT_BRAIN:
            assert joined == decision.member != facts.recorded.master
            continue
        assert progress is not None
        assert joined == progress.source
        assert decision.step is FailoverStep.FENCE_OLD_MASTER
    for left in before - after:
        demoted = decision.action is Action.RESEED_REPLICA or decision.step is FailoverStep.REJOIN_OLD_MASTER
        kept = decision.action is Action.ABORT_FAILOVER
        promoted = decision.action in PROMOTING
        assert demoted or kept or promoted
        assert left == decision.member
