"""When a fence annotation needs a reconcile now: kopf fires no update handler for it (our API group is its prefix)."""

from __future__ import annotations

from typing import Any

import pytest

from mailshard.api.constants import ANNOTATION_FENCED
from mailshard.services.shard import fence_request_pending

pytestmark = pytest.mark.unit

FENCED = {"type": "Stalled", "status": "True", "reason": "FencedByRequest"}
STALLED_OTHERWISE = {"type": "Stalled", "status": "True", "reason": "Uncertain"}
NOT_STALLED = {"type": "Stalled", "status": "False", "reason": "FencedByRequest"}


def shard(annotation: str | None, *conditions: dict[str, str]) -> dict[str, Any]:
    annotations = {ANNOTATION_FENCED: annotation} if annotation is not None else {}
    return {"metadata": {"name": "s", "annotations": annotations}, "status": {"conditions": list(conditions)}}


@pytest.mark.parametrize(
    ("body", "pending"),
    [
        (shard("true"), True),  # fenced by a human, status not there yet
        (shard("true", STALLED_OTHERWISE), True),
        (shard("true", NOT_STALLED), True),
        (shard("true", FENCED), False),  # shown: nothing to do
        (shard(None, FENCED), True),  # unfenced, status still fenced
        (shard("false", FENCED), True),  # only "true" fences
        (shard(None), False),
        (shard(None, STALLED_OTHERWISE), False),  # a failover's own fence is not the human's
        ({"metadata": {"name": "s"}}, False),  # no annotations, no status yet
        ({"metadata": {"name": "s", "annotations": {ANNOTATION_FENCED: "true"}}, "status": None}, True),
    ],
)
def test_a_fence_request_is_pending_until_the_status_shows_it(body: dict[str, Any], pending: bool) -> None:
    assert fence_request_pending(body) is pending
