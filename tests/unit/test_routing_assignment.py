"""Slot assignment and the table plan: who gets which slot, when a version is due, what a row says.

Properties over many inputs: filling never moves an assigned slot, gives out
every free slot when some shard can take it, only to shards that can, least-loaded
first by capacity share. Scenarios: a cluster being built, a failover, a shard
added, a shard deleted, an idle cluster. A golden file shows the ConfigMap the
examples produce.
"""

from __future__ import annotations

import difflib
import os
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from unit_support import EXAMPLES, GOLDEN, UID, dump_documents, load_resources, parse_resource

from mailshard.api import MailCluster, MailShard, MailShardStatus
from mailshard.api.routing import TABLE_KEY, RoutingTable, ShardState, parse_table, render_table, table_digest
from mailshard.builders.routing import (
    ANNOTATION_ROUTING_DIGEST,
    ShardFacts,
    build_routing_config_map,
    fill_unassigned,
    move_slots,
    plan_table,
    shard_route,
    unassign_slots,
)

pytestmark = pytest.mark.unit

NAMES = ["a-1", "b-1", "c-1", "d-1"]

# --- fill_unassigned ---------------------------------------------------------------------------------

slot_lists = st.lists(st.none() | st.sampled_from(NAMES), min_size=1, max_size=300)
weight_maps = st.dictionaries(st.sampled_from(NAMES), st.integers(1, 10_000), max_size=4)


@settings(max_examples=400, database=None)
@given(slots=slot_lists, weights=weight_maps)
def test_filling_keeps_assigned_slots_and_fills_every_free_one(
    slots: list[str | None], weights: dict[str, int]
) -> None:
    filled = fill_unassigned(slots, weights)
    assert len(filled) == len(slots)
    for before, after in zip(slots, filled, strict=True):
        if before is not None:
            assert after == before, "an assigned slot moved"
        elif weights:
            assert after in weights, "a free slot went to a shard that may not take it"
        else:
            assert after is None


@settings(max_examples=400, database=None)
@given(slots=slot_lists, weights=weight_maps)
def test_filling_is_least_loaded_by_capacity_share(slots: list[str | None], weights: dict[str, int]) -> None:
    filled = fill_unassigned(slots, weights)
    counts = Counter(owner for owner in filled if owner is not None)
    granted = Counter(a for b, a in zip(slots, filled, strict=True) if b is None and a is not None)
    for name in granted:
        for other, weight in weights.items():
            # When `name` took its last slot, no other shard would have been less loaded after taking it.
            assert counts[name] * weight <= (counts[other] + 1) * weights[name]


@settings(max_examples=200, database=None)
@given(slots=slot_lists, weights=weight_maps, added=st.sampled_from(NAMES), weight=st.integers(1, 10_000))
def test_adding_a_shard_never_moves_an_assigned_slot(
    slots: list[str | None], weights: dict[str, int], added: str, weight: int
) -> None:
    first = fill_unassigned(slots, weights)
    second = fill_unassigned(first, {**weights, added: weight})
    assert [s for s in first if s is not None] == [s for s, f in zip(second, first, strict=True) if f is not None]
    if weights:
        assert second == first, "a full table gives nothing to a new shard"


def test_a_fresh_table_is_split_by_capacity_in_contiguous_runs() -> None:
    filled = fill_unassigned([None] * 1024, {"cyrus-1": 2000, "dovecot-1": 1000})
    table = RoutingTable(version=1, slots=filled)
    assert table.runs() == [(0, 682, "cyrus-1"), (683, 1023, "dovecot-1")]


def test_filling_is_deterministic_and_follows_free_slots_in_order() -> None:
    slots = ["b-1", None, None, "a-1", None, None, None, None]
    # a-1 already holds one slot: c-1 takes the first free one, then they alternate (ties go by name),
    # ending 4 to 3; each shard's new slots are then laid out in name order over the free ones.
    assert fill_unassigned(slots, {"a-1": 1, "c-1": 1}) == ("b-1", "a-1", "a-1", "a-1", "a-1", "c-1", "c-1", "c-1")


# --- moves ----------------------------------------------------------------------------------------


def test_moves_are_explicit_and_change_only_the_named_slots() -> None:
    table = plan(None, [facts("a-1"), facts("b-1")], slot_count=8).table
    moved = move_slots(table, [0, 1, 7], "b-1")
    assert moved.slots == ("b-1", "b-1", "a-1", "a-1", "b-1", "b-1", "b-1", "b-1")
    assert moved.version == table.version
    assert unassign_slots(moved, range(4)).slots[:4] == (None,) * 4
    with pytest.raises(ValueError, match="not a live shard"):
        move_slots(table, [0], "z-9")
    with pytest.raises(ValueError, match=r"outside 0\.\.7"):
        move_slots(table, [8], "a-1")


# --- rows -----------------------------------------------------------------------------------------

NOW = "2024-05-01T12:00:00Z"


def status(
    master: str | None = "s-1-a",
    *,
    phase: str = "Healthy",
    master_ready: bool = True,
    ready: bool = True,
    target: str | None = None,
    step: str | None = None,
    mailboxes: int | None = None,
) -> MailShardStatus:
    members = [{"name": master, "ready": master_ready}] if master else []
    if target is not None:
        members.append({"name": target, "ready": True})
    progress = None
    if target is not None:
        progress = {"from": master, "to": target, "started": NOW, "reason": "master down", "completedAt": NOW}
        progress |= {"completedStep": step} if step else {}
    document: dict[str, Any] = {
        "failover": progress,
        "phase": phase,
        "master": master,
        "members": members,
        "targetMaster": target,
        "mailboxes": mailboxes,
        "conditions": [
            {"type": "Ready", "status": str(ready), "reason": "MembersReady", "lastTransitionTime": NOW},
        ],
    }
    return MailShardStatus.model_validate({k: v for k, v in document.items() if v is not None})


def facts(name: str, capacity: int = 1000, present: bool = True, **kwargs: Any) -> ShardFacts:
    return ShardFacts(name=name, status=status(f"{name}-a", **kwargs), capacity=capacity, present=present)


@pytest.mark.parametrize(
    ("shard", "state", "master"),
    [
        (ShardFacts("s-1", status()), ShardState.SERVING, "s-1-a"),
        (ShardFacts("s-1", status(phase="Degraded", ready=False)), ShardState.SERVING, "s-1-a"),  # replica lost
        (ShardFacts("s-1", status(master_ready=False, phase="Degraded", ready=False)), ShardState.UNREADY, "s-1-a"),
        # A failover routes to the old master until it fences routing, to nobody, then to the new master.
        (ShardFacts("s-1", status(phase="FailingOver", target="s-1-b")), ShardState.SERVING, "s-1-a"),
        (
            ShardFacts("s-1", status(phase="FailingOver", target="s-1-b", step="FenceRouting")),
            ShardState.FENCED,
            "s-1-a",
        ),
        (ShardFacts("s-1", status(phase="FailingOver", target="s-1-b", step="Promote")), ShardState.FENCED, "s-1-a"),
        (
            ShardFacts("s-1", status(phase="FailingOver", target="s-1-b", step="RepointRouting")),
            ShardState.SERVING,
            "s-1-b",
        ),
        (
            ShardFacts("s-1", status(phase="FailingOver", target="s-1-b", step="RejoinOldMaster")),
            ShardState.SERVING,
            "s-1-b",
        ),
        (ShardFacts("s-1", status(phase="Fenced")), ShardState.FENCED, "s-1-a"),
        (ShardFacts("s-1", status(master=None, phase="Provisioning", ready=False)), ShardState.UNREADY, None),
        (ShardFacts("s-1", None), ShardState.UNREADY, None),
        (ShardFacts("s-1", status(), present=False), ShardState.MISSING, None),
    ],
)
def test_a_row_says_where_users_go_or_why_not(shard: ShardFacts, state: ShardState, master: str | None) -> None:
    row = shard_route(shard, "mail")
    assert (row.state, row.master) == (state, master)
    if master is not None:
        assert row.master_host == f"{master}-0.{master}.mail.svc"
    if state is not ShardState.MISSING:
        assert row.endpoint == "s-1-master.mail.svc"


# --- the plan ---------------------------------------------------------------------------------------


def plan(current: RoutingTable | None, shards: list[ShardFacts], slot_count: int = 1024, **kwargs: Any) -> Any:
    return plan_table(
        current, slot_count=slot_count, shards=shards, overrides=kwargs.pop("overrides", {}), namespace="mail", **kwargs
    )


def test_filling_waits_until_no_shard_is_being_built() -> None:
    building = ShardFacts("b-1", status(master=None, phase="Provisioning", ready=False), capacity=1000)
    first = plan(None, [facts("a-1"), building])
    assert first.publish
    assert first.table.version == 1
    assert set(first.table.slots) == {None}
    assert first.gaps.waiting_for == ("b-1",)
    assert first.table.shards["b-1"].state is ShardState.UNREADY

    second = plan(first.table, [facts("a-1"), facts("b-1")])
    assert second.table.version == 2
    assert dict(second.assigned) == {"a-1": 512, "b-1": 512}
    assert second.gaps.unassigned == 0


def test_only_ready_shards_with_free_capacity_and_no_failover_take_slots() -> None:
    shards = [
        facts("a-1", capacity=100, mailboxes=100),  # full
        facts("b-1", ready=False, phase="Degraded"),  # lost a member
        facts("c-1", phase="FailingOver", target="c-1-b"),
        ShardFacts("d-1", status(), capacity=None),  # its spec cannot be resolved
        facts("e-1", present=False),
    ]
    result = plan(None, shards)
    assert set(result.table.slots) == {None}
    assert result.gaps.unassigned == 1024
    assert result.gaps.waiting_for == ()
    result = plan(None, [*shards, facts("f-1", capacity=100, mailboxes=99)])
    assert set(result.table.slots) == {"f-1"}


def test_an_unchanged_cluster_publishes_nothing() -> None:
    shards = [facts("a-1"), facts("b-1")]
    first = plan(None, shards).table
    again = plan(first, shards, announced_version=first.version)
    assert not again.publish
    assert again.table is first


def test_a_failover_changes_one_row_and_no_slot() -> None:
    before = plan(None, [facts("a-1"), facts("b-1")]).table
    failing = plan(before, [facts("a-1", phase="FailingOver", target="a-1-b", step="FenceRouting"), facts("b-1")])
    assert failing.publish
    assert failing.table.version == before.version + 1
    assert failing.table.slots == before.slots
    assert failing.table.shards["a-1"].state is ShardState.FENCED
    promoted = ShardFacts("a-1", status("a-1-b"), capacity=1000)
    after = plan(failing.table, [promoted, facts("b-1")]).table
    assert after.version == before.version + 2
    assert after.slots == before.slots
    assert after.shards["a-1"].master == "a-1-b"
    assert after.shards["b-1"] == before.shards["b-1"]


def test_a_new_shard_gets_a_row_and_no_slots() -> None:
    before = plan(None, [facts("a-1")]).table
    after = plan(before, [facts("a-1"), facts("b-1")])
    assert after.publish
    assert after.table.slots == before.slots
    assert after.table.shards["b-1"].state is ShardState.SERVING
    assert not after.assigned


def test_a_deleted_shard_keeps_its_slots_behind_a_missing_row() -> None:
    before = plan(None, [facts("a-1"), facts("b-1")], overrides={"x@example.com": "b-1"}).table
    deleting = plan(before, [facts("a-1"), facts("b-1", present=False)], overrides={"x@example.com": "b-1"})
    assert deleting.publish
    assert deleting.table.slots == before.slots
    assert deleting.table.shards["b-1"].state is ShardState.MISSING
    assert deleting.lost == ("b-1",)
    assert dict(deleting.gaps.missing) == {"b-1": (512, 1)}
    gone = plan(deleting.table, [facts("a-1")], overrides={"x@example.com": "b-1"})
    assert not gone.publish, "the MailShard vanishing after its deletion started changes no route"
    assert gone.lost == ()
    # Once nothing points at it any more, the row goes.
    emptied = unassign_slots(deleting.table, deleting.table.slots_of("b-1"))
    refilled = plan(emptied, [facts("a-1")])
    assert "b-1" not in refilled.table.shards
    assert set(refilled.table.slots) == {"a-1"}


def test_an_override_to_an_unknown_shard_is_refused_not_dropped() -> None:
    result = plan(None, [facts("a-1")], overrides={"x@example.com": "typo-1"})
    assert result.table.overrides == {"x@example.com": "typo-1"}
    assert result.table.shards["typo-1"].state is ShardState.MISSING
    assert dict(result.gaps.missing) == {"typo-1": (0, 1)}


def test_versions_continue_past_what_was_announced_and_after_edits() -> None:
    shards = [facts("a-1")]
    table = plan(None, shards).table
    behind = plan(table, shards, announced_version=9)
    assert (behind.publish, behind.table.version) == (True, 10), "a table restored from an old copy"
    edited = plan(table, shards, announced_version=table.version, edited=True)
    assert (edited.publish, edited.table.version) == (True, table.version + 1)
    fresh = plan(None, shards, announced_version=4)
    assert fresh.table.version == 5


def test_a_live_table_with_another_slot_count_is_refused() -> None:
    with pytest.raises(ValueError, match="1024 slots"):
        plan(plan(None, [facts("a-1")]).table, [facts("a-1")], slot_count=16)


# --- the ConfigMap ---------------------------------------------------------------------------------


def example_plan() -> tuple[MailCluster, RoutingTable]:
    resources = [parse_resource(d, "demo-ns") for path in sorted(EXAMPLES.glob("*.yaml")) for d in load_resources(path)]
    cluster = next(r for r in resources if isinstance(r, MailCluster))
    shards = [r for r in resources if isinstance(r, MailShard)]
    shard_facts = [
        ShardFacts(
            name=s.metadata.name,
            status=status(f"{s.metadata.name}-a"),
            capacity=s.resolve(cluster.spec.shard_defaults).spec.capacity.mailboxes,
        )
        for s in shards
    ]
    table = plan_table(
        None,
        slot_count=cluster.spec.routing.slots,
        shards=shard_facts,
        overrides={"alice@example.com": "dovecot-1"},
        namespace="demo-ns",
    ).table
    return cluster, table


def test_the_routing_config_map_matches_golden_file() -> None:
    cluster, table = example_plan()
    manifest = build_routing_config_map(cluster, table)
    assert manifest["metadata"]["ownerReferences"][0] | {"uid": UID} == {
        "apiVersion": "mailshard.io/v1alpha1",
        "kind": "MailCluster",
        "name": "demo",
        "uid": UID,
        "controller": True,
        "blockOwnerDeletion": True,
    }
    text = manifest["data"][TABLE_KEY]
    assert manifest["metadata"]["annotations"][ANNOTATION_ROUTING_DIGEST] == table_digest(text)
    assert parse_table(text) == table
    assert render_table(table) == text

    expected_path = GOLDEN / "routing.expected.yaml"
    actual = dump_documents([manifest])
    if os.environ.get("UPDATE_GOLDEN"):
        expected_path.write_text(actual)
    assert expected_path.is_file(), f"{expected_path} is missing; run with UPDATE_GOLDEN=1 to create it"
    expected = expected_path.read_text()
    if actual != expected:
        diff = "".join(difflib.unified_diff(expected.splitlines(True), actual.splitlines(True), "golden", "built"))
        pytest.fail(f"the routing ConfigMap differs from {expected_path.name} (UPDATE_GOLDEN=1 to accept):\n{diff}")


def test_condition_times_are_not_part_of_the_table() -> None:
    # Rows depend on what the shard status says, never on when: an idle resync must not change the table.
    early = ShardFacts("a-1", status("a-1-a"), capacity=1)
    later_status = status("a-1-a").model_copy(
        update={
            "conditions": tuple(
                c.model_copy(update={"last_transition_time": datetime.now(UTC)}) for c in status().conditions
            )
        }
    )
    later = ShardFacts("a-1", later_status, capacity=1)
    assert shard_route(early, "mail") == shard_route(later, "mail")
