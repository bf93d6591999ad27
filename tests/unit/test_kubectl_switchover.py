"""`kubectl mailshard switchover` refuses at once what the operator would refuse, reading only the shard's status."""

from __future__ import annotations

from typing import Any

import pytest
from unit_support import shard_body

from mailshard.api.v1alpha1 import MailShard
from mailshard.kubectl_plugin import PluginError, Switchover, check_switchover

pytestmark = pytest.mark.unit

A, B = "inbox-1-a", "inbox-1-b"
MAX_LAG = 30.0


def healthy(**changes: Any) -> dict[str, Any]:
    """The status of a Healthy pair, A master and B a ready replica 0.5 s behind, with `changes` laid over it."""
    status: dict[str, Any] = {
        "phase": "Healthy",
        "master": A,
        "replica": B,
        "lagSeconds": 0.5,
        "members": [
            {"name": A, "role": "master", "ready": True},
            {"name": B, "role": "replica", "ready": True, "lagSeconds": 0.5},
        ],
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "PairReady",
                "message": "both members ready",
                "lastTransitionTime": "2025-01-01T00:00:00Z",
            }
        ],
    }
    status.update(changes)
    return status


def shard(status: dict[str, Any]) -> MailShard:
    return MailShard.from_resource({**shard_body(), "status": status})


def check(status: dict[str, Any], wanted: str | None = None, pending: str | None = None) -> Switchover:
    return check_switchover(shard(status), max_lag_seconds=MAX_LAG, wanted=wanted, pending=pending)


def refusal(status: dict[str, Any], wanted: str | None = None, pending: str | None = None) -> str:
    with pytest.raises(PluginError) as refused:
        check(status, wanted, pending)
    return str(refused.value)


def test_the_replica_is_the_default_target() -> None:
    assert check(healthy()) == Switchover(shard="inbox-1", source=A, target=B, already_requested=False)
    assert check(healthy(), wanted=B) == Switchover(shard="inbox-1", source=A, target=B, already_requested=False)


def test_the_same_request_again_is_accepted_as_already_made() -> None:
    assert check(healthy(), pending=B).already_requested


def not_ready_replica() -> dict[str, Any]:
    members = [{"name": A, "role": "master", "ready": True}, {"name": B, "role": "replica", "ready": False}]
    return healthy(members=members)


def unknown_lag() -> dict[str, Any]:
    members = [{"name": A, "role": "master", "ready": True}, {"name": B, "role": "replica", "ready": True}]
    return healthy(members=members, lagSeconds=None)


def degraded() -> dict[str, Any]:
    ready = {
        "type": "Ready",
        "status": "False",
        "reason": "MemberDown",
        "message": "inbox-1-b is not ready",
        "lastTransitionTime": "2025-01-01T00:00:00Z",
    }
    return healthy(phase="Degraded", conditions=[ready])


FAILING_OVER = {
    "from": A,
    "to": B,
    "planned": False,
    "started": "2025-01-01T00:00:00Z",
    "reason": "master down",
    "completedAt": "2025-01-01T00:00:00Z",
}


@pytest.mark.parametrize(
    ("status", "wanted", "pending", "message"),
    [
        (healthy(), "nobody", None, "'nobody' is not a member of inbox-1 (its members are inbox-1-a and inbox-1-b)"),
        (healthy(), A, None, "inbox-1-a is already the master of inbox-1"),
        (healthy(master=None, replica=None), None, None, "inbox-1 has no master yet"),
        (degraded(), None, None, "inbox-1 is not Healthy (phase Degraded): inbox-1-b is not ready"),
        (healthy(phase="Fenced"), None, None, "inbox-1 is not Healthy (phase Fenced): both members ready"),
        (healthy(phase=None, conditions=[]), None, None, "inbox-1 is not Healthy (phase unset)"),
        (not_ready_replica(), None, None, "inbox-1-b is not ready"),
        (
            unknown_lag(),
            None,
            None,
            "the replication lag of inbox-1-b is unknown (its agent has not reported it), "
            "so the mail it lacks cannot be bounded",
        ),
        (
            healthy(members=[{"name": A, "ready": True}, {"name": B, "ready": True, "lagSeconds": 45.5}]),
            None,
            None,
            "inbox-1-b is 45.5 s behind its master, more than the 30 s allowed (spec.replication.maxLagSeconds)",
        ),
        (
            healthy(phase="FailingOver", failover=FAILING_OVER),
            None,
            None,
            "a failover of inbox-1 from inbox-1-a to inbox-1-b is under way",
        ),
        (healthy(), None, A, "a switchover of inbox-1 to inbox-1-a is already requested"),
        (healthy(), B, "elsewhere", "a switchover of inbox-1 to elsewhere is already requested"),
    ],
    ids=[
        "unknown-member",
        "target-is-master",
        "no-master",
        "degraded",
        "fenced",
        "no-phase",
        "replica-not-ready",
        "lag-unknown",
        "lag-beyond-bound",
        "failover-under-way",
        "a-request-the-operator-has-not-answered-yet",
        "another-request-pending",
    ],
)
def test_refusals_are_one_clear_line(
    status: dict[str, Any], wanted: str | None, pending: str | None, message: str
) -> None:
    assert refusal(status, wanted, pending) == message


def test_the_lag_bound_is_inclusive_and_the_shard_lag_counts_when_the_member_has_none() -> None:
    members = [{"name": A, "ready": True}, {"name": B, "ready": True}]
    assert check(healthy(members=members, lagSeconds=MAX_LAG)).target == B
    assert "31 s behind" in refusal(healthy(members=members, lagSeconds=31.0))
