"""An agent's `/status` answer, read into the facts a failover decision takes.

Why this module exists: the agent's JSON is the boundary between two
processes that may run different versions, on nodes whose clocks differ. It
is parsed once, here, purely, so that a malformed answer becomes one clear
error (counted as a failed poll) and every time in it is converted to the
operator's clock. The agent time-stamps with its own clock; only differences
between two of its own stamps are used (`observedAt` minus `lastInSync` is an
age), then anchored at the moment the operator received the answer, so clock
skew between nodes never decides anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from mailshard.api.v1alpha1 import MemberRole
from mailshard.failover.observations import AgentReport, LagSample, MailboxUidNext


@dataclass(frozen=True)
class AgentAnswer:
    """One successful poll of an agent, in the operator's terms."""

    report: AgentReport
    lag: LagSample | None
    """The lag this member reported as a replica, if it reported one."""
    lag_unbounded: bool
    """The member compared itself with its master and lacks something older than its first comparison: no bound
    on its lag, and whatever was known about its lag before no longer holds (a replica back on an empty volume)."""
    last_in_sync: datetime | None
    """When the member last held everything its master had, in the operator's clock."""
    last_sync: datetime | None
    """When its last replication round completed, in the operator's clock (for `status.members[].lastSyncTime`)."""
    daemon_ready_as_master: bool
    errors: tuple[str, ...]


class MalformedAnswerError(ValueError):
    """The agent answered, but not with a status this operator understands."""


def parse_agent_status(document: Any, received_at: datetime) -> AgentAnswer:
    """Read one `/status` document; raise MalformedAnswerError saying what is wrong."""
    if not isinstance(document, Mapping):
        raise MalformedAnswerError(f"expected a JSON object, got {type(document).__name__}")
    try:
        observed_at = _time(document.get("observedAt"))
        role_value = document.get("role")
        role = MemberRole(role_value) if role_value in ("master", "replica") else MemberRole.UNKNOWN
        replication = _object(document.get("replication"), "replication")
        mailboxes = _object(document.get("mailboxes"), "mailboxes")
        report = AgentReport(
            role=role,
            fenced=bool(document["fenced"]),
            daemon_up=bool(document["daemonUp"]),
            peer_silence_seconds=_age(observed_at, _time(replication.get("peerSeenAt"))),
            mailboxes=_summary(mailboxes.get("summary")),
        )
        lag_value = replication.get("lagSeconds")
        behind = _optional_count(replication, "behindMailboxes")
        diverged = _optional_count(replication, "divergedMailboxes")
        in_sync = None if behind is None or diverged is None else behind == 0 and diverged == 0
        lag = None
        if lag_value is not None and role is MemberRole.REPLICA:
            lag = LagSample(seconds=max(0.0, float(lag_value)), measured_at=received_at, in_sync=in_sync)
        raw_errors = document.get("errors") or []
        if not isinstance(raw_errors, list):
            raise TypeError("errors must be a list")
        return AgentAnswer(
            report=report,
            lag=lag,
            lag_unbounded=role is MemberRole.REPLICA and lag_value is None and in_sync is False,
            last_in_sync=_anchor(received_at, _age(observed_at, _time(replication.get("lastInSync")))),
            last_sync=_anchor(received_at, _age(observed_at, _time(replication.get("lastSuccessfulSync")))),
            daemon_ready_as_master=bool(document.get("readyAsMaster")),
            errors=tuple(str(error) for error in raw_errors),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise MalformedAnswerError(f"unreadable agent status: {error!r}") from error


def _object(value: Any, name: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f"{name} must be an object, got {type(value).__name__}")
    return value


def _count(row: Mapping[str, Any], name: str) -> int:
    value = row[name]
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    return value


def _optional_count(row: Mapping[str, Any], name: str) -> int | None:
    return None if row.get(name) is None else _count(row, name)


def _time(value: Any) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"a time must be an ISO 8601 string, got {value!r}")
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError(f"a time must carry its offset, got {value!r}")
    return parsed


def _age(observed_at: datetime | None, then: datetime | None) -> float | None:
    """Seconds from `then` to the agent's own observation time, both on the agent's clock."""
    if observed_at is None or then is None:
        return None
    return max(0.0, (observed_at - then).total_seconds())


def _anchor(received_at: datetime, age: float | None) -> datetime | None:
    return None if age is None else received_at - timedelta(seconds=age)


def _summary(rows: Any) -> tuple[MailboxUidNext, ...] | None:
    if rows is None:
        return None
    if not isinstance(rows, list):
        raise TypeError("mailboxes.summary must be a list")
    return tuple(
        MailboxUidNext(
            mailbox=f"{row['user']}/{row['mailbox']}",
            uidvalidity=_count(row, "uidvalidity"),
            uidnext=_count(row, "uidnext"),
        )
        for row in rows
    )


def uidvalidity_not_kept(answer: Any) -> tuple[str, ...]:
    """The mailboxes a `POST /uidnext` answer says lack the UIDVALIDITY asked for, each with the agent's reason.

    An agent that predates mailbox creation sends no such list: nothing is said then.
    An entry that cannot be read is shown as it came, never dropped.
    """
    rows = answer.get("uidvalidityNotKept") if isinstance(answer, Mapping) else None
    if not isinstance(rows, list):
        return ()
    return tuple(
        f"{row.get('mailbox', '?')} ({row.get('why', 'no reason given')})" if isinstance(row, Mapping) else repr(row)
        for row in rows
    )
