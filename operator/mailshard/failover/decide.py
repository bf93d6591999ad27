"""One action per diagnosis: what the operator does about a shard now, and what it must record.

Why this module exists: the rules that decide whether the replica is promoted
are the ones that lose mail when wrong, so they are a pure function of
`ShardFacts` (the current time included) that every test can drive, and the
service layer only carries out the answer: it performs `action` on `member`,
then writes `record` into the status (if it differs) and re-decides after
`recheck_after` seconds at the latest.

Each diagnosis has one action (and one only ever follows from it):

- HEALTHY, MASTER_SUSPECT, REPLICA_SUSPECT, REPLICA_DOWN → WAIT, or
  CLEAR_FAILING once a master that came back has stayed up.
- MASTER_DOWN → MARK_FAILING, WAIT until `failingSince + delaySeconds`, then
  START_FAILOVER if the replica may be promoted, else RAISE_ALARM.
- BOTH_DOWN, MASTER_FENCED, REPLICA_FENCED, REPLICA_LAGGING → RAISE_ALARM.
- UNCERTAIN → WAIT, then RAISE_ALARM once it has lasted `ALARM_AFTER_SECONDS`.
- SPLIT_BRAIN → REPAIR_SPLIT_BRAIN: fence the member that is not the
  recorded master (RAISE_ALARM when no master is recorded).
- REPLICA_NEEDS_RESEED → RESEED_REPLICA: demote it, re-seed it from the master, unfence it.
- NO_MASTER → ELECT_MASTER once both members answer, else WAIT.
- After a failover, once the member left behind is seen in sync as the new
  master's replica, `lastFailover.replicaInSyncAt` records when (the shard is
  Degraded until then, see `builders.status`).
- FAILOVER_IN_PROGRESS → CONTINUE_FAILOVER with the next step; WAIT while a
  step cannot run yet; ABORT_FAILOVER when the target is lost before its
  promotion and the old master is up; RAISE_ALARM when a step is stuck.

Rules that hold over every input (and are property-tested):

- Only MASTER_DOWN starts a failover, only once `failingSince + delaySeconds`
  has passed, and only to a replica that is up, unfenced and whose lag is
  known and within `maxLagSeconds`. UNCERTAIN never promotes.
- With `failover.enabled: false` the operator only reports: it never starts,
  continues or repairs anything on its own. What a human asked for (a
  switchover, and finishing one) still happens; so does choosing the first
  master of a new pair, which is not a failover.
- Flapping: `failingSince` is kept while the master comes back for less than
  the delay (`FailoverPolicy.recovery_window_seconds`), so a master that falls
  again is replaced once the delay has passed since its *first* fall, never
  earlier and not never; a master that stays up for the delay is forgiven.
- `route_to` names the only member routing may point at after the action, or
  None: never two.
- A planned switchover (`SWITCHOVER_ANNOTATION`) is considered only when
  nothing else needs doing, and accepted only for a HEALTHY shard's replica.
- A forced promotion (`FORCE_PROMOTE_ANNOTATION`) is a human's decision to
  accept the loss the operator refused to accept: it is weighed before
  anything else (but a failover under way), and accepted only while the
  master is down, fenced or cannot be confirmed alive (MASTER_DOWN,
  BOTH_DOWN, MASTER_FENCED, UNCERTAIN), for a target that answers and is not
  fenced, whatever its lag, even with failover disabled. It is recorded as
  such (`forced`, then `lastFailover.cause: ForcedPromotion`).
- Superseded old masters: a master a failover fences (through its agent, or
  only through the routing layer when its agent cannot be told) or a
  split-brain repair fences is recorded in `superseded`; the shard's contract
  (ConfigMap) carries the list, and the member's agent reads it before it
  serves again and starts fenced. It leaves the list once it is re-seeded as
  replica (it rejoined, or `RESEED_REPLICA` succeeded) or stays master (an
  aborted failover). While listed and fenced it needs re-seeding, so a
  re-seed that failed halfway is tried again rather than left to a human.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Final

from mailshard.api.v1alpha1 import FailoverRecord, MemberRole, routed_during_failover
from mailshard.failover.diagnose import Diagnosis, Finding, diagnose, fresh_report, lag_bound
from mailshard.failover.liveness import Liveness, MemberHealth
from mailshard.failover.observations import (
    FORCE_PROMOTE_ANNOTATION,
    SWITCHOVER_ANNOTATION,
    AgentReport,
    FailoverProgress,
    MemberFacts,
    RecordedState,
    ShardFacts,
)
from mailshard.failover.steps import FailoverStep, has_completed, next_step
from mailshard.failover.uidnext import UidNextPlan, messages_at_risk, uidnext_plan


class Action(enum.StrEnum):
    """What the service layer does about a shard. Values are CamelCase, fit for Event reasons."""

    WAIT = "Wait"
    """Nothing to do now; decide again after `recheck_after`."""
    MARK_FAILING = "MarkFailing"
    """Record `failingSince`: the master was just seen down."""
    CLEAR_FAILING = "ClearFailing"
    """Forget `failingSince`: the master came back and stayed up."""
    START_FAILOVER = "StartFailover"
    """Record the failover to `member` (`targetMaster`); its steps follow as CONTINUE_FAILOVER."""
    CONTINUE_FAILOVER = "ContinueFailover"
    """Run `step` (addressing `member`'s agent when set), then record it done."""
    ABORT_FAILOVER = "AbortFailover"
    """Give up before promotion: unfence `member` (the old master) and route back to it."""
    REPAIR_SPLIT_BRAIN = "RepairSplitBrain"
    """Fence `member`, the member that claims master but is not the recorded master."""
    RESEED_REPLICA = "ReseedReplica"
    """Demote `member`, make its store equal to the master's (`/reseed`), unfence it: it replicates again."""
    ELECT_MASTER = "ElectMaster"
    """Record `member` as the first master of the pair."""
    DRAIN_THEN_SWITCH = "DrainThenSwitch"
    """Record a planned switchover to `member`; its steps follow as CONTINUE_FAILOVER."""
    REJECT_SWITCHOVER = "RejectSwitchover"
    """Refuse the requested switchover (remove the annotation, tell the human why)."""
    FORCE_PROMOTION = "ForcePromotion"
    """Record the forced promotion of `member` a human asked for; its steps follow as CONTINUE_FAILOVER."""
    REJECT_FORCED_PROMOTION = "RejectForcedPromotion"
    """Refuse the requested forced promotion (remove the annotation, tell the human why)."""
    RAISE_ALARM = "RaiseAlarm"
    """Tell a human (a Warning Event and a Stalled condition); the operator will not act on its own."""


PROMOTING: Final = frozenset({Action.START_FAILOVER, Action.DRAIN_THEN_SWITCH, Action.FORCE_PROMOTION})
"""The actions that choose a member to promote."""
REPORTING_ONLY: Final = frozenset({Action.WAIT, Action.RAISE_ALARM, Action.CLEAR_FAILING})
"""The actions that change no member and no routing; a switchover request is weighed only after one of these."""


@dataclass(frozen=True)
class Decision:
    """Exactly one action, why, and the status to record once it is done."""

    action: Action
    reason: str
    diagnosis: Diagnosis
    record: RecordedState
    """The failover part of the status after the action; write it if it differs from what is stored."""
    route_to: str | None
    """The one member routing may point at after the action; None while routing is fenced or nobody is master."""
    recheck_after: float
    """Seconds after which to decide again at the latest, if no new observation arrives first."""
    member: str | None = None
    """The member the action addresses (see `Action`); None when it addresses nobody."""
    step: FailoverStep | None = None
    """The failover step to run, for CONTINUE_FAILOVER."""
    uidnext_plan: UidNextPlan | None = None
    """For the RAISE_UIDNEXT step: the UIDNEXT floors, and the mailboxes to create, on the new master."""


def decide(facts: ShardFacts) -> Decision:
    """Diagnose the shard and choose the one thing to do about it."""
    finding = diagnose(facts)
    if finding.diagnosis is Diagnosis.FAILOVER_IN_PROGRESS:
        return _drive_failover(facts, finding)
    record = _note_replica_in_sync(facts, finding, _track_timers(facts, finding))
    if facts.force_promote_to is not None:
        return _forced_promotion(facts, finding, record, facts.force_promote_to)
    decision = _act(facts, finding, record)
    forgiven = facts.recorded.failing_since is not None and record.failing_since is None
    if forgiven and decision.action in (Action.WAIT, Action.RAISE_ALARM):
        why = f"{decision.reason}; the master has stayed up for the delay, so it is no longer failing"
        decision = replace(decision, action=Action.CLEAR_FAILING, reason=why, recheck_after=0.0, member=None)
    if facts.switchover_to is not None and decision.action in REPORTING_ONLY:
        return _switchover(facts, finding, record, facts.switchover_to)
    return decision


# --- timers: failingSince, recoveringSince, uncertainSince --------------------------------------


def _track_timers(facts: ShardFacts, finding: Finding) -> RecordedState:
    """The timers after this observation; see "Flapping" in the module docstring."""
    recorded, now, policy = facts.recorded, facts.now, facts.policy
    failing, recovering = recorded.failing_since, recorded.recovering_since
    if finding.diagnosis in (Diagnosis.MASTER_DOWN, Diagnosis.BOTH_DOWN):
        failing, recovering = failing or now, None
    elif failing is None:
        recovering = None
    elif _master_serves(facts, finding):
        recovering = recovering or now
        if _seconds(now - recovering) >= policy.recovery_window_seconds:
            failing = recovering = None
    uncertain = (recorded.uncertain_since or now) if finding.diagnosis is Diagnosis.UNCERTAIN else None
    return replace(recorded, failing_since=failing, recovering_since=recovering, uncertain_since=uncertain)


def _master_serves(facts: ShardFacts, finding: Finding) -> bool:
    """Whether the recorded master is up and in its role, which is what undoes `failingSince`."""
    master = facts.recorded.master
    if master is None or finding.diagnosis in (Diagnosis.UNCERTAIN, Diagnosis.MASTER_FENCED):
        return False
    return finding.of(master).up


def _note_replica_in_sync(facts: ShardFacts, finding: Finding, record: RecordedState) -> RecordedState:
    """Record when the member a failover left behind is first seen in sync with the new master, as its replica.

    In sync means its agent found every mailbox equal to the master's (lag 0,
    nothing behind, nothing diverged), at a moment after the failover began,
    and says now that it is an unfenced replica. Set once and never moved, so
    later lag cannot change it.
    """
    last, master = record.last_failover, record.master
    if last is None or last.replica_in_sync_at is not None or master is None:
        return record
    replica = facts.other(master)
    report = fresh_report(replica, finding.of(replica.name))
    if report is None or report.role is not MemberRole.REPLICA or report.fenced:
        return record
    if replica.last_in_sync is None or replica.last_in_sync < last.started:
        return record
    return replace(record, last_failover=last.model_copy(update={"replica_in_sync_at": replica.last_in_sync}))


# --- one action per diagnosis -----------------------------------------------------------------------


def _act(facts: ShardFacts, finding: Finding, record: RecordedState) -> Decision:
    policy, now, master = facts.policy, facts.now, facts.recorded.master
    diagnosis, reason = finding.diagnosis, finding.reason

    def decision(action: Action, why: str = reason, *, member: str | None = None, recheck: float = 0.0) -> Decision:
        return Decision(action, why, diagnosis, record, _route_to(record), recheck, member)

    def wait(why: str = reason) -> Decision:
        return decision(Action.WAIT, why, recheck=_recheck(facts, record))

    if diagnosis in (Diagnosis.HEALTHY, Diagnosis.MASTER_SUSPECT, Diagnosis.REPLICA_SUSPECT, Diagnosis.REPLICA_DOWN):
        if record.recovering_since is not None:
            return wait(f"{reason}; the master is back, and counts as failing until it has stayed up for the delay")
        return wait()
    if diagnosis is Diagnosis.REPLICA_LAGGING:
        assert master is not None  # NO_MASTER is diagnosed before
        why = (
            f"{reason}. While it is, {master} would not be replaced automatically if it failed: find out why "
            f"replication is slow or stopped (the errors in {facts.other(master).name}'s agent /status)"
        )
        return decision(Action.RAISE_ALARM, why, recheck=_poll(facts))
    if diagnosis in (Diagnosis.MASTER_FENCED, Diagnosis.REPLICA_FENCED):
        return decision(Action.RAISE_ALARM, reason, recheck=_poll(facts))
    if diagnosis is Diagnosis.BOTH_DOWN:
        return decision(Action.RAISE_ALARM, f"{reason}: no member can serve", recheck=_poll(facts))
    if diagnosis is Diagnosis.UNCERTAIN:
        assert record.uncertain_since is not None  # set by _track_timers for every UNCERTAIN
        lasted = _seconds(now - record.uncertain_since)
        if lasted >= policy.alarm_after_seconds:
            return decision(
                Action.RAISE_ALARM,
                f"{reason}; uncertain for {lasted:.0f}s, so a human must decide (nobody is promoted meanwhile)",
                recheck=_poll(facts),
            )
        return wait(f"{reason}; not promoting anyone while it is uncertain")
    if diagnosis is Diagnosis.NO_MASTER:
        return _elect(facts, finding, record)
    if diagnosis is Diagnosis.SPLIT_BRAIN:
        if master is None or not policy.enabled:
            why = "no master is recorded to keep" if master is None else "automatic failover is disabled"
            return decision(Action.RAISE_ALARM, f"{reason}; {why}: a human must fence one", recheck=_poll(facts))
        rogue = facts.other(master).name
        repaired = replace(record, superseded=_with(record.superseded, rogue))
        why = f"{reason}; fencing the other"
        return Decision(Action.REPAIR_SPLIT_BRAIN, why, diagnosis, repaired, _route_to(repaired), 0.0, rogue)
    if diagnosis is Diagnosis.REPLICA_NEEDS_RESEED:
        assert master is not None  # NO_MASTER is diagnosed before
        if not policy.enabled:
            return decision(Action.RAISE_ALARM, f"{reason}; {_DISABLED}", recheck=_poll(facts))
        stale = facts.other(master).name
        reseeded = replace(record, superseded=_without(record.superseded, stale))
        why = f"{reason}; making it a replica again"
        return Decision(Action.RESEED_REPLICA, why, diagnosis, reseeded, _route_to(reseeded), 0.0, stale)
    return _master_down(facts, finding, record)


_DISABLED: Final = "automatic failover is disabled (spec.failover.enabled: false), so a human must act"


def _master_down(facts: ShardFacts, finding: Finding, record: RecordedState) -> Decision:
    """MASTER_DOWN: mark, wait out the delay, then promote the replica if it may be."""
    policy, now, recorded = facts.policy, facts.now, facts.recorded
    assert recorded.master is not None  # NO_MASTER is diagnosed before
    assert record.failing_since is not None  # MASTER_DOWN sets it in _track_timers
    master, target = recorded.master, facts.other(recorded.master).name

    def decision(action: Action, why: str, *, recheck: float, rec: RecordedState = record) -> Decision:
        member = target if action is Action.START_FAILOVER else None
        return Decision(action, why, finding.diagnosis, rec, _route_to(rec), recheck, member)

    if not policy.enabled:
        return decision(Action.RAISE_ALARM, f"{finding.reason}; {_DISABLED}", recheck=_poll(facts))
    promote_at = record.failing_since + timedelta(seconds=policy.delay_seconds)
    if now < promote_at:
        action = Action.MARK_FAILING if recorded.failing_since is None else Action.WAIT
        remaining = _seconds(promote_at - now)
        why = f"{finding.reason}; promoting {target} in {remaining:.1f}s unless the master comes back"
        return decision(action, why, recheck=min(remaining, policy.poll_interval_seconds))
    refusal = promotion_refusal(facts, finding, target, master_stopped_at=record.failing_since)
    if refusal is not None:
        if finding.of(target).liveness is Liveness.SUSPECT:
            return decision(Action.WAIT, f"{finding.reason}; not promoting {target}: {refusal}", recheck=_poll(facts))
        why = f"{finding.reason}; not promoting {target}: {refusal}. {_human_choices(facts, finding, master, target)}"
        return decision(Action.RAISE_ALARM, why, recheck=_poll(facts))
    at_risk = _messages_at_risk(facts, master, target)
    progress = FailoverProgress(
        source=master,
        target=target,
        planned=False,
        started=now,
        reason=finding.reason,
        completed=None,
        completed_at=now,
        messages_at_risk=at_risk,
    )
    started = replace(record, failover=progress, superseded=_without(record.superseded, target))
    why = f"{finding.reason}; down since {record.failing_since.isoformat()}, promoting {target}"
    return decision(Action.START_FAILOVER, why, recheck=0.0, rec=started)


def promotion_refusal(
    facts: ShardFacts, finding: Finding, target: str, *, master_stopped_at: datetime | None = None
) -> str | None:
    """Why `target` must not be promoted automatically now, or None if it may be.

    `master_stopped_at`: since when the master has been down (`failing_since`). A master that is gone takes no
    mail after that, so the replica cannot fall further behind it: its lag is bounded at that moment, not now.
    (A master down only as the operator and its replica see it, yet still reached by the proxy, could take more;
    the delivery journal on the replica, replayed at promotion, is what covers those, not this bound.) Bounded
    now, a replica in sync when the master died looked a second further behind with every second of the
    failover delay, and an operator restarted during the delay, with no lag sample of its own, refused to
    promote it (seen in the e2e tier).
    """
    health = finding.of(target)
    if not health.up:
        return f"it is not up ({health.reason})"
    member = facts.member(target)
    report = fresh_report(member, health)
    if report is None or report.fenced:
        return "it is fenced"
    if member.volume_leaving:
        return "its mail claim is being deleted: it would come back on a new, empty volume"
    at = facts.now if master_stopped_at is None else min(facts.now, master_stopped_at)
    lag = lag_bound(member, at, resolution=facts.policy.poll_interval_seconds)
    if lag is None:
        return "its replication lag is unknown, so the mail it lacks cannot be bounded"
    if lag > facts.policy.max_lag_seconds:
        return f"it may be {lag:.1f}s behind, more than the {facts.policy.max_lag_seconds:g}s allowed (maxLagSeconds)"
    return None


def _human_choices(facts: ShardFacts, finding: Finding, master: str, target: str) -> str:
    """What a human can do about a dead master whose replica the operator will not promote."""
    health = finding.of(target)
    report = fresh_report(facts.member(target), health)
    back = f"bring {master} back, and it serves again with nothing lost"
    if not health.up or report is None:
        return f"A human must decide: {back}, or bring {target} back so that it can be promoted"
    if report.fenced:
        return f"A human must decide: {back}, or unfence {target} (a human fenced it) so that it can be promoted"
    at_risk = _messages_at_risk(facts, master, target)
    loss = "an unknown number of messages" if at_risk is None else f"{at_risk} message(s) known"
    return (
        f"A human must decide: {back}; or accept losing what {target} lacks ({loss}) "
        f"by annotating the MailShard {FORCE_PROMOTE_ANNOTATION}={target}"
    )


def _messages_at_risk(facts: ShardFacts, master: str, target: str) -> int | None:
    """What the master last reported holding that the target's last report lacked, when both reported mailboxes."""
    old_report, new_report = facts.member(master).report, facts.member(target).report
    if old_report is None or new_report is None or old_report.mailboxes is None or new_report.mailboxes is None:
        return None
    return messages_at_risk(old_report.mailboxes, new_report.mailboxes)


def _elect(facts: ShardFacts, finding: Finding, record: RecordedState) -> Decision:
    """NO_MASTER: once both members answer, the one that claims master, else the more advanced, else the first."""
    not_up = [h.reason for h in finding.health if not h.up]
    if not_up:
        why = f"{finding.reason}; waiting for both members before choosing: {'; '.join(not_up)}"
        return Decision(Action.WAIT, why, finding.diagnosis, record, None, _poll(facts))
    chosen = max(facts.members, key=_election_rank).name
    elected = replace(record, master=chosen)
    why = f"{finding.reason}; electing {chosen}"
    return Decision(Action.ELECT_MASTER, why, finding.diagnosis, elected, chosen, 0.0, chosen)


def _election_rank(member: MemberFacts) -> tuple[bool, bool, int]:
    """Higher is better: claims master unfenced, claims master at all, most mail (ties: the first member wins)."""
    report = member.report
    if report is None:
        return (False, False, -1)
    mail = sum(row.uidnext for row in report.mailboxes) if report.mailboxes is not None else -1
    return (report.claims_master, report.role is MemberRole.MASTER, mail)


# --- planned switchover ------------------------------------------------------------------------------


def _not_a_promotable_name(facts: ShardFacts, wanted: str) -> str | None:
    """Why a human's request names nobody to promote: not a member, no master yet, or the master itself."""
    if wanted not in facts.names:
        return f"it is not a member of this shard (the members are {' and '.join(facts.names)})"
    if facts.recorded.master is None:
        return "the shard has no master yet"
    if wanted == facts.recorded.master:
        return f"{wanted} is already the master"
    return None


def _switchover(facts: ShardFacts, finding: Finding, record: RecordedState, wanted: str) -> Decision:
    """A human asked for `wanted` to become master: accept only a HEALTHY shard's replica."""
    master, now = facts.recorded.master, facts.now

    def reject(why: str) -> Decision:
        return Decision(
            Action.REJECT_SWITCHOVER,
            f"switchover to {wanted!r} rejected: {why}",
            finding.diagnosis,
            record,
            _route_to(record),
            0.0,
            wanted if wanted in facts.names else None,
        )

    unnamed = _not_a_promotable_name(facts, wanted)
    if unnamed is not None or master is None:
        return reject(unnamed or "the shard has no master yet")
    if finding.diagnosis is not Diagnosis.HEALTHY:
        return reject(f"the shard is not healthy ({finding.diagnosis.value}: {finding.reason})")
    refusal = promotion_refusal(facts, finding, wanted)
    if refusal is not None:
        return reject(refusal)
    progress = FailoverProgress(
        source=master,
        target=wanted,
        planned=True,
        started=now,
        reason=f"switchover to {wanted} requested",
        completed=None,
        completed_at=now,
    )
    # Like a failover's target: once promoted it must not start fenced after a restart because the contract
    # still lists it from an earlier failover (the property tests found a switchover that kept it listed).
    switching = replace(record, failover=progress, superseded=_without(record.superseded, wanted))
    why = f"switchover to {wanted} requested; draining {master} first so nothing is lost"
    return Decision(Action.DRAIN_THEN_SWITCH, why, finding.diagnosis, switching, master, 0.0, wanted)


# --- forced promotion -------------------------------------------------------------------------------

FORCEABLE: Final = frozenset({Diagnosis.MASTER_DOWN, Diagnosis.BOTH_DOWN, Diagnosis.MASTER_FENCED, Diagnosis.UNCERTAIN})
"""Diagnoses in which a human may force the replica's promotion: the master does not serve, or cannot be shown to."""


def _forced_promotion(facts: ShardFacts, finding: Finding, record: RecordedState, wanted: str) -> Decision:
    """A human forces `wanted` to master, accepting what it lacks: accept it only where the master does not serve."""
    master, now, diagnosis = facts.recorded.master, facts.now, finding.diagnosis

    def answer(action: Action, why: str, rec: RecordedState = record, recheck: float = 0.0) -> Decision:
        member = wanted if wanted in facts.names else None
        return Decision(action, why, diagnosis, rec, _route_to(rec), recheck, member)

    def reject(why: str) -> Decision:
        return answer(Action.REJECT_FORCED_PROMOTION, f"forced promotion of {wanted!r} rejected: {why}")

    unnamed = _not_a_promotable_name(facts, wanted)
    if unnamed is not None or master is None:
        return reject(unnamed or "the shard has no master yet")
    if diagnosis is Diagnosis.MASTER_SUSPECT:
        why = f"forced promotion of {wanted} waits: {finding.reason}; whether {master} is down is not known yet"
        return answer(Action.WAIT, why, recheck=_poll(facts))
    if diagnosis not in FORCEABLE:
        return reject(
            f"{master} is not down ({diagnosis.value}: {finding.reason}); forcing is only for a master that "
            f"does not serve. To move a serving master, request a switchover ({SWITCHOVER_ANNOTATION}={wanted})"
        )
    health = finding.of(wanted)
    if health.liveness is Liveness.SUSPECT:
        return answer(Action.WAIT, f"forced promotion of {wanted} waits: {health.reason}", recheck=_poll(facts))
    report = fresh_report(facts.member(wanted), health)
    if not health.up or report is None:
        return reject(f"it is not up ({health.reason})")
    if report.fenced:
        return reject(f"{wanted} is fenced; unfence it first (a fence is only ever lifted by a human)")
    at_risk = _messages_at_risk(facts, master, wanted)
    loss = "an unknown number of messages" if at_risk is None else f"{at_risk} message(s) known to be"
    progress = FailoverProgress(
        source=master,
        target=wanted,
        planned=False,
        forced=True,
        started=now,
        reason=f"forced promotion of {wanted} requested ({finding.reason}); a human accepted losing {loss} lacking",
        completed=None,
        completed_at=now,
        messages_at_risk=at_risk,
    )
    forcing = replace(record, failover=progress, superseded=_without(record.superseded, wanted))
    why = f"promoting {wanted} as a human forced it, accepting the loss of {loss} missing on it: {finding.reason}"
    return answer(Action.FORCE_PROMOTION, why, rec=forcing)


# --- a failover under way ----------------------------------------------------------------------------


def _drive_failover(facts: ShardFacts, finding: Finding) -> Decision:
    """FAILOVER_IN_PROGRESS: the next step from the record, unless the old master needs fencing again or all is lost."""
    recorded, policy, now = facts.recorded, facts.policy, facts.now
    progress = recorded.failover
    assert progress is not None  # FAILOVER_IN_PROGRESS means there is one
    source, target = progress.source, progress.target
    source_health, target_health = finding.of(source), finding.of(target)
    source_report = fresh_report(facts.member(source), source_health)
    kind = "switchover" if progress.planned else "failover"
    waited = _seconds(now - progress.completed_at)
    diagnosis = finding.diagnosis

    def run(
        step: FailoverStep,
        why: str,
        *,
        member: str | None = None,
        plan: UidNextPlan | None = None,
        superseded: tuple[str, ...] = recorded.superseded,
    ) -> Decision:
        done = replace(recorded, failover=_advanced(progress, step, now), superseded=superseded)
        if step is FailoverStep.RECORD:
            done = _completed(recorded, progress, now)
        why = f"{kind} to {target}: {why}"
        return Decision(Action.CONTINUE_FAILOVER, why, diagnosis, done, _route_to(done), 0.0, member, step, plan)

    def hold(action: Action, why: str) -> Decision:
        return Decision(action, f"{kind} to {target}: {why}", diagnosis, recorded, _route_to(recorded), _poll(facts))

    def abort(why: str) -> Decision:
        back = replace(recorded, failover=None, superseded=_without(recorded.superseded, source))
        return Decision(
            Action.ABORT_FAILOVER, f"{kind} to {target} abandoned: {why}", diagnosis, back, source, 0.0, source
        )

    if not policy.enabled and not progress.planned and not progress.forced:
        return hold(Action.RAISE_ALARM, f"halted; {_DISABLED}")

    fenced_before = has_completed(progress.completed, FailoverStep.FENCE_OLD_MASTER)
    rejoined = has_completed(progress.completed, FailoverStep.REJOIN_OLD_MASTER)
    if fenced_before and not rejoined and source_report is not None and source_report.claims_master:
        return Decision(
            Action.CONTINUE_FAILOVER,
            f"{kind} to {target}: the old master {source} claims master again; fencing it again first",
            diagnosis,
            recorded,
            _route_to(recorded),
            0.0,
            source,
            FailoverStep.FENCE_OLD_MASTER,
        )

    promoted = has_completed(progress.completed, FailoverStep.PROMOTE)
    unfit = None if promoted else _unfit_target(facts, progress, target_health, source_health)
    if unfit is not None:
        return abort(f"{unfit}; {source} stays master")

    step = next_step(progress.completed)
    if step is FailoverStep.FENCE_ROUTING:
        return run(step, f"cutting {source} off from the routing layer")
    if step is FailoverStep.DRAIN:
        if not source_health.up:
            return run(step, f"nothing to drain: {source_health.reason}")
        missing = _still_missing(facts, progress)
        if missing is None:
            return run(step, f"{target} holds everything {source} accepted")
        if waited >= policy.drain_timeout_seconds:
            if progress.planned:
                return abort(f"{target} did not catch up within {waited:.0f}s{missing}; {source} stays master")
            return run(step, f"gave up waiting {waited:.0f}s for {target} to catch up with {source}{missing}")
        return hold(Action.WAIT, f"waiting for {target} to catch up with {source} ({waited:.0f}s so far){missing}")
    if step is FailoverStep.FENCE_OLD_MASTER:
        if source_report is None:
            return run(
                step,
                f"{source} cannot be told ({source_health.reason}); the routing fence keeps writes away, and "
                "the shard's contract now says it was superseded, so it starts fenced whenever it comes back",
                superseded=_with(recorded.superseded, source),
            )
        return run(step, f"fencing {source}", member=source, superseded=_with(recorded.superseded, source))
    if step in (FailoverStep.PROMOTE, FailoverStep.RAISE_UIDNEXT, FailoverStep.REPLAY_JOURNAL):
        target_facts = facts.member(target)
        target_report = fresh_report(target_facts, target_health)
        if not target_health.up or target_report is None or target_report.fenced:
            problem = target_health.reason if not target_health.up else f"{target} is fenced"
            if waited >= policy.alarm_after_seconds:
                return hold(Action.RAISE_ALARM, f"stuck at {step.value} for {waited:.0f}s: {problem}")
            return hold(Action.WAIT, f"waiting to {step.value}: {problem}")
        if step is FailoverStep.PROMOTE:
            return run(step, f"promoting {target}", member=target)
        if step is FailoverStep.REPLAY_JOURNAL:
            return run(step, f"delivering on {target} what {source} acknowledged but never replicated", member=target)
        plan = _uidnext_plan(facts, source, target_report)
        why = f"raising UIDNEXT on {target} above anything {source} may have assigned"
        if plan.create:
            why += f", and creating the {len(plan.create)} mailbox(es) only {source} had under their UIDVALIDITY"
        return run(step, why, member=target, plan=plan)
    if step is FailoverStep.REPOINT_ROUTING:
        return run(step, f"pointing the routing layer at {target}")
    if step is FailoverStep.REJOIN_OLD_MASTER:
        if not source_health.up:
            return run(step, f"{source} is not up to rejoin ({source_health.reason}); it is reseeded when it returns")
        return run(
            step, f"{source} rejoins as replica", member=source, superseded=_without(recorded.superseded, source)
        )
    return run(FailoverStep.RECORD, f"{target} is master")


def _advanced(progress: FailoverProgress, step: FailoverStep, now: datetime) -> FailoverProgress:
    """The progress once `step` is done; the repoint also marks where the outage ended."""
    advanced = replace(progress, completed=step, completed_at=now)
    return replace(advanced, serving_since=now) if step is FailoverStep.REPOINT_ROUTING else advanced


def _uidnext_plan(facts: ShardFacts, source: str, target_report: AgentReport) -> UidNextPlan:
    """The RAISE_UIDNEXT step's plan from the target's fresh summary and the last one the old master sent."""
    old_report = facts.member(source).report
    return uidnext_plan(
        target_report.mailboxes or (),
        old_report.mailboxes if old_report is not None else None,
        gap=facts.policy.uid_gap,
    )


def _completed(recorded: RecordedState, progress: FailoverProgress, now: datetime) -> RecordedState:
    """The status once a failover is over: the new master, the record of it, every timer cleared."""
    outage_from = progress.started if progress.planned else (recorded.failing_since or progress.started)
    # The outage ends where routing reached the new master; a progress stored before that was recorded (an
    # operator upgraded mid-failover) ends it now.
    outage_to = progress.serving_since or now
    return RecordedState(
        master=progress.target,
        last_failover=FailoverRecord(
            from_member=progress.source,
            to_member=progress.target,
            reason=progress.reason,
            started=progress.started,
            duration_seconds=max(0.0, _seconds(outage_to - outage_from)),
            messages_at_risk=progress.messages_at_risk,
            cause=progress.cause,
        ),
        superseded=recorded.superseded,
    )


def _caught_up(member: MemberFacts, since: datetime) -> bool:
    """Whether the member was seen fully in sync after `since` (the routing fence, plus one poll to settle).

    In sync, not a lag of 0: a replica first seen behind reports 0 for that first moment (the lag is a lower
    bound), and a replica back on an empty volume was drained in a second that way (e2e tier)."""
    if member.lag is not None and member.lag.caught_up and member.lag.measured_at >= since:
        return True
    return member.last_in_sync is not None and member.last_in_sync >= since


def _unfit_target(
    facts: ShardFacts, progress: FailoverProgress, target: MemberHealth, source: MemberHealth
) -> str | None:
    """Why the target, not promoted yet, must not be after all while the old master can keep serving."""
    if target.liveness in (Liveness.DOWN, Liveness.SILENT) and source.up:
        return target.reason
    if facts.member(progress.target).volume_leaving and (progress.planned or source.up):
        return f"{progress.target}'s mail claim is being deleted"
    return None


def _still_missing(facts: ShardFacts, progress: FailoverProgress) -> str | None:
    """None once the target holds everything the source accepted; otherwise what is known to be missing.

    Judged on what was observed at least a poll after the routing fence, once deliveries under way settled.
    """
    settled = progress.completed_at + timedelta(seconds=facts.policy.poll_interval_seconds)
    source, target = facts.member(progress.source), facts.member(progress.target)
    lacking = _lacking(source, target, settled)
    if lacking:
        return f" (it lacks mail in {len(lacking)} mailbox(es), such as {lacking[0]})"
    return None if _caught_up(target, settled) else ""


def _lacking(source: MemberFacts, target: MemberFacts, since: datetime) -> list[str]:
    """The source's mailboxes the target lacks mail of, by both agents' summaries received after `since`.

    Checked beside the target's own word (`_caught_up`), from what each member says it holds: a switchover
    promotes only a member seen holding every mailbox the master has, under its UIDVALIDITY, up to its UIDNEXT.
    Empty when either summary is missing or older than `since` (then the target's word decides alone).
    """
    summaries = []
    for member in (source, target):
        heard, report = member.last_heartbeat, member.report
        if heard is None or heard < since or report is None or report.mailboxes is None:
            return []
        summaries.append(report.mailboxes)
    held = {row.mailbox: row for row in summaries[1]}
    lacking = []
    for row in summaries[0]:
        there = held.get(row.mailbox)
        if there is None or there.uidvalidity != row.uidvalidity or there.uidnext < row.uidnext:
            lacking.append(row.mailbox)
    return sorted(lacking)


# --- small helpers -----------------------------------------------------------------------------------


def _route_to(record: RecordedState) -> str | None:
    """Where routing points given a record: the master, or during a failover `routed_during_failover`."""
    progress = record.failover
    if progress is None:
        return record.master
    return routed_during_failover(progress.source, progress.target, progress.completed)


def _recheck(facts: ShardFacts, record: RecordedState) -> float:
    """Seconds to the next moment time alone could change the decision, at most one poll interval."""
    policy, now = facts.policy, facts.now
    deadlines = []
    if record.recovering_since is not None:
        deadlines.append(record.recovering_since + timedelta(seconds=policy.recovery_window_seconds))
    if record.uncertain_since is not None:
        deadlines.append(record.uncertain_since + timedelta(seconds=policy.alarm_after_seconds))
    return min([policy.poll_interval_seconds, *(max(0.0, _seconds(d - now)) for d in deadlines)])


def _with(members: tuple[str, ...], member: str) -> tuple[str, ...]:
    return members if member in members else (*members, member)


def _without(members: tuple[str, ...], member: str) -> tuple[str, ...]:
    return tuple(m for m in members if m != member)


def _poll(facts: ShardFacts) -> float:
    return facts.policy.poll_interval_seconds


def _seconds(delta: timedelta) -> float:
    return delta.total_seconds()


def route_of(record: RecordedState) -> str | None:
    """Where routing points for a stored record: what `Decision.route_to` was when that record was decided."""
    return _route_to(record)
