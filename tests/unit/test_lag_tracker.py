"""The replication lag as the agent measures it (`mailshard.agent.lag`): a lower bound, or no bound at all."""

from __future__ import annotations

import pytest

from mailshard.agent.lag import LagTracker
from mailshard.agent.observe import MailboxKey, MailboxState, summary_index

pytestmark = pytest.mark.unit


def box(uidnext: int, *, user: str = "alice", mailbox: str = "INBOX", uidvalidity: int = 7) -> MailboxState:
    return MailboxState(user, mailbox, uidvalidity, uidnext, messages=uidnext - 1, highestmodseq=uidnext, unseen=0)


def index(*states: MailboxState) -> dict[MailboxKey, MailboxState]:
    return summary_index(states)


def test_a_replica_in_sync_has_a_lag_of_zero() -> None:
    reading = LagTracker().update(100.0, index(box(10)), index(box(10)))
    assert (reading.lag_seconds, reading.in_sync, reading.behind_mailboxes) == (0.0, True, 0)


def test_a_change_seen_after_the_first_comparison_ages_from_when_it_was_seen() -> None:
    tracker = LagTracker()
    tracker.update(100.0, index(box(10)), index(box(10)))
    first = tracker.update(101.0, index(box(11)), index(box(10)))
    later = tracker.update(104.0, index(box(12)), index(box(10)))
    caught = tracker.update(105.0, index(box(12)), index(box(12)))
    # Seen behind for the first time: 0, a lower bound, and not in sync.
    assert (first.lag_seconds, first.in_sync, first.behind_mailboxes) == (0.0, False, 1)
    assert (later.lag_seconds, later.in_sync) == (3.0, False)
    assert (caught.lag_seconds, caught.in_sync) == (0.0, True)


@pytest.mark.parametrize(
    ("replica", "why"),
    [
        (index(), "a replica back on an empty volume"),
        (index(box(3)), "a replica far behind when its agent started"),
        (index(box(10, uidvalidity=8)), "a mailbox under another UIDVALIDITY"),
        (index(box(10), box(2, mailbox="Old")), "a mailbox only the replica has"),
    ],
)
def test_what_the_replica_lacked_at_the_first_comparison_has_no_bound(
    replica: dict[MailboxKey, MailboxState], why: str
) -> None:
    """Counted from the first comparison, an empty replica reported a lag of 0 and was promoted (e2e tier)."""
    tracker = LagTracker()
    master = index(box(10))
    readings = [tracker.update(100.0 + second, master, replica) for second in range(3)]
    assert all(r.lag_seconds is None and not r.in_sync for r in readings), why


def test_the_bound_returns_once_the_replica_reaches_what_the_master_held_at_the_first_comparison() -> None:
    tracker = LagTracker()
    assert tracker.update(100.0, index(box(10)), index()).lag_seconds is None
    # The master moved on meanwhile; the replica reached the first position but not the later one.
    partly = tracker.update(102.0, index(box(14)), index(box(10)))
    assert (partly.lag_seconds, partly.in_sync) == (0.0, False)
    later = tracker.update(105.0, index(box(14)), index(box(12)))
    assert later.lag_seconds == 3.0


def test_a_reset_forgets_and_the_next_comparison_is_a_first_one_again() -> None:
    tracker = LagTracker()
    tracker.update(100.0, index(box(10)), index(box(10)))
    assert tracker.update(101.0, index(box(11)), index(box(10))).lag_seconds == 0.0
    tracker.reset()
    assert tracker.update(102.0, index(box(11)), index(box(10))).lag_seconds is None
