"""The failover monitor's alarm as the reconciler sees it: a restart shows the stored alarm until the monitor speaks."""

from __future__ import annotations

import pytest

from mailshard.api.v1alpha1 import MailShardStatus
from mailshard.builders import Problem
from mailshard.services.member_views import MemberViews, shown_alarm

pytestmark = pytest.mark.unit

KEY = ("ns", "s1")


def status_with_stalled(reason: str, status: str = "True") -> MailShardStatus:
    return MailShardStatus.model_validate(
        {
            "conditions": [
                {
                    "type": "Stalled",
                    "status": status,
                    "reason": reason,
                    "message": "s1-a: its agent is silent",
                    "lastTransitionTime": "2026-12-02T13:44:21Z",
                    "observedGeneration": 1,
                }
            ]
        }
    )


def test_before_the_monitor_reports_the_alarm_shown_stands() -> None:
    views = MemberViews()
    shown = status_with_stalled("Uncertain")
    assert views.alarm(KEY, shown=shown) == Problem(reason="Uncertain", message="s1-a: its agent is silent")


def test_once_the_monitor_reports_its_word_counts_even_no_alarm() -> None:
    views = MemberViews()
    assert views.publish(KEY, {}, None) is True  # the first report is news even without an alarm
    assert views.alarm(KEY, shown=status_with_stalled("Uncertain")) is None
    assert views.publish(KEY, {}, None) is False


@pytest.mark.parametrize(
    ("reason", "status", "expected"),
    [
        ("Uncertain", "True", "Uncertain"),
        ("BothDown", "False", None),  # cleared
        ("InvalidSpec", "True", None),  # the reconciler's own problem, not an alarm of the monitor
    ],
)
def test_only_a_diagnosis_shown_as_stalled_is_an_alarm(reason: str, status: str, expected: str | None) -> None:
    found = shown_alarm(status_with_stalled(reason, status))
    assert (found.reason if found is not None else None) == expected
