"""The pure parts of the delivery journal: LMTP replies, dot-stuffing, journal entries and pruning."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailshard.agent.journal import JournalEntry, prunable, users_caught_up
from mailshard.agent.lmtp import (
    LmtpError,
    Reply,
    address_of,
    front_capabilities,
    parse_reply_lines,
    reply,
    stamp_line,
    stuff,
    unstuff,
    valid_journal_id,
)
from mailshard.agent.observe import MailboxKey, MailboxState

pytestmark = pytest.mark.unit

ID = "0123456789abcdef0123456789abcdef"


def test_a_multi_line_reply_is_one_reply() -> None:
    parsed = parse_reply_lines([b"250-mx.example\r\n", b"250-PIPELINING\r\n", b"250 8BITMIME\r\n"])
    assert parsed == Reply(250, ("mx.example", "PIPELINING", "8BITMIME"))
    assert parsed.ok
    assert not parsed.temporary


def test_a_reply_renders_back_to_its_lines() -> None:
    raw = [b"250-first\r\n", b"250 last\r\n"]
    assert parse_reply_lines(raw).render() == b"".join(raw)
    assert reply(451, "4.3.0 later").render() == b"451 4.3.0 later\r\n"
    assert reply(451, "4.3.0 later").temporary


@pytest.mark.parametrize(
    "lines",
    [
        [],
        [b"hello\r\n"],
        [b"25 short\r\n"],
        [b"250-more\r\n"],  # the last line continues
        [b"250-one\r\n", b"251 two\r\n"],  # the code changes
        [b"250 one\r\n", b"250 two\r\n"],  # a non-last line does not continue
        [b"250xjunk\r\n"],
    ],
)
def test_malformed_replies_are_refused(lines: list[bytes]) -> None:
    with pytest.raises(LmtpError):
        parse_reply_lines(lines)


def test_a_bare_code_is_a_reply() -> None:
    assert parse_reply_lines([b"250\r\n"]) == Reply(250, ("",))


@given(st.lists(st.sampled_from([b"", b".", b"..", b"a.b", b".hidden", b"text", b" "]), max_size=12))
def test_stuffing_round_trips(parts: list[bytes]) -> None:
    message = b"".join(part + b"\r\n" for part in parts)
    payload = stuff(message)
    assert payload.endswith(b".\r\n")
    lines = payload.splitlines(keepends=True)[:-1]
    assert all(line != b".\r\n" for line in lines), "no line of the body may end the data early"
    assert unstuff(lines) == message


def test_stuffing_adds_a_missing_final_line_break() -> None:
    assert stuff(b"no newline") == b"no newline\r\n.\r\n"
    assert stuff(b"") == b".\r\n"


def test_stamp_is_a_header_line() -> None:
    assert stamp_line(ID) == f"X-Mailshard-Journal: {ID}\r\n".encode()
    assert valid_journal_id(ID)
    assert not valid_journal_id("../etc/passwd")
    assert not valid_journal_id(ID.upper())


@pytest.mark.parametrize(
    ("argument", "address"),
    [("<user@example.test>", "user@example.test"), ("<a@b> SIZE=10", "a@b"), ("<>", ""), ("bare@x", "bare@x")],
)
def test_address_of(argument: str, address: str) -> None:
    assert address_of(argument) == address


def test_the_front_passes_on_only_extensions_it_implements() -> None:
    daemon = Reply(250, ("store", "8BITMIME", "ENHANCEDSTATUSCODES", "PIPELINING", "CHUNKING", "XCLIENT ADDR", "SIZE"))
    assert front_capabilities("front", daemon) == Reply(
        250, ("front", "8BITMIME", "ENHANCEDSTATUSCODES", "PIPELINING", "SIZE")
    )


def entry(delivered_at: float, entry_id: str = ID) -> JournalEntry:
    return JournalEntry(entry_id, "sender@example.test", ("user@example.test",), delivered_at)


def test_an_entry_round_trips_through_json() -> None:
    one = entry(1234.5)
    assert JournalEntry.from_json(one.to_json()) == one


@pytest.mark.parametrize(
    "change",
    [
        {"id": "not-hex"},
        {"recipients": []},
        {"recipients": "user@example.test"},
        {"recipients": [1]},
        {"deliveredAt": "yesterday"},
        {"deliveredAt": True},
        {"sender": None},
    ],
)
def test_bad_entries_are_refused(change: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=r"."):
        JournalEntry.from_json({**entry(1.0).to_json(), **change})


def test_not_an_object_is_refused() -> None:
    with pytest.raises(ValueError, match="JSON object"):
        JournalEntry.from_json([ID])


def test_only_entries_delivered_before_the_in_sync_master_observation_are_pruned() -> None:
    early, late = entry(100.0, "a" * 32), entry(105.0, "b" * 32)
    assert prunable([early, late], 104.9) == [early]
    assert prunable([early, late], 105.0) == [early]  # delivered at that instant: not provably observed
    assert prunable([early, late], 99.0) == []


def box(user: str, mailbox: str, uidnext: int, uidvalidity: int = 7) -> MailboxState:
    return MailboxState(user, mailbox, uidvalidity, uidnext, uidnext - 1, 0, 0)


def index(*states: MailboxState) -> dict[MailboxKey, MailboxState]:
    return {state.key: state for state in states}


def test_a_user_is_caught_up_when_every_mailbox_reached_the_masters_uidnext() -> None:
    master = index(
        box("Ann@x", "INBOX", 10), box("ann@x", "Sent", 3), box("bob@x", "INBOX", 5), box("cy@x", "INBOX", 4)
    )
    replica = index(
        box("Ann@x", "INBOX", 10), box("ann@x", "Sent", 3), box("bob@x", "INBOX", 4), box("cy@x", "INBOX", 4, 8)
    )
    assert users_caught_up(master, replica) == {"ann@x"}  # bob is behind; cy's mailbox was recreated (UIDVALIDITY)
    assert users_caught_up(master, index()) == set()


def test_per_user_pruning_needs_every_recipient_caught_up() -> None:
    both = JournalEntry("c" * 32, "s@x", ("ann@x", "Bob@x"), 1.0)
    ann_only = JournalEntry("d" * 32, "s@x", ("ANN@x",), 1.0)
    assert prunable([both, ann_only], 2.0, {"ann@x"}) == [ann_only]
    assert prunable([both, ann_only], 2.0, {"ann@x", "bob@x"}) == [both, ann_only]
    assert prunable([both, ann_only], 0.5, {"ann@x", "bob@x"}) == []
