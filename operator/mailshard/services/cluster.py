"""Reconciles a MailCluster: its routing table, its proxy tier, and its status from its shards, table and proxies.

The cluster is the front of a mail platform; its status answers "are all my
shards serving, and can every user be routed?" at a glance (`kubectl get mc`).
Each run publishes the routing table first (`services.routing`), because a
shard's master changing must reach the proxies within a second, then writes
the proxy tier (`builders.proxy`: Deployment, Service, the pods' read-only
identity), then the status, which carries the table's version and how many
proxies are ready. Every trigger (the cluster's
spec, any event of one of its shards, its overrides or routing ConfigMap, its
proxy Deployment, a periodic resync) runs the same level-based reconcile; runs for one cluster are
serialised and triggers arriving meanwhile coalesce into one more run. Like the
shard reconciler it writes only what changed.
"""

from __future__ import annotations

import datetime
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import pydantic
from kubernetes.client.exceptions import ApiException

from mailshard import __version__
from mailshard.api.v1alpha1 import ConditionStatus, MailCluster, MailClusterStatus
from mailshard.api.v1alpha1.cluster import ClusterConditionType
from mailshard.builders import Problem
from mailshard.builders.conditions import set_condition
from mailshard.builders.images import BackendImages
from mailshard.builders.names import proxy_name
from mailshard.builders.proxy import build_proxy_manifests
from mailshard.builders.routing import RoutingGaps
from mailshard.metrics import ClusterFacts, OperatorMetrics
from mailshard.services.children import ensure_children, report_changes
from mailshard.services.coalescing import Coalescer
from mailshard.services.events import EventRecorder
from mailshard.services.kube import KubeApi, Manifest
from mailshard.services.measured import measured
from mailshard.services.routing import RoutingOutcome, RoutingPublisher
from mailshard.services.users import UsersDistributor, UsersOutcome

log = logging.getLogger(__name__)

_WAITING: Final = "waiting for a human; see Stalled"


def _shard_ready(shard: Manifest) -> bool:
    conditions = (shard.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


class ClusterReconciler:
    """Keeps each MailCluster's routing table and status true to its shards. Safe to call from any thread."""

    def __init__(
        self,
        api: KubeApi,
        events: EventRecorder,
        routing: RoutingPublisher,
        *,
        metrics: OperatorMetrics | None = None,
        proxy_image: str | None = None,
        users_written: Callable[[str, str], object] | None = None,
    ) -> None:
        self.api = api
        self.users_written = users_written
        """Told (namespace, shard) after a shard's users Secret was created or changed: its members wait for it."""
        self.events = events
        self.routing = routing
        self.metrics = metrics or OperatorMetrics()
        self.proxy_image = proxy_image or BackendImages.for_version(__version__).dovecot
        self.users = UsersDistributor(api)
        self._runs: Coalescer[MailClusterStatus | None] = Coalescer()

    def reconcile(self, namespace: str, name: str) -> MailClusterStatus | None:
        """Reconcile the cluster now, or make the run already under way for it go round once more."""
        return self._runs.run((namespace, name), lambda: self._measured_reconcile(namespace, name))

    def _measured_reconcile(self, namespace: str, name: str) -> MailClusterStatus | None:
        status = measured(
            self.metrics, "MailCluster", f"{namespace}/{name}", lambda: self._reconcile_once(namespace, name)
        )
        if status is None:  # deleted, or its namespace is going: its series go with it
            self.metrics.clusters.forget(namespace, name)
        return status

    def _reconcile_once(self, namespace: str, name: str) -> MailClusterStatus | None:
        body = self.api.get("MailCluster", name, namespace)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return None
        now = datetime.datetime.now(datetime.UTC)
        generation = int(body["metadata"].get("generation", 0))
        previous = _stored_status(body)
        shards = [
            s
            for s in self.api.list("MailShard", namespace)
            if ((s.get("spec") or {}).get("clusterRef") or {}).get("name") == name
        ]
        ready = sum(1 for s in shards if _shard_ready(s))
        conditions = previous.conditions

        def put(kind: ClusterConditionType, status: ConditionStatus, reason: str, message: str) -> None:
            nonlocal conditions
            conditions = set_condition(
                conditions,
                condition_type=kind,
                status=status,
                reason=reason,
                message=message,
                observed_generation=generation,
                now=now,
            )

        try:
            cluster = MailCluster.from_resource(body)
        except pydantic.ValidationError as error:
            acted = _Acted(
                proxies=_Proxies(0, previous.proxies_ready or 0),
                problem=Problem("InvalidSpec", str(error.errors()[0]["msg"])),
            )
        else:
            acted = self._act(body, cluster, shards)
        routing, users, proxies = acted.routing, acted.users, acted.proxies
        if acted.problem is not None:
            put(ClusterConditionType.STALLED, ConditionStatus.TRUE, acted.problem.reason, acted.problem.message)
            put(ClusterConditionType.RECONCILING, ConditionStatus.FALSE, "Stalled", _WAITING)
        elif not shards:
            put(ClusterConditionType.READY, ConditionStatus.FALSE, "NoShards", "no MailShard refers to this cluster")
            put(ClusterConditionType.RECONCILING, ConditionStatus.FALSE, "Reconciled", "nothing to do")
        else:
            all_ready, reason, message = _readiness(ready, len(shards), proxies)
            put(ClusterConditionType.READY, _bool(all_ready), "ShardsReady" if all_ready else reason, message)
            put(ClusterConditionType.RECONCILING, _bool(not all_ready), "Reconciled" if all_ready else reason, message)
        if routing is not None:
            if routing.problem is not None:
                put(ClusterConditionType.STALLED, ConditionStatus.TRUE, routing.problem.reason, routing.problem.message)
                put(ClusterConditionType.RECONCILING, ConditionStatus.FALSE, "Stalled", _WAITING)
            elif acted.problem is None:  # a problem above stays Stalled even though the table went out
                put(ClusterConditionType.STALLED, ConditionStatus.FALSE, "AsExpected", "making progress")
            if routing.gaps is not None:
                put(ClusterConditionType.DEGRADED, *_routing_degraded(routing.gaps, shards))
        status = previous.model_copy(
            update={
                "shards": len(shards),
                "ready_shards": ready,
                "proxies_ready": proxies.ready,
                "users": users.users if users is not None and users.problem is None else previous.users,
                "routing_version": routing.version
                if routing is not None and routing.version is not None
                else previous.routing_version,
                "conditions": conditions,
                "observed_generation": generation,
            }
        )
        self._report(body, previous, status)
        # The same numbers as status.proxiesReady, so the alert and `kubectl get mc` never disagree.
        self.metrics.clusters.update(namespace, name, ClusterFacts(proxies.ready, proxies.wanted))
        new = status.model_dump(mode="json", by_alias=True, exclude_none=True)
        if new != previous.model_dump(mode="json", by_alias=True, exclude_none=True):
            self.api.merge_patch("MailCluster", name, namespace, {"status": new}, subresource="status")
        return status

    def _act(self, body: Manifest, cluster: MailCluster, shards: list[Manifest]) -> _Acted:
        """Publish the routing table, then give the shards their users, then keep the proxy tier."""
        namespace, name = cluster.metadata.namespace, cluster.metadata.name
        routing = self.routing.publish(body, cluster, shards)
        if routing.version is not None:
            self.metrics.routing_version.labels(namespace=namespace, cluster=name).set(routing.version)
        if routing.written_at is not None:
            self.metrics.routing_updated.labels(namespace=namespace, cluster=name).set(routing.written_at)
        users = self._distribute_users(body, cluster, routing, shards)
        refused, proxies = self._ensure_proxies(body, cluster)
        problem = Problem("InvalidSpec", refused) if refused is not None else users.problem if users else None
        return _Acted(proxies=proxies, routing=routing, users=users, problem=problem)

    def _distribute_users(
        self, body: Manifest, cluster: MailCluster, routing: RoutingOutcome, shards: list[Manifest]
    ) -> UsersOutcome | None:
        if routing.table is None:
            return None
        outcome = self.users.distribute(cluster, routing.table, shards)
        if outcome is not None and outcome.written:
            self.events.record(
                body,
                "Normal",
                "UsersDistributed",
                f"{outcome.users} users; updated the users of {', '.join(outcome.written)}"
                + (f"; {outcome.unrouted} wait for their slot to get a shard" if outcome.unrouted else ""),
            )
            for warning in outcome.warnings:
                self.events.record(body, "Warning", "UsersSkipped", warning)
            if self.users_written is not None:
                for shard in outcome.written:
                    self.users_written(cluster.metadata.namespace, shard)
        return outcome

    def _ensure_proxies(self, body: Manifest, cluster: MailCluster) -> tuple[str | None, _Proxies]:
        """Create or revert the proxy tier; (a problem for a human, or None; the Deployment's readiness)."""
        manifests = build_proxy_manifests(cluster, default_image=self.proxy_image)
        try:
            changes = ensure_children(self.api, cluster.metadata.namespace, manifests.in_apply_order())
        except ApiException as exc:
            if exc.status not in (400, 422):
                raise
            # The API refused what the spec asks for (an annotation key it does not accept, say): a spec to fix.
            return f"the API refused the proxy tier: {_api_message(exc)}", _Proxies(cluster.spec.proxy.replicas, 0)
        report_changes(self.events, body, changes)
        deployment = self.api.get("Deployment", proxy_name(cluster.metadata.name), cluster.metadata.namespace) or {}
        ready = int((deployment.get("status") or {}).get("readyReplicas") or 0)
        return None, _Proxies(wanted=cluster.spec.proxy.replicas, ready=ready)

    def _report(self, body: Manifest, previous: MailClusterStatus, status: MailClusterStatus) -> None:
        """A Warning Event when the cluster becomes Stalled, or Stalled for another reason."""
        stalled = status.condition(ClusterConditionType.STALLED)
        was = previous.condition(ClusterConditionType.STALLED)
        if (
            stalled is not None
            and stalled.status is ConditionStatus.TRUE
            and (was is None or (was.status, was.reason) != (ConditionStatus.TRUE, stalled.reason))
        ):
            self.events.record(body, "Warning", stalled.reason, stalled.message)


def _routing_degraded(gaps: RoutingGaps, shards: list[Manifest]) -> tuple[ConditionStatus, str, str]:
    """Degraded is True while users are refused for a reason that outlasts a failover."""
    if gaps.missing:
        slots = sum(count for count, _users in gaps.missing.values())
        users = sum(users for _slots, users in gaps.missing.values())
        return (
            ConditionStatus.TRUE,
            "ShardsMissing",
            f"{slots} slots and {users} overridden users route to deleted shards {', '.join(gaps.missing)}; "
            "those users get temporary errors until their mail is restored or moved and the slots reassigned",
        )
    live = [s for s in shards if not s["metadata"].get("deletionTimestamp")]
    if gaps.unassigned and live and not gaps.waiting_for:
        return (
            ConditionStatus.TRUE,
            "SlotsUnassigned",
            f"{gaps.unassigned} slots have no shard because no shard is Ready with free capacity; "
            "their users get temporary errors",
        )
    if gaps.unassigned and gaps.waiting_for:
        message = f"{gaps.unassigned} slots wait for shards {', '.join(gaps.waiting_for)} to be ready"
    elif gaps.unassigned:
        message = f"{gaps.unassigned} slots wait for a first shard"
    else:
        message = "every slot routes to a live shard"
    return ConditionStatus.FALSE, "AsExpected", message


@dataclass(frozen=True)
class _Proxies:
    wanted: int
    ready: int


@dataclass(frozen=True)
class _Acted:
    """What one run did to the cluster's children, and what a human must fix (a Stalled reason), if anything."""

    proxies: _Proxies
    routing: RoutingOutcome | None = None
    users: UsersOutcome | None = None
    problem: Problem | None = None


def _readiness(ready: int, total: int, proxies: _Proxies) -> tuple[bool, str, str]:
    """Ready once every shard is ready and at least one proxy is, when any are asked for; (ready, reason, message)."""
    message = f"{ready} of {total} shards ready"
    if proxies.wanted:
        message += f", {proxies.ready} of {proxies.wanted} proxies ready"
    if ready < total:
        return False, "ShardsNotReady", message
    if proxies.wanted and not proxies.ready:
        return False, "ProxiesNotReady", message
    return True, "ShardsReady", message


def _api_message(exc: ApiException) -> str:
    try:
        message = json.loads(exc.body or "{}").get("message")
    except (ValueError, AttributeError):
        message = None
    return str(message or exc.reason)


def _bool(value: bool) -> ConditionStatus:
    return ConditionStatus.TRUE if value else ConditionStatus.FALSE


def _stored_status(body: dict[str, Any]) -> MailClusterStatus:
    raw = {k: v for k, v in (body.get("status") or {}).items() if k != "kopf"}
    try:
        return MailClusterStatus.model_validate(raw)
    except pydantic.ValidationError:
        log.warning("ignoring an unreadable stored status of MailCluster %s", body["metadata"]["name"])
        return MailClusterStatus()
