"""The failover state as the MailShard's status stores it, and back: the operator's memory across restarts.

Why this module exists: `decide` works on plain frozen values (`RecordedState`)
so that it can be tested over every input, while the status is a pydantic
model with the names users read (`targetMaster`, `failingSince`,
`failover.completedStep`). The two must round-trip exactly, or a restarted
operator would resume a different failover than the one it recorded; the
round trip is property-tested.

The failover monitor is the only writer of these fields (`RECORD_FIELDS`);
the shard reconciler reads them to compute the phase and conditions but
never writes them back, so the two never overwrite each other.
"""

from __future__ import annotations

from typing import Any, Final

from mailshard.api.v1alpha1 import FailoverProgressStatus, MailShardStatus
from mailshard.failover.observations import FailoverProgress, RecordedState

RECORD_FIELDS: Final = (
    "master",
    "targetMaster",
    "failingSince",
    "recoveringSince",
    "uncertainSince",
    "failover",
    "lastFailover",
    "superseded",
)
"""The status keys owned by the failover monitor (JSON names)."""


def recorded_state(status: MailShardStatus) -> RecordedState:
    """The failover part of a stored status."""
    progress = status.failover
    return RecordedState(
        master=status.master,
        failing_since=status.failing_since,
        recovering_since=status.recovering_since,
        uncertain_since=status.uncertain_since,
        failover=None if progress is None else _progress(progress),
        last_failover=status.last_failover,
        superseded=status.superseded,
    )


def _progress(stored: FailoverProgressStatus) -> FailoverProgress:
    return FailoverProgress(
        source=stored.from_member,
        target=stored.to_member,
        planned=stored.planned,
        started=stored.started,
        reason=stored.reason,
        completed=stored.completed_step,
        completed_at=stored.completed_at,
        messages_at_risk=stored.messages_at_risk,
        forced=stored.forced,
        serving_since=stored.serving_since,
    )


def progress_status(progress: FailoverProgress) -> FailoverProgressStatus:
    return FailoverProgressStatus.model_validate(
        {
            "from": progress.source,
            "to": progress.target,
            "planned": progress.planned,
            "forced": progress.forced,
            "started": progress.started,
            "reason": progress.reason,
            "completedStep": progress.completed,
            "completedAt": progress.completed_at,
            "messagesAtRisk": progress.messages_at_risk,
            "servingSince": progress.serving_since,
        }
    )


def status_patch(record: RecordedState, previous: RecordedState | None = None) -> dict[str, Any]:
    """A JSON merge patch of `status` that stores `record`: every owned key, null where unset.

    With `previous` (what the status holds now), only the keys that differ, so
    a write never restates, and so never undoes, a field it did not change.
    """
    patch = _full_patch(record)
    if previous is None:
        return patch
    before = _full_patch(previous)
    return {key: value for key, value in patch.items() if before[key] != value}


def _full_patch(record: RecordedState) -> dict[str, Any]:
    progress = None if record.failover is None else progress_status(record.failover)
    values: dict[str, Any] = {
        "master": record.master,
        "targetMaster": record.failover.target if record.failover is not None else None,
        "failingSince": record.failing_since,
        "recoveringSince": record.recovering_since,
        "uncertainSince": record.uncertain_since,
        # Nested fields unset are sent as null: a merge patch merges objects, so a key left out would survive.
        "failover": None if progress is None else progress.model_dump(mode="json", by_alias=True),
        "lastFailover": None
        if record.last_failover is None
        else record.last_failover.model_dump(mode="json", by_alias=True),
        "superseded": list(record.superseded) or None,
    }
    return {key: value.isoformat() if hasattr(value, "isoformat") else value for key, value in values.items()}
