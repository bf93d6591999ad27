"""The failover record in the status, and an agent's `/status` answer, read and written purely.

`record`: whatever `RecordedState` the monitor writes with `status_patch` (a
JSON merge patch, through JSON) is what `recorded_state` reads back from the
validated status, or a restarted operator would resume another failover; and
the routing table (`MailShardStatus.routed_member`) points where the decision
(`decide._route_to`) says, for every record.

`agent_report`: roles, lag, mailbox keys, and times converted to the
operator's clock so that skew between nodes changes nothing; a malformed
document is one `MalformedAnswerError`, counted as a failed poll.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from failover_support import T0, A, B
from hypothesis import given, settings
from hypothesis import strategies as st

from mailshard.api.v1alpha1 import FailoverCause, FailoverRecord, FailoverStep, MailShardStatus, MemberRole
from mailshard.failover import FailoverProgress, LagSample, MailboxUidNext, RecordedState
from mailshard.failover.agent_report import AgentAnswer, MalformedAnswerError, parse_agent_status
from mailshard.failover.decide import _route_to
from mailshard.failover.record import RECORD_FIELDS, progress_status, recorded_state, status_patch

pytestmark = pytest.mark.unit

SETTINGS = settings(max_examples=200, database=None, deadline=None)

Json = Any


def merge_patch(target: Json, patch: Json) -> Json:
    """RFC 7386, as the API server applies `application/merge-patch+json`: objects merge, null deletes."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def through_json(document: Json) -> Json:
    """What the API server receives: the patch must survive JSON (no datetimes, no enums left in it)."""
    return json.loads(json.dumps(document))


def stored(document: Json, record: RecordedState, previous: RecordedState | None = None) -> MailShardStatus:
    """The status after merging the monitor's patch for `record` into `document`, as the operator reads it."""
    return MailShardStatus.model_validate(merge_patch(document, through_json(status_patch(record, previous))))


# --- strategies ------------------------------------------------------------------------------------------

OFFSETS = [UTC, timezone(timedelta(hours=2)), timezone(-timedelta(hours=5, minutes=30))]
times = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.sampled_from(OFFSETS))
"""Aware times with microseconds, in any offset (the API server keeps whatever offset was written)."""
maybe_time = st.none() | times
names = st.sampled_from([A, B]) | st.text(min_size=1, max_size=12)
"""Usually the pair's members, but the record must round-trip whatever it holds."""
counts = st.none() | st.integers(min_value=0, max_value=10**9)
steps = st.none() | st.sampled_from(FailoverStep)

progresses = st.builds(
    FailoverProgress,
    source=names,
    target=names,
    planned=st.booleans(),
    forced=st.booleans(),
    started=times,
    reason=st.text(max_size=40),
    completed=steps,
    completed_at=times,
    messages_at_risk=counts,
)


@st.composite
def failover_records(draw: st.DrawFn) -> FailoverRecord:
    duration = draw(st.none() | st.floats(min_value=0, max_value=1e7, allow_nan=False, allow_infinity=False))
    return FailoverRecord(
        from_member=draw(names),
        to_member=draw(names),
        reason=draw(st.text(max_size=40)),
        started=draw(times),
        duration_seconds=duration,
        messages_at_risk=draw(counts),
        cause=draw(st.none() | st.sampled_from(FailoverCause)),
        replica_in_sync_at=draw(maybe_time),
    )


records = st.builds(
    RecordedState,
    master=st.none() | names,
    failing_since=maybe_time,
    recovering_since=maybe_time,
    uncertain_since=maybe_time,
    failover=st.none() | progresses,
    last_failover=st.none() | failover_records(),
    superseded=st.lists(names, max_size=2, unique=True).map(tuple),
)

RECONCILER_KEYS: dict[str, Json] = {
    "phase": "Healthy",
    "replica": B,
    "lagSeconds": 0.5,
    "observedGeneration": 3,
    "mailboxes": 1200,
}
"""Status keys the shard reconciler owns: the monitor's patches must leave them alone."""


# --- record: the round trip ------------------------------------------------------------------------------


@SETTINGS
@given(record=records)
def test_a_record_patched_into_a_status_reads_back_equal(record: RecordedState) -> None:
    """The patch states every owned key, null where unset; merged and validated, it reads back as `record`."""
    patch = status_patch(record)
    assert tuple(patch) == RECORD_FIELDS
    expected_unset = {
        "master": record.master is None,
        "targetMaster": record.failover is None,
        "failingSince": record.failing_since is None,
        "recoveringSince": record.recovering_since is None,
        "uncertainSince": record.uncertain_since is None,
        "failover": record.failover is None,
        "lastFailover": record.last_failover is None,
        "superseded": not record.superseded,
    }
    assert {key: value is None for key, value in patch.items()} == expected_unset
    assert patch["targetMaster"] == (record.failover.target if record.failover is not None else None)
    assert through_json(patch) == patch, "the patch must already be plain JSON"

    assert recorded_state(stored({}, record)) == record
    status = stored(RECONCILER_KEYS, record)
    assert recorded_state(status) == record
    assert status.target_master == patch["targetMaster"]
    assert status.phase == "Healthy", "the reconciler's keys are left alone"
    assert (status.replica, status.lag_seconds, status.observed_generation, status.mailboxes) == (B, 0.5, 3, 1200)


@SETTINGS
@given(previous=records, record=records, diff=st.booleans())
def test_a_record_patched_over_any_previous_record_reads_back_equal(
    previous: RecordedState, record: RecordedState, diff: bool
) -> None:
    before = stored(RECONCILER_KEYS, previous)
    assert recorded_state(before) == previous
    document = before.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert recorded_state(stored(document, record, previous if diff else None)) == record


@pytest.mark.parametrize("diff", [False, True], ids=["full", "diff"])
def test_a_switchover_after_a_failover_does_not_inherit_its_messages_at_risk(diff: bool) -> None:
    """The realistic case: an unplanned failover knew 3 messages at risk; a later switchover never knows any."""
    failover = FailoverRecord(
        from_member=A, to_member=B, reason="master down", started=T0, duration_seconds=12.0, messages_at_risk=3
    )
    switchover = FailoverRecord(
        from_member=B,
        to_member=A,
        reason=f"switchover to {A} requested",
        started=T0 + timedelta(days=1),
        duration_seconds=2.0,
    )
    previous = RecordedState(master=B, last_failover=failover)
    record = RecordedState(master=A, last_failover=switchover)
    document = stored({}, previous).model_dump(mode="json", by_alias=True, exclude_none=True)
    status = stored(document, record, previous if diff else None)
    assert status.last_failover is not None
    assert status.last_failover.messages_at_risk is None


@settings(SETTINGS, max_examples=100)
@given(previous=records, record=records)
def test_a_patch_against_the_previous_record_names_only_owned_keys_and_nothing_when_unchanged(
    previous: RecordedState, record: RecordedState
) -> None:
    assert set(status_patch(record, previous)) <= set(RECORD_FIELDS)
    assert status_patch(record, record) == {}


def test_a_merge_patch_of_a_finished_failover_deletes_the_progress_and_the_target() -> None:
    progress = FailoverProgress(
        source=A,
        target=B,
        planned=False,
        started=T0,
        reason="master down",
        completed=FailoverStep.REJOIN_OLD_MASTER,
        completed_at=T0 + timedelta(seconds=9),
        messages_at_risk=0,
    )
    during = RecordedState(master=A, failing_since=T0 - timedelta(seconds=5), failover=progress)
    done = RecordedState(
        master=B,
        last_failover=FailoverRecord(
            from_member=A, to_member=B, reason="master down", started=T0, duration_seconds=14.5, messages_at_risk=0
        ),
    )
    document = merge_patch(RECONCILER_KEYS, through_json(status_patch(during)))
    assert document["targetMaster"] == B
    assert document["failover"]["completedStep"] == "RejoinOldMaster"
    after = merge_patch(document, through_json(status_patch(done)))
    assert not {"targetMaster", "failover", "failingSince"} & set(after)
    assert after["master"] == B
    assert after["lastFailover"]["durationSeconds"] == 14.5
    assert after["phase"] == "Healthy"


@settings(SETTINGS, max_examples=100)
@given(progress=progresses)
def test_progress_status_names_the_fields_as_users_read_them(progress: FailoverProgress) -> None:
    status = progress_status(progress)
    assert (status.from_member, status.to_member, status.planned, status.forced, status.reason) == (
        progress.source,
        progress.target,
        progress.planned,
        progress.forced,
        progress.reason,
    )
    assert (status.started, status.completed_step, status.completed_at, status.messages_at_risk) == (
        progress.started,
        progress.completed,
        progress.completed_at,
        progress.messages_at_risk,
    )
    dumped = status.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert {"from", "to", "planned", "started", "reason", "completedAt"} <= set(dumped)
    assert ("completedStep" in dumped) == (progress.completed is not None)


# --- routing: the table and the decision agree -----------------------------------------------------------


@SETTINGS
@given(record=records)
def test_the_routing_table_routes_where_the_decision_does(record: RecordedState) -> None:
    """The routing builder reads `MailShardStatus.routed_member`; `decide` computes `_route_to`."""
    built = MailShardStatus(
        master=record.master, failover=None if record.failover is None else progress_status(record.failover)
    )
    assert built.routed_member == _route_to(record)


@pytest.mark.parametrize(
    ("completed", "routed"),
    [
        (None, A),
        (FailoverStep.FENCE_ROUTING, None),
        (FailoverStep.DRAIN, None),
        (FailoverStep.FENCE_OLD_MASTER, None),
        (FailoverStep.PROMOTE, None),
        (FailoverStep.RAISE_UIDNEXT, None),
        (FailoverStep.REPOINT_ROUTING, B),
        (FailoverStep.REJOIN_OLD_MASTER, B),
        (FailoverStep.RECORD, B),
    ],
)
def test_routing_follows_the_old_master_then_nobody_then_the_target(
    completed: FailoverStep | None, routed: str | None
) -> None:
    progress = FailoverProgress(A, B, False, T0, "master down", completed, T0)
    record = RecordedState(master=A, failover=progress)
    assert _route_to(record) == routed
    assert stored({}, record).routed_member == routed


# --- agent_report: one `/status` answer ------------------------------------------------------------------

RECEIVED = T0 + timedelta(seconds=30)
"""When the operator received the answer, by the operator's clock."""


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def agent_status(
    observed_at: datetime | None = RECEIVED,
    *,
    role: str | None = "replica",
    fenced: bool = False,
    daemon_up: bool = True,
    lag: float | None = 0.4,
    behind: int | None = 0,
    last_sync_age: float | None = 1.5,
    last_in_sync_age: float | None = 2.5,
    peer_seen_age: float | None = 0.75,
    summary: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A document shaped like `AgentService.status()`, its times on the agent's clock (ages before `observed_at`)."""

    def before(age: float | None) -> str | None:
        return None if observed_at is None or age is None else _iso(observed_at - timedelta(seconds=age))

    rows = summary if summary is not None else [mailbox_row("alice", "INBOX", 7, 120), mailbox_row("bob", "Sent", 9, 4)]
    return {
        "shard": "inbox-1",
        "member": B,
        "backend": "dovecot",
        "role": role,
        "fenced": fenced,
        "mode": "replica" if role == "replica" else "master",
        "readyAsMaster": daemon_up,
        "daemonUp": daemon_up,
        "daemon": {"pid": 42, "restarts": 0, "lastExit": None, "error": None},
        "configError": None,
        "roleError": None,
        "replication": {
            "strategy": "replicator",
            "state": "in-sync",
            "lagSeconds": lag,
            "lagDefinition": "seconds since the replica last held everything the master had",
            "behindMailboxes": behind,
            "divergedMailboxes": None if behind is None else 0,
            "lastSuccessfulSync": before(last_sync_age),
            "lastSuccessfulSyncTimestamp": None,
            "lastInSync": before(last_in_sync_age),
            "pendingUsers": 0,
            "failedUsers": [],
            "peerDoveadm": "ok",
            "peerAgent": "ok",
            "peerMode": "master",
            "peerSeenAt": before(peer_seen_age),
        },
        "mailboxes": {"count": len(rows), "users": len({row["user"] for row in rows}), "summary": rows},
        "observedAt": _iso(observed_at),
        "errors": [],
    }


def mailbox_row(user: str, mailbox: str, uidvalidity: int, uidnext: int) -> dict[str, Any]:
    return {
        "user": user,
        "mailbox": mailbox,
        "uidvalidity": uidvalidity,
        "uidnext": uidnext,
        "messages": uidnext - 1,
        "highestmodseq": uidnext * 3,
        "unseen": 1,
    }


def test_a_replica_answer_reads_into_the_operator_terms() -> None:
    answer = parse_agent_status(through_json(agent_status()), RECEIVED)
    assert answer.report.role is MemberRole.REPLICA
    assert (answer.report.fenced, answer.report.daemon_up, answer.daemon_ready_as_master) == (False, True, True)
    assert answer.report.peer_silence_seconds == 0.75
    assert answer.lag == LagSample(seconds=0.4, measured_at=RECEIVED, in_sync=True)
    assert not answer.lag_unbounded
    assert answer.last_in_sync == RECEIVED - timedelta(seconds=2.5)
    assert answer.last_sync == RECEIVED - timedelta(seconds=1.5)
    assert answer.report.mailboxes == (MailboxUidNext("alice/INBOX", 7, 120), MailboxUidNext("bob/Sent", 9, 4))
    assert answer.errors == ()


@pytest.mark.parametrize(
    ("role", "expected"),
    [
        ("master", MemberRole.MASTER),
        ("replica", MemberRole.REPLICA),
        (None, MemberRole.UNKNOWN),
        ("unknown", MemberRole.UNKNOWN),
        ("primary", MemberRole.UNKNOWN),
    ],
)
def test_the_role_is_master_replica_or_unknown(role: str | None, expected: MemberRole) -> None:
    assert parse_agent_status(agent_status(role=role), RECEIVED).report.role is expected


@pytest.mark.parametrize(
    ("role", "lag", "expected"),
    [
        ("replica", 0.4, LagSample(0.4, RECEIVED, in_sync=True)),
        ("replica", 0, LagSample(0.0, RECEIVED, in_sync=True)),
        ("replica", -0.2, LagSample(0.0, RECEIVED, in_sync=True)),
        ("replica", None, None),
        ("master", 0.4, None),
        (None, 0.4, None),
    ],
)
def test_a_lag_is_kept_only_from_a_replica_measured_when_received(
    role: str | None, lag: float | None, expected: LagSample | None
) -> None:
    assert parse_agent_status(agent_status(role=role, lag=lag), RECEIVED).lag == expected


@pytest.mark.parametrize(
    ("lag", "behind", "in_sync", "unbounded"),
    [
        (0.0, 0, True, False),
        # First seen behind: the lag, a lower bound, is 0 for that moment, yet the replica lacks mail.
        (0.0, 3, False, False),
        (4.0, 3, False, False),
        # Behind since before the agent first compared (a replica back on an empty volume): no bound at all.
        (None, 3, None, True),
        # Not compared at all (its master unreachable): nothing new is known, nothing known is undone.
        (None, None, None, False),
        # An agent that does not count mailboxes: a lag of 0 keeps meaning what it meant.
        (0.0, None, None, False),
    ],
)
def test_a_lag_of_zero_is_not_in_sync_while_mailboxes_are_behind(
    lag: float | None, behind: int | None, in_sync: bool | None, unbounded: bool
) -> None:
    answer = parse_agent_status(agent_status(lag=lag, behind=behind), RECEIVED)
    assert (answer.lag.in_sync if answer.lag is not None else None) == in_sync
    assert answer.lag_unbounded is unbounded
    if answer.lag is not None:
        assert answer.lag.caught_up is (lag == 0 and behind in (0, None))


def test_peer_silence_is_observed_at_minus_peer_seen_at_on_the_agent_clock() -> None:
    document = agent_status(observed_at=T0, peer_seen_age=None)
    document["replication"]["peerSeenAt"] = "2025-03-01T11:59:56.750000+00:00"
    assert parse_agent_status(document, RECEIVED).report.peer_silence_seconds == 3.25
    assert parse_agent_status(agent_status(peer_seen_age=None), RECEIVED).report.peer_silence_seconds is None
    assert parse_agent_status(agent_status(peer_seen_age=-4.0), RECEIVED).report.peer_silence_seconds == 0.0


def test_without_an_observation_time_no_age_can_be_told() -> None:
    document = agent_status()
    document["observedAt"] = None
    answer = parse_agent_status(document, RECEIVED)
    assert (answer.last_in_sync, answer.last_sync, answer.report.peer_silence_seconds) == (None, None, None)


def test_a_member_three_hours_ahead_reads_exactly_like_one_in_step() -> None:
    in_step = parse_agent_status(agent_status(observed_at=RECEIVED), RECEIVED)
    ahead = parse_agent_status(agent_status(observed_at=RECEIVED + timedelta(hours=3)), RECEIVED)
    assert ahead == in_step
    assert ahead.last_in_sync == RECEIVED - timedelta(seconds=2.5)
    assert ahead.last_sync == RECEIVED - timedelta(seconds=1.5)
    assert ahead.report.peer_silence_seconds == 0.75


maybe_ages = st.none() | st.floats(min_value=0, max_value=86_400, allow_nan=False)


@SETTINGS
@given(
    skew=st.timedeltas(min_value=-timedelta(days=2), max_value=timedelta(days=2)),
    zone=st.sampled_from(OFFSETS),
    last_sync_age=maybe_ages,
    last_in_sync_age=maybe_ages,
    peer_seen_age=maybe_ages,
)
def test_clock_skew_never_matters(
    skew: timedelta,
    zone: timezone,
    last_sync_age: float | None,
    last_in_sync_age: float | None,
    peer_seen_age: float | None,
) -> None:
    """Every agent stamp shifted by the same skew, written in any offset: the same answer, anchored at receipt."""

    def answer(observed_at: datetime) -> AgentAnswer:
        document = agent_status(
            observed_at,
            last_sync_age=last_sync_age,
            last_in_sync_age=last_in_sync_age,
            peer_seen_age=peer_seen_age,
        )
        return parse_agent_status(document, RECEIVED)

    in_step, skewed = answer(RECEIVED), answer((RECEIVED + skew).astimezone(zone))
    assert skewed == in_step
    for moment in (skewed.last_in_sync, skewed.last_sync):
        assert moment is None or moment <= RECEIVED


@pytest.mark.parametrize(
    ("user", "mailbox"),
    [("alice", "INBOX"), ("bob@example.edu", "Archive/2024"), ("ç", "Entwürfe")],
)
def test_mailboxes_are_keyed_user_slash_mailbox(user: str, mailbox: str) -> None:
    document = agent_status(summary=[mailbox_row(user, mailbox, 1_700_000_000, 88)])
    assert parse_agent_status(document, RECEIVED).report.mailboxes == (
        MailboxUidNext(f"{user}/{mailbox}", 1_700_000_000, 88),
    )


def test_an_answer_without_a_summary_has_no_mailboxes_and_an_empty_one_has_none_listed() -> None:
    document = agent_status()
    del document["mailboxes"]
    assert parse_agent_status(document, RECEIVED).report.mailboxes is None
    assert parse_agent_status(agent_status(summary=[]), RECEIVED).report.mailboxes == ()


def test_agent_errors_are_kept_as_text() -> None:
    document = agent_status()
    document["errors"] = ["doveadm sync failed", {"code": 7}]
    assert parse_agent_status(document, RECEIVED).errors == ("doveadm sync failed", "{'code': 7}")


# --- agent_report: malformed answers ---------------------------------------------------------------------

Mutation = Callable[[dict[str, Any]], None]


def _set(path: str, value: Any) -> Mutation:
    def mutate(document: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = document
        for key in parents:
            target = target[int(key)] if isinstance(target, list) else target[key]
        if isinstance(target, list):
            target[int(last)] = value
        else:
            target[last] = value

    return mutate


def _delete(key: str) -> Mutation:
    def mutate(document: dict[str, Any]) -> None:
        del document[key]

    return mutate


MALFORMED = [
    pytest.param(_delete("fenced"), "fenced", id="no-fenced"),
    pytest.param(_delete("daemonUp"), "daemonUp", id="no-daemonUp"),
    pytest.param(_set("observedAt", "2025-03-01T12:00:30"), "offset", id="naive-observedAt"),
    pytest.param(_set("observedAt", 1740830430.0), "ISO 8601", id="numeric-observedAt"),
    pytest.param(_set("observedAt", "yesterday"), "yesterday", id="garbled-observedAt"),
    pytest.param(_set("replication.peerSeenAt", "2025-03-01T12:00:29"), "offset", id="naive-peerSeenAt"),
    pytest.param(_set("mailboxes.summary", {"alice/INBOX": 120}), "summary must be a list", id="summary-not-list"),
    pytest.param(_set("mailboxes.summary.0.uidnext", "many"), "many", id="uidnext-not-int"),
    pytest.param(_set("mailboxes.summary.0.uidnext", None), "uidnext must be an integer", id="uidnext-null"),
    pytest.param(_set("mailboxes.summary.0.uidvalidity", [7]), "uidvalidity must be an integer", id="uidvalidity-list"),
    pytest.param(_set("mailboxes.summary.0", "alice/INBOX"), "string indices", id="row-not-object"),
    pytest.param(_set("replication.lagSeconds", "slow"), "slow", id="lag-not-number"),
    pytest.param(_set("errors", 5), "errors must be a list", id="errors-not-list"),
    # The service catches only MalformedAnswerError (and AgentCallError): anything else escaping
    # would fail the whole monitor tick, every tick, instead of counting one failed poll.
    pytest.param(
        _set("replication.lastInSync", "2025-03-01T12:00:28"),
        "offset",
        id="naive-lastInSync",
    ),
    pytest.param(
        _set("replication.lastSuccessfulSync", "2025-03-01T12:00:28"),
        "offset",
        id="naive-lastSuccessfulSync",
    ),
    pytest.param(
        _set("replication.lastInSync", 1740830428.0),
        "ISO 8601",
        id="numeric-lastInSync",
    ),
    pytest.param(
        _set("replication", ["in-sync"]),
        "replication",
        id="replication-not-object",
    ),
    pytest.param(
        _set("mailboxes", ["alice/INBOX"]),
        "mailboxes",
        id="mailboxes-not-object",
    ),
    pytest.param(
        _set("mailboxes.summary.0.uidnext", 120.9),
        "uidnext",
        id="uidnext-float",
    ),
    pytest.param(
        _set("mailboxes.summary.0.uidnext", "120"),
        "uidnext",
        id="uidnext-string",
    ),
]


@pytest.mark.parametrize(("mutate", "says"), MALFORMED)
def test_a_malformed_answer_is_one_clear_error(mutate: Mutation, says: str) -> None:
    document = agent_status()
    mutate(document)
    with pytest.raises(MalformedAnswerError, match="unreadable agent status") as raised:
        parse_agent_status(document, RECEIVED)
    assert says in str(raised.value)


@pytest.mark.parametrize("document", [None, [], ["role", "master"], "master", 42], ids=repr)
def test_an_answer_that_is_not_an_object_is_refused(document: Any) -> None:
    with pytest.raises(MalformedAnswerError, match=f"expected a JSON object, got {type(document).__name__}"):
        parse_agent_status(document, RECEIVED)
