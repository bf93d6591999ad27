"""The re-seed's time bounds: the agent's per-attempt bounds and the operator's bound on the whole call agree."""

from __future__ import annotations

import pytest

from mailshard.agent.service import RESEED_ATTEMPTS, reseed_attempt_seconds
from mailshard.services.agents import ACTION_TIMEOUT_SECONDS, RESEED_TIMEOUT_SECONDS

pytestmark = pytest.mark.unit


def test_a_first_attempt_is_cut_short_and_a_whole_copy_gets_longer() -> None:
    assert [reseed_attempt_seconds(n) for n in range(1, RESEED_ATTEMPTS + 1)] == [15.0, 60.0, 240.0]


def test_the_operator_waits_longer_than_one_users_every_attempt() -> None:
    """Else the call times out while the agent still works, and each retry queues behind the one before."""
    one_user = sum(reseed_attempt_seconds(n) for n in range(1, RESEED_ATTEMPTS + 1))
    assert one_user < RESEED_TIMEOUT_SECONDS
    assert RESEED_TIMEOUT_SECONDS > ACTION_TIMEOUT_SECONDS
