"""The MailCluster kind: the IMAP/POP3/LMTP proxies, the user-to-shard routing, and defaults for its shards.

A MailCluster does not own its shards: each MailShard points at it with
`spec.clusterRef`. What the cluster contributes to a shard is `shardDefaults`,
merged under the shard's own settings by `MailShard.resolve`.
"""

from __future__ import annotations

import enum
from typing import Annotated, Final, Literal

from pydantic import AfterValidator, Field

from mailshard.api.v1alpha1.common import (
    CONDITIONS_LIST,
    Condition,
    JsonSchema,
    ResourceMetadata,
    ResourceModel,
    ResourceRequirements,
    SpecModel,
    StatusModel,
    cel,
    validations,
)
from mailshard.api.v1alpha1.settings import ShardDefaults

KIND: Final = "MailCluster"

DEFAULT_PROXY_REPLICAS: Final = 2
DEFAULT_SLOTS: Final = 1024
MAX_SLOTS: Final = 65536


class Protocol(enum.StrEnum):
    """A mail protocol the proxies serve."""

    IMAP = "imap"
    POP3 = "pop3"
    LMTP = "lmtp"
    MANAGESIEVE = "managesieve"


def _unique_protocols(protocols: tuple[Protocol, ...]) -> tuple[Protocol, ...]:
    if len(set(protocols)) != len(protocols):
        raise ValueError(f"proxy.protocols lists a protocol twice: {[p.value for p in protocols]}")
    return protocols


class ServiceType(enum.StrEnum):
    """How the proxies' Service is exposed (the Kubernetes Service types that make sense for mail)."""

    CLUSTER_IP = "ClusterIP"
    NODE_PORT = "NodePort"
    LOAD_BALANCER = "LoadBalancer"


class ProxyServiceSpec(SpecModel):
    """The Service `<cluster>-proxy` that clients and MTAs connect to."""

    type: ServiceType = Field(
        default=ServiceType.CLUSTER_IP,
        description="ClusterIP (default), NodePort or LoadBalancer.",
    )
    annotations: dict[str, str] = Field(
        default_factory=dict,
        description="Annotations of the Service, e.g. for a load balancer's address pool.",
    )


class ProxySpec(SpecModel):
    """The stateless proxies in front of the shards, routing each user to their shard's master."""

    replicas: int = Field(default=DEFAULT_PROXY_REPLICAS, ge=0, description="Number of proxy pods.")
    protocols: Annotated[tuple[Protocol, ...], AfterValidator(_unique_protocols)] = Field(
        default=tuple(Protocol),
        min_length=1,
        description="Protocols the proxies serve: imap, pop3, lmtp, managesieve. Default: all four.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    image: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "Container image of the proxies (Dovecot with dovecot-auth-lua and the mailshard package). "
            "Unset: the operator's own mailshard/dovecot image."
        ),
    )
    resources: ResourceRequirements | None = Field(default=None, description="CPU and memory of each proxy.")
    service: ProxyServiceSpec = Field(
        default_factory=ProxyServiceSpec,
        description="The Service in front of the proxies.",
        json_schema_extra={"default": {}},
    )


class TlsSpec(SpecModel):
    """TLS of the client-facing proxies."""

    secret_name: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "A kubernetes.io/tls Secret in the cluster's namespace with the proxies' certificate and key. "
            "Unset: the proxies offer no TLS."
        ),
    )


class RoutingSpec(SpecModel):
    """How users are mapped to shards: hashed into slots, slots assigned to shards, with overrides."""

    slots: int = Field(
        default=DEFAULT_SLOTS,
        ge=1,
        le=MAX_SLOTS,
        description=(
            "Number of hash slots users are spread over. Immutable: changing it would move almost every "
            "user to another slot, and so to another shard."
        ),
        json_schema_extra=validations(
            cel("self == oldSelf", "spec.routing.slots is immutable: changing it would move users between shards")
        ),
    )
    overrides_config_map: str | None = Field(
        default=None,
        min_length=1,
        description="A ConfigMap in the cluster's namespace pinning individual users to shards.",
    )


_OBJECT_DEFAULT: Final[JsonSchema] = {"default": {}}

USERS_KEY_PATTERN: Final = r"^[-._a-zA-Z0-9]+$"
"""A Secret data key."""


SecretName = Annotated[
    str,
    Field(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"),
]


def _unique_names(names: tuple[str, ...]) -> tuple[str, ...]:
    if len(set(names)) != len(names):
        raise ValueError(f"users.secretNames lists a Secret twice: {list(names)}")
    return names


class UsersSpec(SpecModel):
    """Where the cluster's mail users come from: Dovecot passwd-file lines kept in Secrets.

    The operator reads these Secrets, routes each user through the routing
    table, and gives each shard a Secret `<shard>-users` with its own users only,
    which its members read as their passdb/userdb (and the replicator iterates).
    A Secret holds at most 1 MiB, about 8,000 users with hashed passwords: list
    several to hold more.
    """

    secret_names: Annotated[tuple[SecretName, ...], AfterValidator(_unique_names)] = Field(
        min_length=1,
        max_length=64,
        description=(
            "Secrets in the cluster's namespace, each holding passwd-file lines "
            "(`user:{SCHEME}hash::::::`) under `key`. A user listed twice keeps its first line."
        ),
        json_schema_extra={"x-kubernetes-list-type": "atomic"},
    )
    key: str = Field(
        default="passwd", min_length=1, max_length=253, pattern=USERS_KEY_PATTERN, description="The data key."
    )


class MailClusterSpec(SpecModel):
    """The desired state of a mail cluster."""

    proxy: ProxySpec = Field(
        default_factory=ProxySpec, description="The client-facing proxies.", json_schema_extra=_OBJECT_DEFAULT
    )
    tls: TlsSpec | None = Field(default=None, description="TLS of the proxies.")
    users: UsersSpec | None = Field(
        default=None,
        description="The mail users, given to each shard as its own `<shard>-users` Secret. Unset: none.",
    )
    routing: RoutingSpec = Field(
        default_factory=RoutingSpec, description="User-to-shard routing.", json_schema_extra=_OBJECT_DEFAULT
    )
    shard_defaults: ShardDefaults = Field(
        default_factory=ShardDefaults,
        description="Settings every MailShard of this cluster inherits unless it sets them itself.",
        json_schema_extra=_OBJECT_DEFAULT,
    )


class ClusterConditionType(enum.StrEnum):
    """The conditions of a MailCluster. Reconciling and Stalled follow kstatus."""

    READY = "Ready"
    DEGRADED = "Degraded"
    RECONCILING = "Reconciling"
    STALLED = "Stalled"


class MailClusterStatus(StatusModel):
    """The observed state of a mail cluster, written only by the operator."""

    shards: int | None = Field(default=None, ge=0, description="MailShards referring to this cluster.")
    ready_shards: int | None = Field(default=None, ge=0, description="Of those, the shards that are Ready.")
    routing_version: int | None = Field(
        default=None, ge=0, description="Increments every time the routing table the proxies use changes."
    )
    proxies_ready: int | None = Field(default=None, ge=0, description="Proxy pods that are ready.")
    users: int | None = Field(
        default=None, ge=0, description="Users read from spec.users' Secrets and given to the shards they route to."
    )
    conditions: tuple[Condition, ...] = Field(
        default=(), description="Ready, Degraded, Reconciling and Stalled.", json_schema_extra=CONDITIONS_LIST
    )
    observed_generation: int | None = Field(
        default=None, ge=0, description="The metadata.generation this status describes."
    )

    def condition(self, condition_type: str) -> Condition | None:
        """The condition of that type, if the status has one."""
        return next((c for c in self.conditions if c.type == condition_type), None)


class MailCluster(ResourceModel):
    """A set of mail shards behind shared proxies that route every user to the shard holding their mail."""

    resource_kind = KIND

    api_version: Literal["mailshard.io/v1alpha1"] = "mailshard.io/v1alpha1"
    kind: Literal["MailCluster"] = "MailCluster"
    metadata: ResourceMetadata
    spec: MailClusterSpec = Field(default_factory=MailClusterSpec, json_schema_extra=_OBJECT_DEFAULT)
    status: MailClusterStatus = Field(default_factory=MailClusterStatus)
