"""Publishes each MailCluster's routing table as ConfigMap `<cluster>-routing`, only when a route changed.

The live ConfigMap is the source of truth for which shard holds which slot:
slot assignments exist nowhere else, so the operator reads them back on every
run, decides the next table with `builders.routing`, and writes it only when a
route differs (a shard's master or state, the set of shards, the overrides).
The version continues from the higher of the live table's and the MailCluster's
`status.routingVersion`, so it never goes back or repeats, even across
operator restarts. Writes carry the resourceVersion they were computed from, so
a concurrent writer makes this run start over instead of being overwritten.

The operator never invents slot assignments over ones it cannot read: a table
that is unreadable, or was deleted after it had been published, is reported as
a problem for a human and left alone, because assigning slots afresh would
send users to shards that do not hold their mail. Proxies keep routing with
the last good table they have meanwhile.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Final

import pydantic
from kubernetes.client.exceptions import ApiException

from mailshard.api.routing import (
    OVERRIDES_KEY,
    TABLE_KEY,
    OverridesError,
    RoutingTable,
    RoutingTableError,
    as_written_at,
    parse_overrides,
    parse_table,
    table_digest,
)
from mailshard.api.v1alpha1 import MailCluster, MailShard, MailShardStatus
from mailshard.builders import Problem
from mailshard.builders.names import routing_config_map_name
from mailshard.builders.routing import (
    ANNOTATION_ROUTING_DIGEST,
    RoutingGaps,
    RoutingPlan,
    ShardFacts,
    build_routing_config_map,
    plan_table,
)
from mailshard.services.events import EventRecorder
from mailshard.services.kube import KubeApi, Manifest

log = logging.getLogger(__name__)

ATTEMPTS: Final = 5
"""Runs before giving up when other writers keep changing the ConfigMap under us."""


@dataclass(frozen=True)
class RoutingOutcome:
    """What the cluster's status reports about routing."""

    version: int | None
    """The version of the live table, None when there is none."""
    gaps: RoutingGaps | None = None
    """Users the table cannot route; None when no table could be read or made."""
    problem: Problem | None = None
    """Something only a human can fix: an unusable table, or overrides that cannot be read."""
    written_at: float | None = None
    """When the live table was last written (Unix time), for the table's age; None when unknown."""
    table: RoutingTable | None = None
    """The table in force after this run; None when no table could be read or made."""


class RoutingConflictError(RuntimeError):
    """The ConfigMap kept changing under every attempt; the next trigger or resync tries again."""


class RoutingPublisher:
    """Keeps `<cluster>-routing` true to the shards and overrides. Callers serialise runs per cluster."""

    def __init__(self, api: KubeApi, events: EventRecorder) -> None:
        self.api = api
        self.events = events

    def publish(self, body: Manifest, cluster: MailCluster, shards: Sequence[Manifest]) -> RoutingOutcome:
        for _ in range(ATTEMPTS):
            outcome = self._publish_once(body, cluster, shards)
            if outcome is not None:
                return outcome
        raise RoutingConflictError(
            f"{routing_config_map_name(cluster.metadata.name)} changed under each of {ATTEMPTS} attempts"
        )

    def _publish_once(self, body: Manifest, cluster: MailCluster, shards: Sequence[Manifest]) -> RoutingOutcome | None:
        namespace = cluster.metadata.namespace
        name = routing_config_map_name(cluster.metadata.name)
        announced = cluster.status.routing_version or 0
        live = self.api.get("ConfigMap", name, namespace)
        text = ((live.get("data") or {}).get(TABLE_KEY)) if live is not None else None
        if live is None and announced > 0:
            return RoutingOutcome(version=None, problem=_lost(name, announced))
        current: RoutingTable | None = None
        if text is not None:
            try:
                current = parse_table(text)
            except RoutingTableError as error:
                return RoutingOutcome(version=None, problem=_unreadable(name, error.problems))
            if current.slot_count != cluster.spec.routing.slots:
                return RoutingOutcome(version=current.version, problem=_slot_count_mismatch(name, current, cluster))
        overrides, overrides_problem = self._overrides(cluster, current)
        edited = (
            live is not None
            and text is not None
            and (live["metadata"].get("annotations") or {}).get(ANNOTATION_ROUTING_DIGEST) != table_digest(text)
        )
        plan = plan_table(
            current,
            slot_count=cluster.spec.routing.slots,
            shards=[_facts(cluster, shard) for shard in shards],
            overrides=overrides,
            namespace=namespace,
            announced_version=announced,
            edited=edited,
        )
        table = plan.table
        if plan.publish:
            # Stamped as late as possible, so a proxy's propagation delay starts when the write does.
            table = replace(table, written_at=as_written_at(datetime.datetime.now(datetime.UTC)))
            if not self._write(cluster, table, live):
                return None
            self._report(body, plan)
        written_at = table.written_at.timestamp() if table.written_at is not None else _last_written(live)
        return RoutingOutcome(
            version=table.version,
            gaps=plan.gaps,
            problem=overrides_problem,
            written_at=written_at,
            table=table,
        )

    def _write(self, cluster: MailCluster, table: RoutingTable, live: Manifest | None) -> bool:
        """Create or update the ConfigMap; False when someone else changed it since it was read."""
        manifest = build_routing_config_map(cluster, table)
        if live is None:
            return self.api.create(manifest) is not None
        meta = manifest["metadata"]
        patch = {
            "metadata": {
                "resourceVersion": live["metadata"]["resourceVersion"],
                "labels": meta["labels"],
                "annotations": meta["annotations"],
                "ownerReferences": meta["ownerReferences"],
            },
            "data": manifest["data"],
        }
        try:
            written = self.api.merge_patch("ConfigMap", meta["name"], meta["namespace"], patch)
        except ApiException as error:
            if error.status == 409:
                return False
            raise
        return written is not None

    def _overrides(self, cluster: MailCluster, current: RoutingTable | None) -> tuple[dict[str, str], Problem | None]:
        """The user's overrides; on any problem, the ones already in the table, so no moved user moves back."""
        name = cluster.spec.routing.overrides_config_map
        if name is None:
            return {}, None
        kept = dict(current.overrides) if current is not None else {}
        keeping = "the overrides already in the routing table are kept until it is fixed"
        source = self.api.get("ConfigMap", name, cluster.metadata.namespace)
        if source is None:
            return kept, Problem(
                "OverridesNotFound", f"ConfigMap {name!r} (spec.routing.overridesConfigMap) does not exist; {keeping}"
            )
        text = (source.get("data") or {}).get(OVERRIDES_KEY)
        if text is None:
            return kept, Problem("OverridesInvalid", f"ConfigMap {name!r} has no key {OVERRIDES_KEY!r}; {keeping}")
        try:
            return parse_overrides(text), None
        except OverridesError as error:
            problems = "; ".join(error.problems[:3])
            return kept, Problem("OverridesInvalid", f"ConfigMap {name!r} key {OVERRIDES_KEY}: {problems}; {keeping}")

    def _report(self, body: Manifest, plan: RoutingPlan) -> None:
        """Events for what a human should know: slots given out, users left on a deleted shard."""
        version = plan.table.version
        if plan.assigned:
            spread = ", ".join(f"{shard} {count}" for shard, count in plan.assigned.items())
            self.events.record(
                body, "Normal", "SlotsAssigned", f"routing table version {version} gives out {spread} slots"
            )
        for shard in plan.lost:
            slots, users = plan.gaps.missing[shard]
            self.events.record(
                body,
                "Warning",
                "ShardMissing",
                f"MailShard {shard} is gone but {slots} slots and {users} overridden users still route to it "
                f"(routing table version {version}); those users get temporary errors until their mail is "
                "restored or moved and their slots reassigned",
            )
        log.info("published routing table version %s of %s", version, body["metadata"]["name"])


def _facts(cluster: MailCluster, body: Manifest) -> ShardFacts:
    meta = body["metadata"]
    raw_status = {k: v for k, v in (body.get("status") or {}).items() if k != "kopf"}
    try:
        status = MailShardStatus.model_validate(raw_status) if raw_status else None
    except pydantic.ValidationError:
        status = None
    try:
        capacity: int | None = (
            MailShard.from_resource(body).resolve(cluster.spec.shard_defaults).spec.capacity.mailboxes
        )
    except pydantic.ValidationError:
        capacity = None
    return ShardFacts(name=meta["name"], status=status, capacity=capacity, present=not meta.get("deletionTimestamp"))


def _last_written(live: Manifest | None) -> float | None:
    """The newest write time the API server recorded on the ConfigMap (managedFields), survives restarts."""
    if live is None:
        return None
    times = [entry["time"] for entry in live["metadata"].get("managedFields") or [] if entry.get("time")]
    if not times:
        return None
    newest = max(datetime.datetime.fromisoformat(t.replace("Z", "+00:00")) for t in times)
    return newest.timestamp()


def _lost(name: str, announced: int) -> Problem:
    return Problem(
        "RoutingTableLost",
        f"ConfigMap {name} was deleted after routing table version {announced} had been published. The operator "
        "will not assign the slots afresh, which would send users to shards that do not hold their mail. "
        f"Restore it from a copy, or create it empty (kubectl create configmap {name}) to have every slot "
        "assigned anew",
    )


def _unreadable(name: str, problems: Sequence[str]) -> Problem:
    listed = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
    return Problem(
        "RoutingTableInvalid",
        f"ConfigMap {name} key {TABLE_KEY} is not a usable routing table ({listed}). The operator will not "
        "overwrite the slot assignments it holds; fix it or restore the last good copy. Proxies keep the "
        "table they have",
    )


def _slot_count_mismatch(name: str, current: RoutingTable, cluster: MailCluster) -> Problem:
    return Problem(
        "RoutingSlotCountMismatch",
        f"ConfigMap {name} has {current.slot_count} slots but spec.routing.slots is {cluster.spec.routing.slots}; "
        "changing the slot count would move almost every user, so the table is left as it is",
    )
