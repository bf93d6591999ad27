"""Reconciles a MailCluster's status from its shards: counts, readiness, kstatus conditions.

The cluster is the front of a mail platform; its status answers "are all my
shards serving?" at a glance (`kubectl get mc`). The proxy tier and routing
table it will own are built by the routing service; until then its status
covers the shards alone. Like the shard reconciler it is level-based and
writes the status only when it changed.
"""

from __future__ import annotations

import datetime
import logging
from typing import Any

import pydantic

from mailshard.api.v1alpha1 import ConditionStatus, MailCluster, MailClusterStatus
from mailshard.api.v1alpha1.cluster import ClusterConditionType
from mailshard.builders.conditions import set_condition
from mailshard.services.kube import KubeApi, Manifest

log = logging.getLogger(__name__)


def _shard_ready(shard: Manifest) -> bool:
    conditions = (shard.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


class ClusterReconciler:
    """Keeps each MailCluster's status true to its shards."""

    def __init__(self, api: KubeApi) -> None:
        self.api = api

    def reconcile(self, namespace: str, name: str) -> MailClusterStatus | None:
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
            MailCluster.from_resource(body)
            problem = None
        except pydantic.ValidationError as error:
            problem = str(error.errors()[0]["msg"])
        if problem is not None:
            put(ClusterConditionType.STALLED, ConditionStatus.TRUE, "InvalidSpec", problem)
            put(ClusterConditionType.RECONCILING, ConditionStatus.FALSE, "Stalled", "waiting for a human; see Stalled")
        elif not shards:
            put(ClusterConditionType.READY, ConditionStatus.FALSE, "NoShards", "no MailShard refers to this cluster")
            put(ClusterConditionType.RECONCILING, ConditionStatus.FALSE, "Reconciled", "nothing to do")
            put(ClusterConditionType.STALLED, ConditionStatus.FALSE, "AsExpected", "making progress")
        else:
            all_ready = ready == len(shards)
            message = f"{ready} of {len(shards)} shards ready"
            put(ClusterConditionType.READY, _bool(all_ready), "ShardsReady" if all_ready else "ShardsNotReady", message)
            put(
                ClusterConditionType.RECONCILING,
                _bool(not all_ready),
                "Reconciled" if all_ready else "ShardsNotReady",
                message,
            )
            put(ClusterConditionType.STALLED, ConditionStatus.FALSE, "AsExpected", "making progress")
        status = previous.model_copy(
            update={
                "shards": len(shards),
                "ready_shards": ready,
                "conditions": conditions,
                "observed_generation": generation,
            }
        )
        new = status.model_dump(mode="json", by_alias=True, exclude_none=True)
        if new != previous.model_dump(mode="json", by_alias=True, exclude_none=True):
            self.api.merge_patch("MailCluster", name, namespace, {"status": new}, subresource="status")
        return status


def _bool(value: bool) -> ConditionStatus:
    return ConditionStatus.TRUE if value else ConditionStatus.FALSE


def _stored_status(body: dict[str, Any]) -> MailClusterStatus:
    raw = {k: v for k, v in (body.get("status") or {}).items() if k != "kopf"}
    try:
        return MailClusterStatus.model_validate(raw)
    except pydantic.ValidationError:
        log.warning("ignoring an unreadable stored status of MailCluster %s", body["metadata"]["name"])
        return MailClusterStatus()
