"""Reconciles one MailShard into its pair of members: level-based, idempotent, write-free when nothing changed.

Every trigger (the shard's own spec changing, a periodic resync, any change to
an object the shard owns) runs the same `reconcile`: read the shard afresh,
work out what should exist, compare it with what does, and write only the
difference. So a missed trigger is repaired by the next one, a manually edited
or deleted child is put back, and an unchanged shard costs reads only.

A spec that passes the schema but cannot be acted on (no MailCluster, a
StorageClass that does not exist, a storage size below what is provisioned)
becomes a Stalled condition and a Warning Event; the shard is retried on the
next resync and every other shard keeps being served.
"""

from __future__ import annotations

import datetime
import logging
import secrets
from typing import Any, Final

import pydantic

from mailshard import __version__
from mailshard.api.constants import AGENT_PORT, ANNOTATION_FENCED, LABEL_ROLE, LABEL_SHARD
from mailshard.api.quantity import parse_quantity
from mailshard.api.v1alpha1 import (
    MailCluster,
    MailShard,
    MailShardStatus,
    MemberRole,
    ResolvedShard,
    ShardConditionType,
    ShardPhase,
    member_names,
)
from mailshard.builders import (
    BackendImages,
    MemberObservation,
    Problem,
    ShardCredentials,
    ShardObservation,
    build_replication_secret,
    build_shard_manifests,
    compute_shard_status,
    failed_status,
)
from mailshard.builders.names import pod_name, replication_secret_name, users_secret_name, volume_claim_name
from mailshard.failover import FailoverPolicy
from mailshard.failover.record import RECORD_FIELDS
from mailshard.metrics import OperatorMetrics, ShardFacts
from mailshard.services.children import ChildChanges, ensure_children, report_changes
from mailshard.services.coalescing import Coalescer
from mailshard.services.events import EventRecorder, EventType
from mailshard.services.kube import KubeApi, Manifest, pod_ready
from mailshard.services.measured import measured
from mailshard.services.member_views import MemberViews, ShardSettings
from mailshard.services.volumes import VolumeRecovery

log = logging.getLogger(__name__)

DEFAULT_STORAGE_CLASS_ANNOTATION: Final = "storageclass.kubernetes.io/is-default-class"


class UnactionableSpecError(Exception):
    """The shard's spec cannot be acted on; carries the condition reason and message."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.problem = Problem(reason=reason, message=message)


class ShardReconciler:
    """Brings shards to their desired state. Safe to call from any thread, any number of times."""

    def __init__(
        self,
        api: KubeApi,
        events: EventRecorder,
        *,
        images: BackendImages | None = None,
        metrics: OperatorMetrics | None = None,
        views: MemberViews | None = None,
    ) -> None:
        self.api = api
        self.events = events
        self.views = views or MemberViews()
        """Shared with the failover monitor: what the agents said, and the policy it needs from the spec."""
        self.metrics = metrics or OperatorMetrics()
        self.images = images or BackendImages.for_version(__version__)
        self._runs: Coalescer[MailShardStatus | None] = Coalescer()
        self.volumes = VolumeRecovery(api, events, self.views)

    # ------------------------------------------------------------ triggers

    def reconcile(self, namespace: str, name: str) -> MailShardStatus | None:
        """Reconcile the shard now, or make the reconcile already running for it go round once more."""
        return self._runs.run((namespace, name), lambda: self._measured_reconcile(namespace, name))

    def _measured_reconcile(self, namespace: str, name: str) -> MailShardStatus | None:
        status = measured(
            self.metrics, "MailShard", f"{namespace}/{name}", lambda: self._reconcile_once(namespace, name)
        )
        if status is None:
            self.metrics.shards.forget(namespace, name)
        else:
            phase = status.phase.value if status.phase is not None else None
            self.metrics.shards.update(namespace, name, ShardFacts(phase=phase, lag_seconds=status.lag_seconds))
        return status

    def forget(self, namespace: str, name: str) -> None:
        self._runs.forget((namespace, name))

    # ----------------------------------------------------------- reconcile

    def _reconcile_once(self, namespace: str, name: str) -> MailShardStatus | None:
        body = self.api.get("MailShard", name, namespace)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return None
        previous = _stored_status(body)
        now = datetime.datetime.now(datetime.UTC)
        generation = int(body["metadata"].get("generation", 0))
        try:
            shard, named_users = self._resolve(body)
            self._share_settings(shard)
            master = self._choose_master(shard, previous)
            routed = previous.routed_member if previous is not None and previous.master is not None else master
            self._ensure_secret(shard)
            superseded = previous.superseded if previous is not None else ()
            hold = named_users and self.api.get("Secret", users_secret_name(shard.name), shard.namespace) is None
            changes = self._ensure_children(shard, master, superseded, hold_new_members=hold)
            self._ensure_volume_sizes(shard)
            self._ensure_pod_roles(shard, routed)
            self.volumes.recover(body, shard, previous, {p["metadata"]["name"]: p for p in self._pods(shard)})
            observation = self._observe(shard, master, previous, fenced=_fence_request(body))
            status = compute_shard_status(observation, previous=previous, now=now)
        except UnactionableSpecError as failure:
            status = failed_status(previous, generation=generation, problem=failure.problem, now=now)
            changes = ChildChanges()
        self._report(body, previous, status, changes=changes)
        self._write_status(body, previous, status)
        return status

    def _resolve(self, body: Manifest) -> tuple[ResolvedShard, bool]:
        """The shard's settings over its cluster's defaults, and whether the cluster names users (`spec.users`)."""
        try:
            shard = MailShard.from_resource(body)
        except pydantic.ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            raise UnactionableSpecError("InvalidSpec", f"{where}: {first['msg']}") from error
        ref = shard.spec.cluster_ref
        if ref is None:
            raise UnactionableSpecError(
                "ClusterRefMissing",
                "spec.clusterRef is required: a shard serves users only through a MailCluster's proxies",
            )
        cluster_body = self.api.get("MailCluster", ref.name, shard.metadata.namespace)
        if cluster_body is None:
            raise UnactionableSpecError(
                "ClusterNotFound",
                f"MailCluster {ref.name!r} (spec.clusterRef) does not exist in namespace {shard.metadata.namespace}",
            )
        try:
            cluster = MailCluster.from_resource(cluster_body)
        except pydantic.ValidationError as error:
            raise UnactionableSpecError(
                "ClusterInvalid", f"MailCluster {ref.name!r} cannot be parsed: {error}"
            ) from error
        resolved = shard.resolve(cluster.spec.shard_defaults)
        self._check_storage_class(resolved)
        return resolved, cluster.spec.users is not None

    def _check_storage_class(self, shard: ResolvedShard) -> None:
        wanted = shard.spec.storage.storage_class_name
        if wanted is not None:
            if self.api.get("StorageClass", wanted) is None:
                raise UnactionableSpecError(
                    "StorageClassNotFound", f"StorageClass {wanted!r} (spec.storage.storageClassName) does not exist"
                )
            return
        classes = self.api.list("StorageClass")
        if not any(
            (c["metadata"].get("annotations") or {}).get(DEFAULT_STORAGE_CLASS_ANNOTATION) == "true" for c in classes
        ):
            raise UnactionableSpecError(
                "NoDefaultStorageClass",
                "spec.storage.storageClassName is unset and the cluster has no default StorageClass",
            )

    def _share_settings(self, shard: ResolvedShard) -> None:
        policy = FailoverPolicy.from_settings(shard.spec.failover, shard.spec.replication)
        settings = ShardSettings(
            policy=policy,
            cluster=shard.spec.cluster_name,
            secret=replication_secret_name(shard.name),
            agent_port=AGENT_PORT,
        )
        self.views.set_settings((shard.namespace, shard.name), settings)

    @staticmethod
    def _choose_master(shard: ResolvedShard, previous: MailShardStatus | None) -> str:
        """The master recorded in status, else the first member (a new pair)."""
        if previous is not None and previous.master in shard.members:
            return previous.master
        return shard.members[0]

    def _ensure_secret(self, shard: ResolvedShard) -> None:
        """Create the credentials once; an existing Secret is never rewritten (see builders.secret)."""
        name = replication_secret_name(shard.name)
        if self.api.get("Secret", name, shard.namespace) is not None:
            return
        credentials = ShardCredentials(
            replication_password=secrets.token_urlsafe(32), agent_token=secrets.token_urlsafe(32)
        )
        self.api.create(build_replication_secret(shard, credentials))

    def _ensure_children(
        self, shard: ResolvedShard, master: str, superseded: tuple[str, ...], *, hold_new_members: bool = False
    ) -> ChildChanges:
        """Apply each child that is missing or differs; returns what was created, updated and reverted.

        With `hold_new_members` the members' StatefulSets are not created yet (existing ones are kept as they
        are): the cluster names users, and this shard's users Secret is not written yet. The cluster's
        reconcile writes it once the shard has its row in the routing table, and reconciles the shard again.
        """
        manifests = build_shard_manifests(
            shard, master=master, images=self.images, superseded=superseded
        ).in_apply_order()
        if hold_new_members:
            manifests = [
                m
                for m in manifests
                if m["kind"] != "StatefulSet" or self.api.get("StatefulSet", m["metadata"]["name"], shard.namespace)
            ]
            log.info(
                "%s/%s: members wait for the users Secret %s",
                shard.namespace,
                shard.name,
                users_secret_name(shard.name),
            )
        changes = ensure_children(self.api, shard.namespace, manifests, keep_live=_keep_immutable_fields)
        return changes

    def _ensure_volume_sizes(self, shard: ResolvedShard) -> None:
        """Grow member claims to the spec's size; volumeClaimTemplates themselves are immutable."""
        wanted = shard.spec.storage.size
        for member in shard.members:
            claim = self.api.get("PersistentVolumeClaim", volume_claim_name(member), shard.namespace)
            if claim is None:
                continue
            current = claim["spec"]["resources"]["requests"]["storage"]
            if parse_quantity(wanted) > parse_quantity(current):
                self.api.merge_patch(
                    "PersistentVolumeClaim",
                    claim["metadata"]["name"],
                    shard.namespace,
                    {"spec": {"resources": {"requests": {"storage": str(wanted)}}}},
                )
            elif parse_quantity(wanted) < parse_quantity(current):
                raise UnactionableSpecError(
                    "StorageShrinkRefused",
                    f"storage size {wanted} is below the {current} already provisioned for {member}; "
                    "volumes can only grow",
                )

    def _ensure_pod_roles(self, shard: ResolvedShard, routed: str | None) -> None:
        """Live pods carry the role the operator decided (templates only reach new pods: OnDelete).

        Only the member routing may point at is labelled master, so the master
        Service selects nobody while a failover has fenced the shard.
        """
        for pod in self._pods(shard):
            member = _member_of(pod, shard)
            if member is None:
                continue
            role = MemberRole.MASTER if member == routed else MemberRole.REPLICA
            if (pod["metadata"].get("labels") or {}).get(LABEL_ROLE) != role.value:
                self.api.merge_patch(
                    "Pod", pod["metadata"]["name"], shard.namespace, {"metadata": {"labels": {LABEL_ROLE: role.value}}}
                )

    def _pods(self, shard: ResolvedShard) -> list[Manifest]:
        return self.api.list("Pod", shard.namespace, label_selector=f"{LABEL_SHARD}={shard.name}")

    def _observe(
        self, shard: ResolvedShard, master: str, previous: MailShardStatus | None, *, fenced: Problem | None
    ) -> ShardObservation:
        pods = {pod["metadata"]["name"]: pod for pod in self._pods(shard)}
        key = (shard.namespace, shard.name)
        agents = self.views.members(key)
        members = []
        for member in shard.members:
            pod = pods.get(pod_name(member))
            if pod is None or pod["metadata"].get("deletionTimestamp"):
                members.append(MemberObservation(name=member))
                continue
            view = agents.get(member)
            # The agent's own word when it answers; otherwise the role the operator assigned.
            assigned = MemberRole.MASTER if member == master else MemberRole.REPLICA
            members.append(
                MemberObservation(
                    name=member,
                    pod_exists=True,
                    ready=pod_ready(pod),
                    role=view.role if view is not None else assigned,
                    node=pod["spec"].get("nodeName"),
                    lag_seconds=view.lag_seconds if view is not None else None,
                    last_sync_time=view.last_sync_time if view is not None else None,
                )
            )
        first, second = members
        progress = previous.failover if previous is not None else None
        return ShardObservation(
            generation=shard.generation,
            members=(first, second),
            master=master,
            max_lag_seconds=shard.spec.replication.max_lag_seconds,
            target_master=progress.to_member if progress is not None else None,
            failing_since=previous.failing_since if previous is not None else None,
            recovering_since=previous.recovering_since if previous is not None else None,
            uncertain_since=previous.uncertain_since if previous is not None else None,
            failover=progress,
            last_failover=previous.last_failover if previous is not None else None,
            mailboxes=previous.mailboxes if previous is not None else None,
            fenced=fenced,
            alarm=self.views.alarm(key, shown=previous),
        )

    # ------------------------------------------------------------- outputs

    def _report(
        self,
        body: Manifest,
        previous: MailShardStatus | None,
        status: MailShardStatus,
        *,
        changes: ChildChanges,
    ) -> None:
        """Events for what changed: children created, updated or reverted, a new problem, a phase transition."""
        report_changes(self.events, body, changes)
        stalled = status.condition(ShardConditionType.STALLED)
        was_stalled = previous.condition(ShardConditionType.STALLED) if previous is not None else None
        if (
            stalled is not None
            and stalled.status == "True"
            and (was_stalled is None or (was_stalled.status, was_stalled.reason) != ("True", stalled.reason))
        ):
            self.events.record(body, "Warning", stalled.reason or "Stalled", stalled.message or "")
        old_phase = previous.phase if previous is not None else None
        if status.phase != old_phase and status.phase is not None and status.phase is not ShardPhase.FAILED:
            event_type: EventType = "Warning" if status.phase in (ShardPhase.DEGRADED, ShardPhase.FENCED) else "Normal"
            ready = status.condition(ShardConditionType.READY)
            self.events.record(body, event_type, status.phase.value, ready.message if ready and ready.message else "")

    def _write_status(self, body: Manifest, previous: MailShardStatus | None, status: MailShardStatus) -> None:
        """Patch the status subresource, only when it differs from what is stored."""
        new = _status_document(status)
        old = _status_document(previous) if previous is not None else {}
        # The failover monitor owns these (failover.record); this writer only chooses a new pair's first master.
        first_master = "master" not in old
        for owned in RECORD_FIELDS:
            if owned == "master" and first_master:
                continue
            new.pop(owned, None)
            old.pop(owned, None)
        if new == old:
            return
        # Fields we no longer report are removed (merge patch null), not left stale.
        patch: dict[str, Any] = {key: None for key in old if key not in new}
        patch.update(new)
        meta = body["metadata"]
        self.api.merge_patch("MailShard", meta["name"], meta["namespace"], {"status": patch}, subresource="status")

    # ------------------------------------------------------------ deletion

    def finalize(self, body: Manifest) -> None:
        """On deletion: the children go with their owner; the claims stay unless the policy says Delete.

        The policy that counts is the one the members' StatefulSets were given
        (the shard's own, else its cluster's default), read back from them, so
        the Event says what really happens to the mail.
        """
        meta = body["metadata"]
        namespace = meta["namespace"]
        self.forget(namespace, meta["name"])
        self.views.forget((namespace, meta["name"]))
        self.metrics.shards.forget(namespace, meta["name"])
        members = member_names(meta["name"])
        policies = set()
        for member in members:
            statefulset = self.api.get("StatefulSet", member, namespace)
            if statefulset is not None:
                retention = statefulset["spec"].get("persistentVolumeClaimRetentionPolicy") or {}
                policies.add(retention.get("whenDeleted", "Retain"))
        claims = [volume_claim_name(member) for member in members]
        existing = [c for c in claims if self.api.get("PersistentVolumeClaim", c, namespace) is not None]
        if "Delete" in policies:
            for claim in existing:
                self.api.delete("PersistentVolumeClaim", claim, namespace)
            message = f"deleted the mail volumes {', '.join(existing)} (reclaimPolicy Delete)"
            self.events.record(body, "Normal", "VolumesDeleted", message if existing else "no mail volumes to delete")
        elif existing:
            self.events.record(
                body,
                "Normal",
                "VolumesRetained",
                f"kept the mail volumes {', '.join(existing)} (reclaimPolicy Retain); delete them by hand when done",
            )


FENCED_BY_REQUEST: Final = "FencedByRequest"
"""The reason of the Stalled condition while a human's fence annotation holds the shard."""


def _fence_request(body: Manifest) -> Problem | None:
    """A human fenced the shard (`kubectl mailshard fence`): serve nobody until they unfence it."""
    value = (body["metadata"].get("annotations") or {}).get(ANNOTATION_FENCED)
    if value != "true":
        return None
    return Problem(
        reason=FENCED_BY_REQUEST,
        message=f"fenced by the {ANNOTATION_FENCED} annotation: users get temporary errors until "
        "`kubectl mailshard unfence` removes it",
    )


def fence_request_pending(body: Manifest) -> bool:
    """Whether the fence annotation asks for a fence or an unfence that the stored status does not show yet.

    kopf leaves every annotation under its storage prefix, which is our API group, out of the object's
    essence, so `kubectl mailshard fence` and `unfence` fire no update handler: an event handler with this
    filter reconciles them at once instead of at the next resync.
    """
    requested = _fence_request(body) is not None
    conditions = (body.get("status") or {}).get("conditions") or []
    shown = any(
        c.get("type") == ShardConditionType.STALLED
        and c.get("status") == "True"
        and c.get("reason") == FENCED_BY_REQUEST
        for c in conditions
        if isinstance(c, dict)
    )
    return requested != shown


def _member_of(pod: Manifest, shard: ResolvedShard) -> str | None:
    return next((m for m in shard.members if pod["metadata"]["name"] == pod_name(m)), None)


def _stored_status(body: Manifest) -> MailShardStatus | None:
    raw = {k: v for k, v in (body.get("status") or {}).items() if k != "kopf"}
    if not raw:
        return None
    try:
        return MailShardStatus.model_validate(raw)
    except pydantic.ValidationError:
        log.warning("ignoring an unreadable stored status of %s", body["metadata"]["name"])
        return None


def _status_document(status: MailShardStatus) -> dict[str, Any]:
    document: dict[str, Any] = status.model_dump(mode="json", by_alias=True, exclude_none=True)
    return document


def _keep_immutable_fields(wanted: Manifest, live: Manifest) -> Manifest:
    """Send a StatefulSet's live volumeClaimTemplates back unchanged: they are immutable, claims are grown directly."""
    if wanted["kind"] != "StatefulSet":
        return wanted
    spec = dict(wanted["spec"])
    spec["volumeClaimTemplates"] = live["spec"].get("volumeClaimTemplates", spec.get("volumeClaimTemplates"))
    return {**wanted, "spec": spec}
