"""The RaiseUidNext step on the wire: the operator's `POST /uidnext` body, the agent's reading of it, its answer.

The operator and the agent may run different versions during an upgrade, so
the agent still reads a body with floors only, refuses (400) anything it
cannot read exactly, and reads back every plan the operator can send; the
operator reads the mailboxes whose UIDVALIDITY was not kept out of the
answer, and an older agent's answer, which has no such list, says nothing.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailshard.agent.http import parse_uidnext_request
from mailshard.agent.service import NewMailbox
from mailshard.failover import MailboxToCreate, UidNextPlan
from mailshard.failover.agent_report import uidvalidity_not_kept
from mailshard.services.agents import uidnext_body

pytestmark = pytest.mark.unit


def test_a_body_with_floors_only_still_reads() -> None:
    assert parse_uidnext_request({"floors": {"u/INBOX": 9}}) == ({"u/INBOX": 9}, {})


def test_a_body_with_mailboxes_to_create_reads() -> None:
    body = {"floors": {}, "create": {"u/INBOX": {"uidvalidity": 1796208920, "uidnext": 10_002}}}
    assert parse_uidnext_request(body) == ({}, {"u/INBOX": NewMailbox(1796208920, 10_002)})


BAD_BODIES: list[tuple[str, Any]] = [
    ("no floors", {"create": {}}),
    ("floors a list", {"floors": ["u/INBOX"]}),
    ("a floor not a number", {"floors": {"u/INBOX": "x"}}),
    ("create a list", {"floors": {}, "create": ["u/INBOX"]}),
    ("no user", {"floors": {}, "create": {"/INBOX": {"uidvalidity": 1, "uidnext": 1}}}),
    ("no mailbox", {"floors": {}, "create": {"u": {"uidvalidity": 1, "uidnext": 1}}}),
    ("no UIDVALIDITY", {"floors": {}, "create": {"u/INBOX": {"uidnext": 1}}}),
    ("UIDVALIDITY 0", {"floors": {}, "create": {"u/INBOX": {"uidvalidity": 0, "uidnext": 1}}}),
    ("UIDVALIDITY past 32 bits", {"floors": {}, "create": {"u/INBOX": {"uidvalidity": 2**32, "uidnext": 1}}}),
    ("UIDVALIDITY a string", {"floors": {}, "create": {"u/INBOX": {"uidvalidity": "7", "uidnext": 1}}}),
    ("UIDVALIDITY a boolean", {"floors": {}, "create": {"u/INBOX": {"uidvalidity": True, "uidnext": 1}}}),
    ("UIDNEXT 0", {"floors": {}, "create": {"u/INBOX": {"uidvalidity": 7, "uidnext": 0}}}),
    ("a mailbox not an object", {"floors": {}, "create": {"u/INBOX": 7}}),
    ("not an object", ["floors"]),
]


@pytest.mark.parametrize("body", [row[1] for row in BAD_BODIES], ids=[row[0] for row in BAD_BODIES])
def test_a_body_that_cannot_be_read_exactly_is_refused(body: Any) -> None:
    with pytest.raises((ValueError, KeyError, TypeError, AttributeError)):
        parse_uidnext_request(body)


names = st.from_regex(r"[a-z]{1,5}(@x\.test)?/(INBOX|Sent|a/b)", fullmatch=True)
uid32 = st.integers(1, 2**32 - 1)
plans = st.builds(
    UidNextPlan,
    floors=st.dictionaries(names, uid32, max_size=4),
    create=st.dictionaries(names, st.builds(MailboxToCreate, uidvalidity=uid32, uidnext=uid32), max_size=4),
)


@settings(max_examples=300, database=None, deadline=None)
@given(plan=plans)
def test_the_agent_reads_back_every_plan_the_operator_sends(plan: UidNextPlan) -> None:
    floors, create = parse_uidnext_request(uidnext_body(plan))
    assert floors == plan.floors
    assert {name: (new.uidvalidity, new.uidnext) for name, new in create.items()} == {
        name: (new.uidvalidity, new.uidnext) for name, new in plan.create.items()
    }


def test_the_mailboxes_whose_uidvalidity_was_not_kept_are_named_with_the_agents_reason() -> None:
    answer = {
        "raised": 1,
        "uidvalidityNotKept": [
            {"mailbox": "u/INBOX", "uidvalidity": 7, "actual": 9, "why": "created here under a new UIDVALIDITY"},
            "garbled",
        ],
    }
    assert uidvalidity_not_kept(answer) == ("u/INBOX (created here under a new UIDVALIDITY)", "'garbled'")
    assert uidvalidity_not_kept({"raised": 1, "skipped": 0}) == ()  # an agent that creates nothing
    assert uidvalidity_not_kept(None) == ()
