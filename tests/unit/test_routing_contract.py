"""The routing table contract: the user → slot hash, the document, its validation, and the lookup a proxy makes.

`HASH_VECTORS` is the reference for any other implementation of the hash (the
proxy side, possibly Lua in Dovecot's auth): each row gives the login as typed,
its canonical form, the first 8 bytes of SHA-256 over that form as hex, and its
slot out of 1024.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailshard.api.routing import (
    HASH,
    OverridesError,
    RoutingTable,
    RoutingTableError,
    ShardRoute,
    ShardState,
    as_written_at,
    canonical_user,
    parse_overrides,
    parse_table,
    render_table,
    route_user,
    slot_of,
    succession_problems,
    validate_table,
)

pytestmark = pytest.mark.unit

HASH_VECTORS = [
    # login as typed,            canonical form,              sha256[:8] (hex),   slot of 1024
    ("alice@example.com", "alice@example.com", "ff8d9819fc0e12bf", 703),
    ("Alice@Example.COM", "alice@example.com", "ff8d9819fc0e12bf", 703),
    ("bob@example.com", "bob@example.com", "5ff860bf1190596c", 364),
    ("carol@example.org", "carol@example.org", "b39a07821bb2ed23", 291),
    ("dave@mail.example.net", "dave@mail.example.net", "180cfa71adcab1a9", 425),
    ("postmaster@example.com", "postmaster@example.com", "5f430884d216fa61", 609),
    ("a@b.c", "a@b.c", "d648b243a3e817ea", 1002),
    ("user0001@example.com", "user0001@example.com", "a47d28d7561e7d7a", 378),
    ("user0002@example.com", "user0002@example.com", "650ffab8fb0acde8", 488),
    ("j\u00fcrgen@example.de", "j\u00fcrgen@example.de", "433d93962222da24", 548),  # precomposed ü
    ("JU\u0308RGEN@EXAMPLE.DE", "j\u00fcrgen@example.de", "433d93962222da24", 548),  # U + combining diaeresis
    ("\u00f8sten@example.no", "\u00f8sten@example.no", "de1f5eaa92a0bae1", 737),
    ("\u03a3\u0391\u03a3@example.gr", "\u03c3\u03b1\u03c2@example.gr", "266160949bbfd792", 914),  # final sigma
    ("\u7528\u6237@\u4f8b\u5b50.\u5e7f\u544a", "\u7528\u6237@\u4f8b\u5b50.\u5e7f\u544a", "47b40c8a3b16aa23", 547),
]


@pytest.mark.parametrize(("login", "canonical", "prefix", "slot"), HASH_VECTORS)
def test_hash_vectors(login: str, canonical: str, prefix: str, slot: int) -> None:
    assert canonical_user(login) == canonical
    assert slot_of(login, 1024) == slot
    assert int(prefix, 16) % 1024 == slot, "the vector's own arithmetic"
    assert slot_of(login, 16) == int(prefix, 16) % 16


@settings(max_examples=300, database=None)
@given(user=st.text(min_size=0, max_size=40), slot_count=st.integers(1, 65536))
def test_slot_is_in_range_and_ignores_case_and_normalisation(user: str, slot_count: int) -> None:
    slot = slot_of(user, slot_count)
    assert 0 <= slot < slot_count
    assert slot_of(canonical_user(user), slot_count) == slot
    assert canonical_user(canonical_user(user)) == canonical_user(user)


@pytest.mark.parametrize("slot_count", [0, 65537])
def test_slot_count_out_of_range_is_refused(slot_count: int) -> None:
    with pytest.raises(ValueError, match="slot count"):
        slot_of("alice@example.com", slot_count)


def serving(shard: str, namespace: str = "mail", member: str = "a") -> ShardRoute:
    master = f"{shard}-{member}"
    return ShardRoute(
        state=ShardState.SERVING,
        master=master,
        master_host=f"{master}-0.{master}.{namespace}.svc",
        endpoint=f"{shard}-master.{namespace}.svc",
    )


def example_table(version: int = 7) -> RoutingTable:
    slots = ("inbox-1",) * 6 + (None,) * 2 + ("inbox-2",) * 6 + ("gone-1",) * 2
    return RoutingTable(
        version=version,
        slots=slots,
        shards={
            "inbox-1": serving("inbox-1"),
            "inbox-2": ShardRoute(
                state=ShardState.FENCED,
                master="inbox-2-b",
                master_host="inbox-2-b-0.inbox-2-b.mail.svc",
                endpoint="inbox-2-master.mail.svc",
            ),
            "gone-1": ShardRoute(state=ShardState.MISSING),
        },
        overrides={"alice@example.com": "inbox-2", "j\u00fcrgen@example.de": "inbox-1"},
    )


EXAMPLE_DOCUMENT = """\
{
  "format": 1,
  "hash": "sha256-nfc-lower",
  "version": 7,
  "slotCount": 16,
  "shards": {
    "gone-1": {"state": "missing"},
    "inbox-1": {"endpoint": "inbox-1-master.mail.svc", "master": "inbox-1-a", "masterHost": "inbox-1-a-0.inbox-1-a.mail.svc", "state": "serving"},
    "inbox-2": {"endpoint": "inbox-2-master.mail.svc", "master": "inbox-2-b", "masterHost": "inbox-2-b-0.inbox-2-b.mail.svc", "state": "fenced"}
  },
  "slots": [
    [0, 5, "inbox-1"],
    [6, 7, null],
    [8, 13, "inbox-2"],
    [14, 15, "gone-1"]
  ],
  "overrides": {
    "alice@example.com": "inbox-2",
    "j\u00fcrgen@example.de": "inbox-1"
  }
}
"""  # noqa: E501


def test_the_document_is_one_line_per_row_run_and_override() -> None:
    assert render_table(example_table()) == EXAMPLE_DOCUMENT


def test_a_failover_changes_the_version_and_one_row_only() -> None:
    before = example_table()
    after = RoutingTable(
        version=8,
        slots=before.slots,
        shards={**before.shards, "inbox-1": serving("inbox-1", member="b")},
        overrides=before.overrides,
    )
    old, new = render_table(before).splitlines(), render_table(after).splitlines()
    changed = [(a, b) for a, b in zip(old, new, strict=True) if a != b]
    assert [a.split(":")[0].strip() for a, _ in changed] == ['"version"', '"inbox-1"']


def test_the_write_time_is_one_line_after_the_version_in_utc_milliseconds_and_routes_nobody() -> None:
    berlin = datetime.timezone(datetime.timedelta(hours=2))
    written = as_written_at(datetime.datetime(2025, 6, 1, 14, 0, 0, 125999, tzinfo=berlin))
    assert written == datetime.datetime(2025, 6, 1, 12, 0, 0, 125000, tzinfo=datetime.UTC)
    table = dataclasses.replace(example_table(), written_at=written)
    text = render_table(table)
    assert text.splitlines()[3:5] == ['  "version": 7,', '  "writtenAt": "2025-06-01T12:00:00.125Z",']
    assert render_table(example_table()) == EXAMPLE_DOCUMENT  # a table without one renders as before
    assert parse_table(text) == table
    assert parse_table(text).written_at == written
    assert table.same_routes(example_table())
    later = dataclasses.replace(table, written_at=written.replace(second=9))
    assert succession_problems(table, later) == []  # the same routes written again: not a reused version


def test_an_empty_table_renders_and_parses() -> None:
    table = RoutingTable(version=1, slots=(None,) * 1024)
    text = render_table(table)
    assert '"slots": [\n    [0, 1023, null]\n  ]' in text
    assert '"shards": {}' in text
    assert parse_table(text) == table


MIN_WRITTEN, MAX_WRITTEN = datetime.datetime(2000, 1, 1), datetime.datetime(2999, 12, 31)
shard_names = st.sampled_from(["inbox-1", "inbox-2", "archive-7", "x"])
rows = st.builds(
    ShardRoute,
    state=st.sampled_from(list(ShardState)),
    master=st.just("m-a"),
    master_host=st.just("m-a-0.m-a.ns.svc"),
    endpoint=st.none() | st.just("m-master.ns.svc"),
)


@st.composite
def tables(draw: st.DrawFn) -> RoutingTable:
    shards = draw(st.dictionaries(shard_names, rows, max_size=4))
    owners = st.none() | st.sampled_from(sorted(shards)) if shards else st.none()
    slots = draw(st.lists(owners, min_size=1, max_size=64))
    users = st.text(min_size=1, max_size=12).map(canonical_user)
    overrides = draw(st.dictionaries(users, st.sampled_from(sorted(shards)), max_size=5)) if shards else {}
    written_at = draw(st.none() | st.datetimes(MIN_WRITTEN, MAX_WRITTEN, timezones=st.just(datetime.UTC)))
    return RoutingTable(
        version=draw(st.integers(1, 10**9)),
        slots=tuple(slots),
        shards=shards,
        overrides=overrides,
        written_at=as_written_at(written_at) if written_at is not None else None,
    )


@settings(max_examples=300, database=None)
@given(table=tables())
def test_rendering_round_trips_and_is_deterministic(table: RoutingTable) -> None:
    text = render_table(table)
    assert parse_table(text) == table
    assert render_table(parse_table(text)) == text
    assert validate_table(text) == []
    assert json.loads(text)["hash"] == HASH


def document(**changes: Any) -> str:
    base = json.loads(EXAMPLE_DOCUMENT)
    for key, value in changes.items():
        if value is None:
            del base[key]
        else:
            base[key] = value
    return json.dumps(base)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{not json", "not JSON"),
        ("[]", "must be a JSON object"),
        (document(format=2), "format must be 1"),
        (document(hash="crc32"), "hash must be 'sha256-nfc-lower'"),
        (document(version=0), "version must be an integer of at least 1"),
        (document(version=True), "version must be an integer"),
        (document(slotCount=None), "slotCount must be an integer"),
        (document(slots=[[0, 5, "inbox-1"], [7, 15, "inbox-2"]]), "leaves slots 6..6 out"),
        (document(slots=[[0, 9, "inbox-1"], [8, 15, "inbox-2"]]), "overlaps the run before it"),
        (document(slots=[[0, 20, "inbox-1"]]), "past the last slot"),
        (document(slots=[[0, 11, "inbox-1"]]), "slots cover 0..11 but slotCount is 16"),
        (document(slots=[[0, 15, "nowhere-9"]]), "slots 0..15 point at shard 'nowhere-9', which has no row"),
        (document(slots=[[0, 15]]), "must be [first, last, shard]"),
        (document(overrides={"bob@example.com": "nowhere-9"}), "user 'bob@example.com' points at shard 'nowhere-9'"),
        (document(overrides={"Bob@example.com": "inbox-1"}), "not in canonical form 'bob@example.com'"),
        (document(shards={"inbox-1": {"state": "asleep"}}), "state must be one of"),
        (document(shards={"Inbox_1": {"state": "missing"}}), "not a valid shard name"),
        (document(shards={"inbox-1": {"state": "serving"}}), "is serving but does not name its master"),
        (document(shards={"inbox-1": {"state": "missing", "weight": 3}}), "unknown fields ['weight']"),
        (document(writtenAt="2025-06-01T12:00:00Z"), "writtenAt must be a UTC time like"),
        (document(writtenAt="2025-06-01T12:00:00.125+02:00"), "writtenAt must be a UTC time like"),
        (document(writtenAt="2025-13-01T12:00:00.125Z"), "writtenAt must be a UTC time like"),
        (document(writtenAt=1748779200.125), "writtenAt must be a UTC time like"),
    ],
)
def test_malformed_documents_are_refused_with_a_clear_problem(text: str, expected: str) -> None:
    problems = validate_table(text)
    assert any(expected in problem for problem in problems), problems
    with pytest.raises(RoutingTableError):
        parse_table(text)


def test_every_problem_is_reported_at_once() -> None:
    problems = validate_table(document(format=9, hash="md5", overrides={"x@y": "nowhere-9"}))
    assert len(problems) == 3


def test_versions_only_move_forward() -> None:
    current = example_table(version=7)
    assert succession_problems(current, example_table(version=8)) == []
    assert succession_problems(current, example_table(version=7)) == []  # the same document again
    assert "older than the version 7" in succession_problems(current, example_table(version=6))[0]
    reused = RoutingTable(
        version=7, slots=current.slots, shards={**current.shards, "inbox-1": serving("inbox-1", member="b")}
    )
    assert "reused for different routes" in succession_problems(current, reused)[0]
    resized = RoutingTable(version=8, slots=current.slots * 2, shards=current.shards)
    assert "slotCount changed" in succession_problems(current, resized)[0]
    assert validate_table(render_table(example_table(version=6)), previous=current)


def test_a_lower_version_written_later_is_a_recreated_table_and_an_old_copy_is_not() -> None:
    at = datetime.datetime(2026, 6, 1, 12, 0, tzinfo=datetime.UTC)
    current = dataclasses.replace(example_table(version=40), written_at=at)
    recreated = dataclasses.replace(example_table(version=2), written_at=at + datetime.timedelta(milliseconds=1))
    assert succession_problems(current, recreated) == []
    old_copy = dataclasses.replace(example_table(version=39), written_at=at - datetime.timedelta(minutes=5))
    assert "older than the version 40" in succession_problems(current, old_copy)[0]
    same_moment = dataclasses.replace(example_table(version=39), written_at=at)
    assert "older than the version 40" in succession_problems(current, same_moment)[0]
    hand_written = example_table(version=39)  # no writtenAt: nothing shows it is newer
    assert "older than the version 40" in succession_problems(current, hand_written)[0]
    assert "older than the version 40" in succession_problems(example_table(version=40), recreated)[0]


@pytest.mark.parametrize(
    ("user", "shard", "host", "refusal"),
    [
        ("Alice@Example.com", "inbox-2", None, "shard inbox-2 is fenced"),  # overridden, failing over
        ("J\u00dcRGEN@example.de", "inbox-1", "inbox-1-a-0.inbox-1-a.mail.svc", None),  # overridden, serving
    ],
)
def test_overrides_win_over_slots(user: str, shard: str, host: str | None, refusal: str | None) -> None:
    decision = route_user(example_table(), user)
    assert decision.overridden
    assert (decision.shard, decision.host, decision.refusal) == (shard, host, refusal)


def test_the_lookup_follows_slot_then_row() -> None:
    table = example_table()
    for slot, owner in enumerate(table.slots):
        user = next(f"user{n}@example.com" for n in range(10_000) if slot_of(f"user{n}@example.com", 16) == slot)
        decision = route_user(table, user)
        assert (decision.slot, decision.shard, decision.overridden) == (slot, owner, False)
        if owner == "inbox-1":
            assert decision.host == "inbox-1-a-0.inbox-1-a.mail.svc"
            assert decision.refusal is None
        elif owner is None:
            assert decision.host is None
            assert decision.refusal == f"slot {slot} has no shard yet"
        else:
            assert decision.host is None
            assert decision.refusal == f"shard {owner} is {table.shards[owner].state.value}"


def test_overrides_document() -> None:
    text = "Alice@Example.com: inbox-2\n'bob@example.com': archive-7\nALICE@example.com: inbox-2\n"
    assert parse_overrides(text) == {"alice@example.com": "inbox-2", "bob@example.com": "archive-7"}
    assert parse_overrides('{"carol@example.org": "inbox-1"}') == {"carol@example.org": "inbox-1"}
    assert parse_overrides("") == {}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("alice: [inbox-1", "not YAML"),
        ("- alice", "must be a mapping"),
        ("alice@example.com: Inbox_1", "is not a shard name"),
        ("yes: inbox-1", "must be a non-empty string"),
        ("alice@example.com: inbox-1\nALICE@example.com: inbox-2", "listed twice"),
    ],
)
def test_bad_overrides_are_refused(text: str, expected: str) -> None:
    with pytest.raises(OverridesError, match=expected.replace("[", r"\[")):
        parse_overrides(text)
