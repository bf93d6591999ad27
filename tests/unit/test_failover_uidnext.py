"""The RAISE_UIDNEXT plan: every mailbox the old master reported keeps its UIDVALIDITY, and no UID is reused.

A table of the cases one mailbox can be in (on both sides, ahead or behind;
on the new master only; on the old master only, as a new user's INBOX created
by its first delivery just before the master died; under two UIDVALIDITYs),
then properties over any two summaries, checked by applying the plan the way
the agent does (`apply`): what the old master reported ends up on the new
master with its UIDVALIDITY and a UIDNEXT above anything it reported, unless
the new master already had that mailbox under another UIDVALIDITY, which is
named, never overwritten. Last, `decide` carries the plan into the step.
"""

from __future__ import annotations

from collections.abc import Iterable

import pytest
from failover_support import POLICY, A, B, healthy_pair
from hypothesis import given, settings
from hypothesis import strategies as st

from mailshard.failover import FailoverStep, MailboxToCreate, MailboxUidNext, UidNextPlan, uidnext_plan

pytestmark = pytest.mark.unit

GAP = 100

M = MailboxUidNext

TABLE: list[tuple[str, tuple[M, ...], tuple[M, ...] | None, UidNextPlan]] = [
    (
        "the new master is behind: floor above the old master's UIDNEXT",
        (M("u/INBOX", 7, 8),),
        (M("u/INBOX", 7, 10),),
        UidNextPlan(floors={"u/INBOX": 110}),
    ),
    (
        "the new master is ahead: floor above its own",
        (M("u/INBOX", 7, 12),),
        (M("u/INBOX", 7, 10),),
        UidNextPlan(floors={"u/INBOX": 112}),
    ),
    (
        "only the new master has it: floor above its own",
        (M("u/Sent", 7, 3),),
        (),
        UidNextPlan(floors={"u/Sent": 103}),
    ),
    (
        "a new user's INBOX only the old master had: created under its UIDVALIDITY",
        (M("u/INBOX", 7, 8),),
        (M("u/INBOX", 7, 8), M("new/INBOX", 1796208920, 2)),
        UidNextPlan(floors={"u/INBOX": 108}, create={"new/INBOX": MailboxToCreate(1796208920, 102)}),
    ),
    (
        "a folder only the old master had, the user's INBOX on both",
        (M("u/INBOX", 7, 8),),
        (M("u/INBOX", 7, 9), M("u/Archive", 9, 40)),
        UidNextPlan(floors={"u/INBOX": 109}, create={"u/Archive": MailboxToCreate(9, 140)}),
    ),
    (
        "under another UIDVALIDITY on the new master: raised on its own, named, not overwritten",
        (M("u/Sent", 8, 1),),
        (M("u/Sent", 7, 50),),
        UidNextPlan(floors={"u/Sent": 101}, diverged=("u/Sent",)),
    ),
    (
        "the old master never reported: only the new master's own floors",
        (M("u/INBOX", 7, 8),),
        None,
        UidNextPlan(floors={"u/INBOX": 108}),
    ),
    ("nothing on either side", (), (), UidNextPlan()),
]


@pytest.mark.parametrize(("target", "old", "expected"), [row[1:] for row in TABLE], ids=[row[0] for row in TABLE])
def test_the_plan_for_each_case_of_one_mailbox(
    target: tuple[M, ...], old: tuple[M, ...] | None, expected: UidNextPlan
) -> None:
    assert uidnext_plan(target, old, gap=GAP) == expected


# --- properties ------------------------------------------------------------------------------------------


def apply(target: Iterable[M], plan: UidNextPlan) -> dict[str, M]:
    """The new master after the agent carried the plan out (`POST /uidnext`), as the agent's contract says.

    A floor raises an existing mailbox's UIDNEXT, never lowers it; a mailbox to
    create that exists already is only raised, and only if its UIDVALIDITY is
    the one asked for; a mailbox's UIDVALIDITY is never changed.
    """
    after = {row.mailbox: row for row in target}
    for name, floor in plan.floors.items():
        if name in after:
            row = after[name]
            after[name] = M(name, row.uidvalidity, max(row.uidnext, floor))
    for name, wanted in plan.create.items():
        existing = after.get(name)
        if existing is None:
            after[name] = M(name, wanted.uidvalidity, wanted.uidnext)
        elif existing.uidvalidity == wanted.uidvalidity:
            after[name] = M(name, existing.uidvalidity, max(existing.uidnext, wanted.uidnext))
    return after


summaries = st.lists(
    st.builds(
        M,
        mailbox=st.sampled_from(["u/INBOX", "u/Sent", "u/a/b", "v/INBOX", "w/INBOX"]),
        uidvalidity=st.integers(1, 3),
        uidnext=st.integers(1, 10_000),
    ),
    max_size=5,
    unique_by=lambda row: row.mailbox,
).map(tuple)

SETTINGS = settings(max_examples=500, database=None, deadline=None)


@SETTINGS
@given(target=summaries, old=summaries, gap=st.integers(1, 10_000))
def test_every_mailbox_the_old_master_reported_keeps_its_uidvalidity_and_no_uid_it_assigned_is_reused(
    target: tuple[M, ...], old: tuple[M, ...], gap: int
) -> None:
    plan = uidnext_plan(target, old, gap=gap)
    after = apply(target, plan)
    had = {row.mailbox: row for row in target}

    for row in old:
        now = after[row.mailbox]
        if row.mailbox in plan.diverged:
            assert had[row.mailbox].uidvalidity != row.uidvalidity
            assert now == M(row.mailbox, had[row.mailbox].uidvalidity, had[row.mailbox].uidnext + gap)
        else:
            assert now.uidvalidity == row.uidvalidity
            assert now.uidnext >= row.uidnext + gap > row.uidnext


@SETTINGS
@given(target=summaries, old=st.none() | summaries, gap=st.integers(1, 10_000))
def test_the_new_masters_mailboxes_keep_their_uidvalidity_and_only_rise(
    target: tuple[M, ...], old: tuple[M, ...] | None, gap: int
) -> None:
    plan = uidnext_plan(target, old, gap=gap)
    after = apply(target, plan)

    assert set(plan.floors) == {row.mailbox for row in target}
    assert not set(plan.create) & set(plan.floors), "a mailbox the new master has is never created again"
    assert set(plan.diverged) <= set(plan.floors)
    assert list(plan.diverged) == sorted(plan.diverged)
    for row in target:
        assert after[row.mailbox].uidvalidity == row.uidvalidity
        assert after[row.mailbox].uidnext >= row.uidnext + gap
    if old is None:
        assert (plan.create, plan.diverged) == ({}, ())


@SETTINGS
@given(target=summaries, old=summaries, gap=st.integers(1, 10_000))
def test_carrying_the_plan_out_twice_changes_nothing_more_and_a_plan_made_again_creates_nothing(
    target: tuple[M, ...], old: tuple[M, ...], gap: int
) -> None:
    plan = uidnext_plan(target, old, gap=gap)
    once = apply(target, plan)

    assert apply(once.values(), plan) == once
    again = uidnext_plan(tuple(once.values()), old, gap=gap)  # the step re-run after an operator restart
    assert again.create == {}
    assert again.diverged == plan.diverged


# --- decide carries it -----------------------------------------------------------------------------------


def test_the_raise_uidnext_step_creates_what_only_the_dead_master_had() -> None:
    pair = healthy_pair()
    pair.a.mailboxes = (M("alice/INBOX", 7, 120), M("newcomer/INBOX", 1796208920, 2))
    pair.b.mailboxes = (M("alice/INBOX", 7, 117),)
    pair.tick(-1)
    pair.a.die()

    log = pair.run(0, 7)

    raising = [d for _, d in log if d.step is FailoverStep.RAISE_UIDNEXT]
    assert len(raising) == 1
    assert (raising[0].member, raising[0].uidnext_plan) == (
        B,
        UidNextPlan(
            floors={"alice/INBOX": 120 + POLICY.uid_gap},
            create={"newcomer/INBOX": MailboxToCreate(1796208920, 2 + POLICY.uid_gap)},
        ),
    )
    assert "creating the 1 mailbox(es) only" in raising[0].reason
    assert A in raising[0].reason
    assert all(d.uidnext_plan is None for _, d in log if d.step is not FailoverStep.RAISE_UIDNEXT)
