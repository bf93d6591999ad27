"""Setting a condition the way metav1.Condition expects: the transition time moves only on a flip.

Tools (kstatus, `kubectl wait`, dashboards) read `lastTransitionTime` as "since
when is this so"; rewriting it on every reconcile would make every condition
look brand new. The clock is an argument, so the rule can be tested by value.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from mailshard.api.v1alpha1 import Condition, ConditionStatus


def condition_time(now: datetime) -> datetime:
    """`now` as metav1.Time stores it: UTC, whole seconds. Refuses a naive datetime."""
    if now.tzinfo is None:
        raise ValueError("condition times must be timezone-aware")
    return now.astimezone(UTC).replace(microsecond=0)


def set_condition(
    conditions: Sequence[Condition],
    *,
    condition_type: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    observed_generation: int,
    now: datetime,
) -> tuple[Condition, ...]:
    """`conditions` with the one of `condition_type` replaced (or appended), keeping the order.

    The transition time is kept when the status did not change, even if the
    reason or message did.
    """
    previous = next((c for c in conditions if c.type == condition_type), None)
    transition = previous.last_transition_time if previous and previous.status == status else condition_time(now)
    updated = Condition(
        type=str(condition_type),
        status=status,
        reason=reason,
        message=message,
        last_transition_time=transition,
        observed_generation=observed_generation,
    )
    if previous is None:
        return (*conditions, updated)
    return tuple(updated if c.type == condition_type else c for c in conditions)
