"""Carries out `failover.volumes`: gives a member whose mail volume is lost a new one.

Why this module exists: the rule for when a claim may be deleted is pure
(`failover.volumes`); this is the thin part that reads the claim, its volume
and that volume's node, asks the rule, and deletes what it says to delete,
with an Event saying why. The StatefulSet then creates a new claim and pod,
the new member starts empty as replica, and its master's agent, seeing the
replica behind, re-seeds it (a full sync); the shard is Degraded until then.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from mailshard.api.v1alpha1 import MailShardStatus, MemberRole, ResolvedShard
from mailshard.builders.names import pod_name, volume_claim_name
from mailshard.failover.volumes import (
    ClaimState,
    MemberVolumeFacts,
    VolumeAction,
    VolumeNode,
    decide_volume,
    replaceable,
)
from mailshard.services.events import EventRecorder
from mailshard.services.kube import KubeApi, Manifest, pod_ready
from mailshard.services.member_views import MemberViews

log = logging.getLogger(__name__)

HOSTNAME_LABEL = "kubernetes.io/hostname"


class VolumeRecovery:
    """Replaces lost member volumes of one shard at a time, from the reconciler's thread."""

    def __init__(self, api: KubeApi, events: EventRecorder, views: MemberViews) -> None:
        self.api, self.events, self.views = api, events, views

    def recover(
        self, body: Manifest, shard: ResolvedShard, previous: MailShardStatus | None, pods: dict[str, Manifest]
    ) -> None:
        """One pass over both members; at most one deletion per member, each with a Warning Event."""
        if previous is None or previous.master is None or previous.failover is not None:
            return  # a new pair, or a failover under way: the failover monitor owns the members now
        if not shard.spec.failover.enabled:
            return
        routed = previous.routed_member
        master = previous.master
        view = self.views.members((shard.namespace, shard.name)).get(master)
        master_pod = pods.get(pod_name(master))
        serving = (
            routed == master
            and view is not None
            and view.role is MemberRole.MASTER
            and master_pod is not None
            and pod_ready(master_pod)
        )
        grace = timedelta(seconds=shard.spec.failover.lost_volume_grace_seconds)
        now = datetime.now(UTC)
        for member in shard.members:
            if not replaceable(member, routed=routed, other_is_serving_master=serving):
                continue
            facts = self._facts(shard, member, pods)
            decision = decide_volume(facts, grace=grace, now=now)
            if decision.action is VolumeAction.RECREATE_POD:
                self._delete_pod(shard, member)
                self.events.record(body, "Warning", "VolumeLost", f"{member}: {decision.reason}")
            elif decision.action is VolumeAction.REPLACE_VOLUME:
                self.api.delete("PersistentVolumeClaim", volume_claim_name(member), shard.namespace)
                self._delete_pod(shard, member)
                self.events.record(body, "Warning", "VolumeReplaced", f"{member}: {decision.reason}")
            elif decision.action is VolumeAction.WAIT:
                log.info("%s/%s: %s: %s", shard.namespace, shard.name, member, decision.reason)

    def _delete_pod(self, shard: ResolvedShard, member: str) -> None:
        # At once (grace 0): the pod is Pending or on a dead node, where a graceful delete waits forever.
        self.api.delete("Pod", pod_name(member), shard.namespace, grace_period_seconds=0)

    def _facts(self, shard: ResolvedShard, member: str, pods: dict[str, Manifest]) -> MemberVolumeFacts:
        pod = pods.get(pod_name(member))
        pod_exists = pod is not None and not pod["metadata"].get("deletionTimestamp")
        claim = self.api.get("PersistentVolumeClaim", volume_claim_name(member), shard.namespace)
        if claim is None:
            return MemberVolumeFacts(member, ClaimState.MISSING, pod_exists=pod_exists)
        if claim["metadata"].get("deletionTimestamp"):
            return MemberVolumeFacts(member, ClaimState.TERMINATING, pod_exists=pod_exists)
        volume_name = claim["spec"].get("volumeName")
        if (claim.get("status") or {}).get("phase") != "Bound" or not volume_name:
            return MemberVolumeFacts(member, ClaimState.PENDING, pod_exists=pod_exists)
        volume = self.api.get("PersistentVolume", volume_name)
        node_name = _volume_node(volume) if volume is not None else None
        if node_name is None:
            return MemberVolumeFacts(member, ClaimState.BOUND, pod_exists=pod_exists)
        node = self.api.get("Node", node_name)
        if node is None:
            return MemberVolumeFacts(member, ClaimState.BOUND, VolumeNode.GONE, node_name, pod_exists=pod_exists)
        ready = _ready_condition(node)
        if ready is not None and ready.get("status") == "True":
            return MemberVolumeFacts(member, ClaimState.BOUND, VolumeNode.READY, node_name, pod_exists=pod_exists)
        since = _parse_time(ready.get("lastTransitionTime")) if ready is not None else None
        return MemberVolumeFacts(
            member, ClaimState.BOUND, VolumeNode.NOT_READY, node_name, node_not_ready_since=since, pod_exists=pod_exists
        )


def _volume_node(volume: Manifest) -> str | None:
    """The one node a local volume lives on, from its required node affinity on the hostname label."""
    terms = (((volume.get("spec") or {}).get("nodeAffinity") or {}).get("required") or {}).get("nodeSelectorTerms")
    for term in terms or []:
        for expression in term.get("matchExpressions") or []:
            values = expression.get("values") or []
            if expression.get("key") == HOSTNAME_LABEL and expression.get("operator") == "In" and len(values) == 1:
                return str(values[0])
    return None


def _ready_condition(node: Manifest) -> dict[str, Any] | None:
    for condition in (node.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            found: dict[str, Any] = condition
            return found
    return None


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
