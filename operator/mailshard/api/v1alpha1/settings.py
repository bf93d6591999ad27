"""The per-shard settings a MailShard may set and a MailCluster may default for all its shards.

Each section comes in two forms that must keep the same fields:

- the *settings* form (`StorageSettings`, ...) is complete: every field has its
  built-in default. It is what `MailCluster.spec.shardDefaults` holds (so the API
  server writes the effective defaults into the cluster, where `kubectl get -o
  yaml` shows them) and what a resolved shard carries.
- the *overrides* form (`StorageOverrides`, ...) is what `MailShard.spec` holds:
  every field is optional and has no schema default. A default written by the
  API server into the shard would be indistinguishable from a user's choice and
  would hide the cluster's default forever, so shards leave unset fields unset
  and `overlay` fills them from the cluster, field by field.
"""

from __future__ import annotations

import enum
from typing import Annotated, Final, TypeVar

from pydantic import AfterValidator, BaseModel, Field

from mailshard.api.constants import (
    AGENT_PORT,
    DEFAULT_REPLICATION_PORT,
    IMAP_PORT,
    LMTP_PORT,
    MANAGESIEVE_PORT,
    POP3_PORT,
)
from mailshard.api.enums import Compression, ReplicationMode
from mailshard.api.quantity import QUANTITY_PATTERN, parse_quantity
from mailshard.api.v1alpha1.common import JsonSchema, ResourceRequirements, SpecModel, cel, validations

DEFAULT_MAILBOXES: Final = 2000
DEFAULT_STORAGE_SIZE: Final = "10Gi"
DEFAULT_MAX_LAG_SECONDS: Final = 30
DEFAULT_FAILOVER_DELAY_SECONDS: Final = 1
DEFAULT_LOST_VOLUME_GRACE_SECONDS: Final = 300

RESERVED_PORTS: Final = (LMTP_PORT, POP3_PORT, IMAP_PORT, MANAGESIEVE_PORT, AGENT_PORT)
"""Ports the pod already uses, which the replication listener must not take."""


class PodAntiAffinityType(enum.StrEnum):
    """How firmly the two members of a shard are kept on different nodes."""

    REQUIRED = "required"
    PREFERRED = "preferred"


class ReclaimPolicy(enum.StrEnum):
    """What happens to a shard's volumes when the MailShard is deleted."""

    RETAIN = "Retain"
    DELETE = "Delete"


def _positive_quantity(value: str) -> str:
    if parse_quantity(value) <= 0:
        raise ValueError(f"storage size {value!r} must be greater than zero")
    return value


StorageSize = Annotated[
    str,
    AfterValidator(_positive_quantity),
    Field(min_length=1, max_length=64, pattern=QUANTITY_PATTERN),
]

_SIZE_RULES: Final = (
    cel("isQuantity(self)", "storage.size must be a Kubernetes quantity such as 10Gi"),
    cel("!isQuantity(self) || quantity(self).isGreaterThan(quantity('0'))", "storage.size must be greater than zero"),
)
_SIZE_GROWS_ONLY: Final = cel(
    "!isQuantity(self) || !isQuantity(oldSelf) || quantity(self).compareTo(quantity(oldSelf)) >= 0",
    "spec.storage.size may only grow: a PersistentVolumeClaim cannot shrink",
)
_PORT_RULES: Final = validations(
    cel(
        f"!(self in {list(RESERVED_PORTS)})",
        f"replication.port must not be one of the pod's other ports {list(RESERVED_PORTS)}",
    )
)


def _replication_port_is_free(port: int) -> int:
    if port in RESERVED_PORTS:
        raise ValueError(f"replication port {port} collides with one of the pod's other ports {RESERVED_PORTS}")
    return port


ReplicationPort = Annotated[int, Field(ge=1, le=65535), AfterValidator(_replication_port_is_free)]

_INHERITED = "Unset: taken from the MailCluster's spec.shardDefaults, else the built-in default ({})."


def _inherited(description: str, default: object) -> str:
    return f"{description} {_INHERITED.format(default)}"


_MAILBOXES = (
    "How many user mailboxes the shard is sized for. The router stops placing new users on a shard "
    "that holds this many."
)
_STORAGE_CLASS = (
    "StorageClass of each member's mail volume. Unset: the cluster's default class. A class that binds "
    "late (WaitForFirstConsumer) lets the scheduler keep the members on different nodes."
)
_SIZE = (
    "Size of each member's mail volume, a Kubernetes quantity. It may grow (the volumes are expanded "
    "in place) but never shrink."
)
_RECLAIM = (
    "Retain keeps the members' PersistentVolumeClaims, and the mail in them, when the MailShard is "
    "deleted; Delete removes them with it. The PersistentVolumes then follow their StorageClass's own "
    "reclaim policy."
)
_MODE = (
    "How changes reach the replica. Only async is offered: the master acknowledges a write before "
    "the replica has it, because neither Dovecot 2.3 nor Cyrus 3.6 can replicate synchronously."
)
_MAX_LAG = (
    "The replication lag, in seconds, beyond which the operator refuses to promote the replica "
    "automatically, because the mail written in that window would be lost. A human can still "
    "force the promotion."
)
_PORT = "TCP port of the replication listener inside the pods (doveadm for Dovecot, csync for Cyrus)."
_FAILOVER_ENABLED = (
    "Whether the operator promotes the replica on its own when the master fails. When false it "
    "only reports the failure."
)
_LOST_VOLUME_GRACE = (
    "Seconds the node holding a member's local volume may stay NotReady before that member, if it is not "
    "the master, is given a new volume on another node and re-seeded from the master. A member whose claim "
    "was deleted, or whose volume's Node object was deleted, is replaced at once. A master is never "
    "replaced: the failover promotes its replica first. Nothing is replaced while failover.enabled is false."
)
_FAILOVER_DELAY = (
    "Seconds the master must stay down, after the operator has declared it down from its agent's "
    "heartbeats (2 missed polls and 2 s of silence), before the replica is promoted. The default of 1 "
    "second keeps master loss to serving within about 5 seconds (at most 2.5 s to declare it down, the "
    "delay, then 1 to 1.5 s of failover steps), while a blip shorter than about 3 s of silence, or one "
    "restart of a crashed daemon by its agent, never triggers a failover."
)
_COMPRESSION = (
    "Compression of message files at rest: none, or zlib (gzip). It applies to messages written "
    "after the change; existing files stay as they are and remain readable."
)
_POD_ANTI_AFFINITY_TYPE = (
    "How firmly the two members are kept on different nodes. required: never on one node, so a member "
    "waits Pending until a second node fits. preferred: the scheduler spreads them when it can and puts "
    "both on one node when it cannot, as on a single-node development or test cluster; then one node "
    "failure takes the whole shard."
)
_RESOURCES = (
    "CPU and memory of the mail container in each member, as in a Pod. A shard's own value replaces "
    "the cluster's default as a whole."
)


# --- Complete settings: MailCluster.spec.shardDefaults, and what a resolved shard carries --------


class CapacitySettings(SpecModel):
    """How big a shard is."""

    mailboxes: int = Field(default=DEFAULT_MAILBOXES, ge=1, description=_MAILBOXES)


class StorageSettings(SpecModel):
    """The persistent volume of each member."""

    storage_class_name: str | None = Field(default=None, min_length=1, description=_STORAGE_CLASS)
    size: StorageSize = Field(
        default=DEFAULT_STORAGE_SIZE, description=_SIZE, json_schema_extra=validations(*_SIZE_RULES)
    )
    reclaim_policy: ReclaimPolicy = Field(default=ReclaimPolicy.RETAIN, description=_RECLAIM)


class ReplicationSettings(SpecModel):
    """Replication from the master to the replica."""

    mode: ReplicationMode = Field(default=ReplicationMode.ASYNC, description=_MODE)
    max_lag_seconds: int = Field(default=DEFAULT_MAX_LAG_SECONDS, ge=1, le=86400, description=_MAX_LAG)
    port: ReplicationPort = Field(default=DEFAULT_REPLICATION_PORT, description=_PORT, json_schema_extra=_PORT_RULES)


class FailoverSettings(SpecModel):
    """Automatic promotion of the replica when the master fails."""

    enabled: bool = Field(default=True, description=_FAILOVER_ENABLED)
    delay_seconds: int = Field(default=DEFAULT_FAILOVER_DELAY_SECONDS, ge=0, le=3600, description=_FAILOVER_DELAY)
    lost_volume_grace_seconds: int = Field(
        default=DEFAULT_LOST_VOLUME_GRACE_SECONDS, ge=0, le=86400, description=_LOST_VOLUME_GRACE
    )


_OBJECT_DEFAULT: Final[JsonSchema] = {"default": {}}
"""Lets the API server fill a section's own defaults when the section is left out."""


class ShardDefaults(SpecModel):
    """Settings every shard of a MailCluster inherits unless the MailShard sets them itself."""

    capacity: CapacitySettings = Field(
        default_factory=CapacitySettings, description="Default capacity.", json_schema_extra=_OBJECT_DEFAULT
    )
    storage: StorageSettings = Field(
        default_factory=StorageSettings, description="Default mail volumes.", json_schema_extra=_OBJECT_DEFAULT
    )
    resources: ResourceRequirements | None = Field(default=None, description=_RESOURCES)
    replication: ReplicationSettings = Field(
        default_factory=ReplicationSettings,
        description="Default replication settings.",
        json_schema_extra=_OBJECT_DEFAULT,
    )
    failover: FailoverSettings = Field(
        default_factory=FailoverSettings, description="Default failover settings.", json_schema_extra=_OBJECT_DEFAULT
    )
    compression: Compression = Field(default=Compression.NONE, description=_COMPRESSION)
    pod_anti_affinity_type: PodAntiAffinityType = Field(
        default=PodAntiAffinityType.REQUIRED, description=_POD_ANTI_AFFINITY_TYPE
    )


# --- Overrides: MailShard.spec ------------------------------------------------------------------


class CapacityOverrides(SpecModel):
    """How big this shard is."""

    mailboxes: int | None = Field(default=None, ge=1, description=_inherited(_MAILBOXES, DEFAULT_MAILBOXES))


class StorageOverrides(SpecModel):
    """The persistent volume of each member of this shard."""

    storage_class_name: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "StorageClass of each member's mail volume. Unset: taken from the MailCluster's "
            "spec.shardDefaults, else the cluster's default StorageClass."
        ),
    )
    size: StorageSize | None = Field(
        default=None,
        description=_inherited(_SIZE, DEFAULT_STORAGE_SIZE),
        json_schema_extra=validations(*_SIZE_RULES, _SIZE_GROWS_ONLY),
    )
    reclaim_policy: ReclaimPolicy | None = Field(
        default=None, description=_inherited(_RECLAIM, ReclaimPolicy.RETAIN.value)
    )


class ReplicationOverrides(SpecModel):
    """Replication from this shard's master to its replica."""

    mode: ReplicationMode | None = Field(default=None, description=_inherited(_MODE, ReplicationMode.ASYNC.value))
    max_lag_seconds: int | None = Field(
        default=None, ge=1, le=86400, description=_inherited(_MAX_LAG, DEFAULT_MAX_LAG_SECONDS)
    )
    port: ReplicationPort | None = Field(
        default=None, description=_inherited(_PORT, DEFAULT_REPLICATION_PORT), json_schema_extra=_PORT_RULES
    )


class FailoverOverrides(SpecModel):
    """Automatic promotion of this shard's replica when its master fails."""

    enabled: bool | None = Field(default=None, description=_inherited(_FAILOVER_ENABLED, "true"))
    delay_seconds: int | None = Field(
        default=None, ge=0, le=3600, description=_inherited(_FAILOVER_DELAY, DEFAULT_FAILOVER_DELAY_SECONDS)
    )
    lost_volume_grace_seconds: int | None = Field(
        default=None,
        ge=0,
        le=86400,
        description=_inherited(_LOST_VOLUME_GRACE, DEFAULT_LOST_VOLUME_GRACE_SECONDS),
    )


SettingsT = TypeVar("SettingsT", bound=BaseModel)


def overlay(defaults: SettingsT, overrides: BaseModel | None) -> SettingsT:
    """`defaults` with every field that `overrides` sets replaced by the override.

    The two models must share field names (the settings and overrides forms of
    one section); the values were validated when each model was parsed.
    """
    if overrides is None:
        return defaults
    unknown = set(type(overrides).model_fields) - set(type(defaults).model_fields)
    if unknown:
        raise TypeError(f"{type(overrides).__name__} has fields {sorted(unknown)} unknown to {type(defaults).__name__}")
    updates = {name: value for name, value in overrides if value is not None}
    return defaults.model_copy(update=updates)
