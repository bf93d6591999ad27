"""Pydantic models of the mailshard.io custom resources: the one source of truth for the CRDs.

The public surface is re-exported here. Versioned models live in
`mailshard.api.v1alpha1`; the vocabulary shared across versions in
`mailshard.api.enums`; the agent's runtime contract in `mailshard.api.runtime`;
the CRD generator in `mailshard.api.crd`. Nothing in this package does I/O.
"""

from mailshard.api.crd import custom_resource_definitions, render_crd_files
from mailshard.api.enums import Backend, Compression, ReplicationMode
from mailshard.api.quantity import is_quantity, parse_quantity
from mailshard.api.runtime import RuntimeMember, RuntimePorts, RuntimeReplication, ShardRuntimeConfig
from mailshard.api.v1alpha1 import (
    Condition,
    ConditionStatus,
    FailoverRecord,
    MailCluster,
    MailClusterSpec,
    MailClusterStatus,
    MailShard,
    MailShardSpec,
    MailShardStatus,
    MemberRole,
    MemberStatus,
    ResolvedShard,
    ResolvedShardSpec,
    ShardConditionType,
    ShardDefaults,
    ShardPhase,
    member_names,
)

__all__ = [
    "Backend",
    "Compression",
    "Condition",
    "ConditionStatus",
    "FailoverRecord",
    "MailCluster",
    "MailClusterSpec",
    "MailClusterStatus",
    "MailShard",
    "MailShardSpec",
    "MailShardStatus",
    "MemberRole",
    "MemberStatus",
    "ReplicationMode",
    "ResolvedShard",
    "ResolvedShardSpec",
    "RuntimeMember",
    "RuntimePorts",
    "RuntimeReplication",
    "ShardConditionType",
    "ShardDefaults",
    "ShardPhase",
    "ShardRuntimeConfig",
    "custom_resource_definitions",
    "is_quantity",
    "member_names",
    "parse_quantity",
    "render_crd_files",
]
