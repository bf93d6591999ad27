"""The agent's runtime config of a shard, and the ConfigMap that carries it into both members.

The config is derived from the resolved shard only, so both members always see
the same file, and its hash goes into the pod template: a config change is a
new StatefulSet revision, which the rollout then applies member by member.
"""

from __future__ import annotations

import hashlib
from typing import Any

from mailshard.api.constants import SHARD_CONFIG_KEY
from mailshard.api.runtime import RuntimeMember, RuntimePorts, RuntimeReplication, ShardRuntimeConfig
from mailshard.api.v1alpha1 import ResolvedShard
from mailshard.builders.metadata import COMPONENT_CONFIG, object_metadata
from mailshard.builders.names import config_map_name, member_host


def build_runtime_config(shard: ResolvedShard, *, superseded: tuple[str, ...] = ()) -> ShardRuntimeConfig:
    """The `shard.json` both members' agents read; `superseded` from the shard's status (see `api.runtime`)."""
    first, second = shard.members
    spec = shard.spec
    return ShardRuntimeConfig(
        shard=shard.name,
        namespace=shard.namespace,
        backend=spec.backend,
        members=(
            RuntimeMember(name=first, host=member_host(first, shard.namespace)),
            RuntimeMember(name=second, host=member_host(second, shard.namespace)),
        ),
        ports=RuntimePorts(replication=spec.replication.port),
        replication=RuntimeReplication(
            mode=spec.replication.mode,
            max_lag_seconds=spec.replication.max_lag_seconds,
        ),
        compression=spec.compression,
        mailboxes=spec.capacity.mailboxes,
        superseded=tuple(member for member in superseded if member in shard.members),
    )


def runtime_config_hash(config: ShardRuntimeConfig) -> str:
    """SHA-256 of the exact file content, for the pod template annotation.

    The template hashes the config the spec alone gives (no `superseded`): a
    failover recording an old master there must not start a rollout.
    """
    return hashlib.sha256(config.to_json().encode()).hexdigest()


def build_config_map(shard: ResolvedShard, *, superseded: tuple[str, ...] = ()) -> dict[str, Any]:
    """The ConfigMap `<shard>-config` with the key `shard.json`."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": object_metadata(shard, config_map_name(shard.name), COMPONENT_CONFIG),
        "data": {SHARD_CONFIG_KEY: build_runtime_config(shard, superseded=superseded).to_json()},
    }
