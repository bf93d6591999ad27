"""What the failover monitor learnt about each shard, shared with the shard reconciler in memory.

Why this module exists: two services look at a shard. The reconciler builds
and reports it (its phase, conditions and members in status); the failover
monitor polls its agents every second and acts. The status must show what the
agents said (each member's role and lag) and why the monitor will not act (an
alarm), but only one of them may write each status field. So the monitor
leaves its findings here, and the reconciler, the writer of those fields,
reads them. In the other direction the reconciler, which resolves the shard's
spec against its MailCluster anyway, leaves the failover policy here, so the
monitor never reads the MailCluster on its one-second path.

Everything is keyed by (namespace, shard) and guarded by one lock: the
reconciler runs in kopf's thread pool, the monitor on the event loop.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime

from mailshard.api.v1alpha1 import ConditionStatus, MailShardStatus, MemberRole, ShardConditionType
from mailshard.builders import Problem
from mailshard.failover import Diagnosis, FailoverPolicy

ShardKey = tuple[str, str]


@dataclass(frozen=True)
class MemberView:
    """One member as its agent last described it, while that description is fresh."""

    role: MemberRole
    lag_seconds: float | None = None
    last_sync_time: datetime | None = None


@dataclass(frozen=True)
class ShardSettings:
    """What the monitor needs from the resolved spec."""

    policy: FailoverPolicy
    cluster: str | None
    secret: str
    """The Secret holding the agents' API token."""
    agent_port: int


@dataclass
class _Entry:
    members: dict[str, MemberView] = field(default_factory=dict)
    alarm: Problem | None = None
    reported: bool = False
    """Whether the monitor has published since this operator started; until then its alarm is the status's."""
    settings: ShardSettings | None = None


class MemberViews:
    """The in-memory exchange between the reconciler and the failover monitor (see the module docstring)."""

    def __init__(self) -> None:
        self._entries: dict[ShardKey, _Entry] = {}
        self._lock = threading.Lock()

    def _entry(self, key: ShardKey) -> _Entry:
        return self._entries.setdefault(key, _Entry())

    def publish(self, key: ShardKey, members: dict[str, MemberView], alarm: Problem | None) -> bool:
        """Store the monitor's findings; True when they differ from the previous ones (the status must change)."""
        with self._lock:
            entry = self._entry(key)
            changed = entry.members != members or entry.alarm != alarm
            changed = changed or not entry.reported
            entry.members, entry.alarm, entry.reported = dict(members), alarm, True
            return changed

    def members(self, key: ShardKey) -> dict[str, MemberView]:
        with self._lock:
            entry = self._entries.get(key)
            return dict(entry.members) if entry is not None else {}

    def alarm(self, key: ShardKey, shown: MailShardStatus | None = None) -> Problem | None:
        """The monitor's alarm; before a monitor started since this operator has reported, the one `shown` has.

        A restarted operator reconciles each shard at once, before its monitor has polled anyone: an alarm
        cleared then and raised again a few seconds later would be two status writes and an Event for nothing.
        """
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry.reported:
                return entry.alarm
        return shown_alarm(shown) if shown is not None else None

    def set_settings(self, key: ShardKey, settings: ShardSettings) -> None:
        with self._lock:
            self._entry(key).settings = settings

    def settings(self, key: ShardKey) -> ShardSettings | None:
        with self._lock:
            entry = self._entries.get(key)
            return entry.settings if entry is not None else None

    def forget(self, key: ShardKey) -> None:
        with self._lock:
            self._entries.pop(key, None)


_DIAGNOSES = frozenset(diagnosis.value for diagnosis in Diagnosis)


def shown_alarm(status: MailShardStatus) -> Problem | None:
    """The failover monitor's alarm a status shows: a Stalled condition whose reason is a diagnosis."""
    stalled = status.condition(ShardConditionType.STALLED)
    if stalled is None or stalled.status is not ConditionStatus.TRUE or stalled.reason not in _DIAGNOSES:
        return None
    return Problem(reason=stalled.reason or "", message=stalled.message or "")
