"""The rule for giving a member a new volume (`failover.volumes`), over every combination of its inputs."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from mailshard.failover.volumes import (
    ClaimState,
    MemberVolumeFacts,
    VolumeAction,
    VolumeNode,
    decide_volume,
    replaceable,
)

pytestmark = pytest.mark.unit

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
GRACE = timedelta(seconds=300)


def expected(claim: ClaimState, node: VolumeNode, not_ready_for: float | None, pod: bool, grace: bool) -> VolumeAction:
    """The module's table, written out again independently."""
    if claim in (ClaimState.MISSING, ClaimState.TERMINATING):
        return VolumeAction.RECREATE_POD if pod else VolumeAction.NONE
    if claim is not ClaimState.BOUND:
        return VolumeAction.NONE
    if node is VolumeNode.GONE:
        return VolumeAction.REPLACE_VOLUME
    if node is not VolumeNode.NOT_READY or not grace:
        return VolumeAction.NONE
    # An unknown transition time counts as "just now": the grace starts, never ends early.
    if not_ready_for is None or not_ready_for < GRACE.total_seconds():
        return VolumeAction.WAIT
    return VolumeAction.REPLACE_VOLUME


ROWS = list(
    itertools.product(
        list(ClaimState), list(VolumeNode), [None, 0.0, 299.0, 300.0, 3600.0], [True, False], [True, False]
    )
)


@pytest.mark.parametrize(("claim", "node", "not_ready_for", "pod", "grace"), ROWS)
def test_transition(claim: ClaimState, node: VolumeNode, not_ready_for: float | None, pod: bool, grace: bool) -> None:
    since = None if not_ready_for is None else NOW - timedelta(seconds=not_ready_for)
    facts = MemberVolumeFacts("inbox-1-b", claim, node, "node-2", node_not_ready_since=since, pod_exists=pod)
    decision = decide_volume(facts, grace=GRACE if grace else None, now=NOW)
    assert decision.action is expected(claim, node, not_ready_for, pod, grace)
    assert decision.member == "inbox-1-b"
    assert decision.reason
    if decision.action is VolumeAction.WAIT:
        assert decision.not_before == (since or NOW) + GRACE
    else:
        assert decision.not_before is None


@pytest.mark.parametrize(
    ("member", "routed", "serving", "allowed"),
    [
        ("inbox-1-b", "inbox-1-a", True, True),
        ("inbox-1-a", "inbox-1-a", True, False),  # the master itself: the failover comes first
        ("inbox-1-b", "inbox-1-a", False, False),  # no serving master beside it: its volume may be the only copy
        ("inbox-1-b", None, True, False),  # routing points nowhere (fenced): nothing is certain
        ("inbox-1-b", None, False, False),
    ],
)
def test_only_a_member_beside_a_serving_master_may_lose_its_volume(
    member: str, routed: str | None, serving: bool, allowed: bool
) -> None:
    # With routing pointing nowhere, `other_is_serving_master` is computed False by the service; both are checked.
    assert replaceable(member, routed=routed, other_is_serving_master=serving and routed is not None) is allowed


def test_a_node_not_ready_waits_exactly_the_grace_then_replaces() -> None:
    since = NOW - timedelta(seconds=10)
    facts = MemberVolumeFacts("m", ClaimState.BOUND, VolumeNode.NOT_READY, "node-2", node_not_ready_since=since)
    waiting = decide_volume(facts, grace=GRACE, now=NOW)
    assert waiting.action is VolumeAction.WAIT
    assert waiting.not_before == since + GRACE
    assert decide_volume(facts, grace=GRACE, now=since + GRACE).action is VolumeAction.REPLACE_VOLUME
    assert "node-2" in decide_volume(facts, grace=GRACE, now=since + GRACE).reason
