"""Pure decisions about a cluster's routing table: who gets which slot, what each shard's row says, when to publish.

The service reads the live table, the shards and the overrides; everything it
then decides is decided here, so each rule is a unit test:

- **Slots are given out only while unassigned.** An assigned slot keeps its
  shard until someone moves it explicitly (`move_slots`, `unassign_slots`):
  adding a shard never moves a user, and a deleted shard keeps its slots,
  which then route to a `missing` row that proxies refuse with a temporary
  error. Users are never silently sent to a shard that does not hold their
  mail.
- **Filling waits while any shard of the cluster is still being built**
  (no status yet, Pending or Provisioning). A cluster created together with
  its shards then spreads its slots over all of them, instead of handing
  everything to whichever shard the operator happened to see ready first.
- **Who gets new slots:** shards that are Ready, not failing over, and have
  free capacity (`status.mailboxes` below the resolved `capacity.mailboxes`).
- **How many:** least-loaded first, where a shard's load is its number of
  slots divided by its `capacity.mailboxes`, so slots are shared in
  proportion to capacity. Slots are handed out one at a time to the shard
  whose load would be lowest after taking it (ties: by name); the counts are
  then laid out as contiguous runs in name order, so a table stays a few
  lines long.
- **A row per shard:** every live shard, plus a `missing` row for each
  deleted shard that slots or overrides still point at.
- **A new version** is due when the routes differ from the live table, when
  the live document was edited behind the operator's back, or when its
  version is behind the one already announced in the MailCluster's status.
  It is always one more than the highest version seen, never reused.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Any, Final

from mailshard.api.routing import TABLE_KEY, RoutingTable, ShardRoute, ShardState, render_table, table_digest
from mailshard.api.v1alpha1 import ConditionStatus, MailCluster, MailShardStatus, ShardConditionType, ShardPhase
from mailshard.builders.metadata import COMPONENT_ROUTING, cluster_object_metadata
from mailshard.builders.names import master_service_name, member_host, routing_config_map_name

ANNOTATION_ROUTING_DIGEST: Final = "mailshard.io/routing-digest"
"""SHA-256 of the document as the operator last wrote it; a mismatch means someone else edited it."""

_BEING_BUILT: Final = frozenset({None, ShardPhase.PENDING, ShardPhase.PROVISIONING})
_FAILING_OVER: Final = frozenset({ShardPhase.FAILING_OVER, ShardPhase.FENCED})


@dataclass(frozen=True)
class ShardFacts:
    """What the routing decisions need to know about one MailShard of the cluster."""

    name: str
    status: MailShardStatus | None = None
    capacity: int | None = None
    """The resolved `capacity.mailboxes`; None when the shard's spec cannot be resolved."""
    present: bool = True
    """False once the MailShard is being deleted: its users can no longer be served by it."""

    @property
    def being_built(self) -> bool:
        return self.present and (self.status is None or self.status.phase in _BEING_BUILT)

    @property
    def failing_over(self) -> bool:
        status = self.status
        return status is not None and (status.phase in _FAILING_OVER or status.failover is not None)

    @property
    def fenced(self) -> bool:
        """Whether routing must refuse this shard's users now: fenced by a human, or mid-failover before repointing."""
        status = self.status
        if status is None:
            return False
        if status.phase is ShardPhase.FENCED:
            return True
        return status.failover is not None and status.routed_member is None

    @property
    def routed_member(self) -> str | None:
        return self.status.routed_member if self.status is not None else None

    @property
    def master_ready(self) -> bool:
        status, routed = self.status, self.routed_member
        if status is None or routed is None:
            return False
        return any(member.name == routed and member.ready for member in status.members)

    @property
    def ready(self) -> bool:
        ready = self.status.condition(ShardConditionType.READY) if self.status is not None else None
        return ready is not None and ready.status is ConditionStatus.TRUE

    @property
    def has_room(self) -> bool:
        mailboxes = (self.status.mailboxes if self.status is not None else None) or 0
        return self.capacity is not None and mailboxes < self.capacity

    @property
    def takes_new_slots(self) -> bool:
        return self.present and self.ready and not self.failing_over and self.has_room


def shard_route(facts: ShardFacts, namespace: str) -> ShardRoute:
    """The row of one shard: where its users go now, or why they are refused."""
    if not facts.present:
        return ShardRoute(state=ShardState.MISSING)
    endpoint = f"{master_service_name(facts.name)}.{namespace}.svc"
    master = facts.status.master if facts.status is not None else None
    if master is None:
        return ShardRoute(state=ShardState.UNREADY, endpoint=endpoint)
    if facts.fenced:
        return ShardRoute(
            state=ShardState.FENCED, master=master, master_host=member_host(master, namespace), endpoint=endpoint
        )
    routed = facts.routed_member or master
    state = ShardState.SERVING if facts.master_ready else ShardState.UNREADY
    return ShardRoute(state=state, master=routed, master_host=member_host(routed, namespace), endpoint=endpoint)


# --- slot assignment -------------------------------------------------------------------------------


def fill_unassigned(slots: Sequence[str | None], weights: Mapping[str, int]) -> tuple[str | None, ...]:
    """Give every unassigned slot to a shard of `weights` (name → capacity), least-loaded first.

    Assigned slots are returned unchanged. With no shard to give them to, the
    unassigned slots stay unassigned.
    """
    unassigned = [slot for slot, owner in enumerate(slots) if owner is None]
    candidates = sorted(name for name, weight in weights.items() if weight > 0)
    if not unassigned or not candidates:
        return tuple(slots)
    held = Counter(owner for owner in slots if owner is not None)
    counts = {name: held[name] for name in candidates}
    # (load after taking one more slot, name): the heap top is the shard that stays least loaded.
    heap = [(Fraction(counts[name] + 1, weights[name]), name) for name in candidates]
    heapq.heapify(heap)
    granted: Counter[str] = Counter()
    for _ in unassigned:
        _load, name = heapq.heappop(heap)
        granted[name] += 1
        counts[name] += 1
        heapq.heappush(heap, (Fraction(counts[name] + 1, weights[name]), name))
    result = list(slots)
    free = iter(unassigned)
    for name in candidates:
        for _ in range(granted[name]):
            result[next(free)] = name
    return tuple(result)


def _checked(table: RoutingTable, slots: Iterable[int]) -> list[int]:
    chosen = sorted(set(slots))
    outside = [slot for slot in chosen if not 0 <= slot < table.slot_count]
    if outside:
        raise ValueError(f"slots {outside} are outside 0..{table.slot_count - 1}")
    return chosen


def move_slots(table: RoutingTable, slots: Iterable[int], shard: str) -> RoutingTable:
    """The table with `slots` given to `shard`: the one way users change shard by slot.

    Run it only after the mail of those slots' users has been moved. The version
    is left as it is; publishing the result gives it the next one.
    """
    if shard not in table.shards or table.shards[shard].state is ShardState.MISSING:
        raise ValueError(f"shard {shard!r} is not a live shard of this table")
    chosen = _checked(table, slots)
    new = list(table.slots)
    for slot in chosen:
        new[slot] = shard
    return replace(table, slots=tuple(new))


def unassign_slots(table: RoutingTable, slots: Iterable[int]) -> RoutingTable:
    """The table with `slots` unassigned, for the operator to give out anew (e.g. a deleted shard's empty slots)."""
    chosen = _checked(table, slots)
    new = list(table.slots)
    for slot in chosen:
        new[slot] = None
    return replace(table, slots=tuple(new))


# --- the plan ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RoutingGaps:
    """Users the table cannot route right now for a reason that outlasts a failover."""

    unassigned: int = 0
    """Slots with no shard."""
    waiting_for: tuple[str, ...] = ()
    """Shards still being built, which filling the unassigned slots waits for."""
    missing: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    """Deleted shard → (slots, overridden users) still routed to it."""


@dataclass(frozen=True)
class RoutingPlan:
    """The table to publish (or the live one, unchanged) and what changed on the way."""

    table: RoutingTable
    publish: bool
    assigned: Mapping[str, int] = field(default_factory=dict)
    """Slots newly given to each shard."""
    lost: tuple[str, ...] = ()
    """Shards whose rows turn `missing` in this version while users still route to them."""
    gaps: RoutingGaps = field(default_factory=RoutingGaps)


def plan_table(
    current: RoutingTable | None,
    *,
    slot_count: int,
    shards: Sequence[ShardFacts],
    overrides: Mapping[str, str],
    namespace: str,
    announced_version: int = 0,
    edited: bool = False,
) -> RoutingPlan:
    """The table the cluster should have now, given the live one (None: there is none yet).

    `announced_version` is the MailCluster's `status.routingVersion`, so the
    sequence continues even past a table restored from an old copy; `edited`
    says the live document is not the one the operator wrote.
    """
    if current is not None and current.slot_count != slot_count:
        raise ValueError(f"the live table has {current.slot_count} slots, the cluster {slot_count}")
    slots = current.slots if current is not None else (None,) * slot_count
    waiting = tuple(sorted(f.name for f in shards if f.being_built))
    if not waiting:
        weights = {f.name: f.capacity for f in shards if f.takes_new_slots and f.capacity is not None}
        before = slots
        slots = fill_unassigned(slots, weights)
        assigned = Counter(new for old, new in zip(before, slots, strict=True) if old is None and new is not None)
    else:
        assigned = Counter()

    rows = {f.name: shard_route(f, namespace) for f in shards if f.present}
    slot_holders = Counter(owner for owner in slots if owner is not None)
    override_holders = Counter(overrides.values())
    for name in (set(slot_holders) | set(override_holders)) - set(rows):
        rows[name] = ShardRoute(state=ShardState.MISSING)
    missing = {
        name: (slot_holders[name], override_holders[name])
        for name, row in sorted(rows.items())
        if row.state is ShardState.MISSING
    }

    highest = max(current.version if current is not None else 0, announced_version)
    table = RoutingTable(version=highest, slots=slots, shards=rows, overrides=dict(overrides))
    unchanged = (
        current is not None and not edited and current.version >= announced_version and table.same_routes(current)
    )
    publish = not unchanged
    table = current if unchanged and current is not None else replace(table, version=highest + 1)
    was_missing = {
        name for name, row in (current.shards.items() if current is not None else ()) if row.state is ShardState.MISSING
    }
    unassigned = sum(1 for owner in slots if owner is None)
    return RoutingPlan(
        table=table,
        publish=publish,
        assigned=dict(sorted(assigned.items())),
        lost=tuple(name for name in missing if name not in was_missing) if publish else (),
        gaps=RoutingGaps(unassigned=unassigned, waiting_for=waiting if unassigned else (), missing=missing),
    )


def build_routing_config_map(cluster: MailCluster, table: RoutingTable) -> dict[str, Any]:
    """ConfigMap `<cluster>-routing`: the document, and the digest that tells the operator's writes from others'."""
    text = render_table(table)
    metadata = cluster_object_metadata(cluster, routing_config_map_name(cluster.metadata.name), COMPONENT_ROUTING)
    metadata["annotations"] = {ANNOTATION_ROUTING_DIGEST: table_digest(text)}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": {TABLE_KEY: text}}
