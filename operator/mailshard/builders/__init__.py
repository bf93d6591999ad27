"""Pure builders: parsed models in, Kubernetes manifests out. No API calls, no clock, no sleeps.

Every input is explicit: the resolved shard, which member is master, the default
images, the credentials, the current time. The public surface is re-exported
here; each manifest has its own module and its own golden test.
"""

from mailshard.builders.affinity import merge_affinity
from mailshard.builders.conditions import set_condition
from mailshard.builders.disruption_budget import build_pod_disruption_budget
from mailshard.builders.images import BackendImages
from mailshard.builders.runtime_config import build_config_map, build_runtime_config, runtime_config_hash
from mailshard.builders.secret import ShardCredentials, build_replication_secret
from mailshard.builders.services import build_master_service, build_member_service
from mailshard.builders.shard import ShardManifests, build_shard_manifests
from mailshard.builders.statefulset import build_member_statefulset, member_selector
from mailshard.builders.status import (
    MemberObservation,
    Problem,
    ShardObservation,
    compute_shard_status,
    failed_status,
)

__all__ = [
    "BackendImages",
    "MemberObservation",
    "Problem",
    "ShardCredentials",
    "ShardManifests",
    "ShardObservation",
    "build_config_map",
    "build_master_service",
    "build_member_service",
    "build_member_statefulset",
    "build_pod_disruption_budget",
    "build_replication_secret",
    "build_runtime_config",
    "build_shard_manifests",
    "compute_shard_status",
    "failed_status",
    "member_selector",
    "merge_affinity",
    "runtime_config_hash",
    "set_condition",
]
