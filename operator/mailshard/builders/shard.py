"""Every manifest of a shard at once, in the order they should be applied.

The service layer calls `build_shard_manifests` on each reconcile and applies
the result; the replication Secret is built separately
(`build_replication_secret`) because it is created once and never updated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mailshard.api.v1alpha1 import ResolvedShard
from mailshard.builders.disruption_budget import build_pod_disruption_budget
from mailshard.builders.images import BackendImages
from mailshard.builders.runtime_config import build_config_map
from mailshard.builders.services import build_master_service, build_member_service
from mailshard.builders.statefulset import build_member_statefulset

Manifest = dict[str, Any]


@dataclass(frozen=True)
class ShardManifests:
    """The objects of one shard, apart from its Secret."""

    config_map: Manifest
    member_services: tuple[Manifest, Manifest]
    master_service: Manifest
    statefulsets: tuple[Manifest, Manifest]
    pod_disruption_budget: Manifest

    def in_apply_order(self) -> list[Manifest]:
        """Config and Services before the StatefulSets whose pods need them."""
        return [
            self.config_map,
            *self.member_services,
            self.master_service,
            *self.statefulsets,
            self.pod_disruption_budget,
        ]


def build_shard_manifests(
    shard: ResolvedShard, *, master: str, images: BackendImages, superseded: tuple[str, ...] = ()
) -> ShardManifests:
    """The manifests of `shard` with `master` (one of `shard.members`) as its master member.

    `superseded` is `status.superseded`: the old masters the shard's contract tells never to start as master.
    """
    first, second = shard.members
    return ShardManifests(
        config_map=build_config_map(shard, superseded=superseded),
        member_services=(build_member_service(shard, first), build_member_service(shard, second)),
        master_service=build_master_service(shard),
        statefulsets=(
            build_member_statefulset(shard, first, master=master, images=images),
            build_member_statefulset(shard, second, master=master, images=images),
        ),
        pod_disruption_budget=build_pod_disruption_budget(shard),
    )
