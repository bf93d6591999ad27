"""The MailShard kind: one master/replica pair of Dovecot or Cyrus, and what the operator reports about it.

A MailShard is parsed once, at the edge of the operator, with
`MailShard.from_resource(body)`; after that nothing reads the raw dict. Its
inheritable settings are then merged under its MailCluster's `shardDefaults`
with `MailShard.resolve(...)`, and the resulting `ResolvedShard` is the only
input the manifest builders take.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from mailshard.api.enums import Backend, Compression
from mailshard.api.v1alpha1.common import (
    CONDITIONS_LIST,
    Condition,
    DnsLabelName,
    FreeFormObject,
    ResourceMetadata,
    ResourceModel,
    ResourceRequirements,
    SpecModel,
    StatusModel,
    cel,
    validations,
)
from mailshard.api.v1alpha1.settings import (
    CapacityOverrides,
    CapacitySettings,
    FailoverOverrides,
    FailoverSettings,
    PodAntiAffinityType,
    ReplicationOverrides,
    ReplicationSettings,
    ShardDefaults,
    StorageOverrides,
    StorageSettings,
    overlay,
)

KIND: Final = "MailShard"

MEMBER_SUFFIXES: Final = ("a", "b")
"""Members get neutral names: which one is master changes at every failover."""


def member_names(shard_name: str) -> tuple[str, str]:
    """The two members of a shard, e.g. `("inbox-1-a", "inbox-1-b")`. Each is a StatefulSet and a Service."""
    first, second = MEMBER_SUFFIXES
    return f"{shard_name}-{first}", f"{shard_name}-{second}"


# --- spec ---------------------------------------------------------------------------------------


class ClusterRef(SpecModel):
    """The MailCluster a shard belongs to."""

    name: DnsLabelName = Field(description="Name of a MailCluster in the shard's namespace.")


class Placement(SpecModel):
    """Where the members' pods may run.

    Whatever is set here, the operator always adds a pod anti-affinity on
    kubernetes.io/hostname between the two members of the shard. By default it is
    required: a master and its replica never share a node, so one node failure
    never takes both. `preferred` lets them share one when no other node fits.
    """

    node_selector: dict[str, str] | None = Field(
        default=None, description="Node labels a member's node must have, as in a Pod's nodeSelector."
    )
    tolerations: tuple[FreeFormObject, ...] | None = Field(
        default=None, description="Tolerations of the members' pods, as in a Pod's tolerations."
    )
    affinity: FreeFormObject | None = Field(
        default=None,
        description=(
            "Extra affinity of the members' pods, as in a Pod's affinity. The operator's own "
            "anti-affinity between the two members (see podAntiAffinityType) is added to it, never "
            "replaced by it."
        ),
    )
    pod_anti_affinity_type: PodAntiAffinityType | None = Field(
        default=None,
        description=(
            "How firmly the two members are kept on different nodes. required: never on one node, so a "
            "member waits Pending until a second node fits. preferred: spread when possible, both on one "
            "node when not (a single-node development or test cluster); then one node failure takes the "
            "whole shard. Unset: taken from the MailCluster's spec.shardDefaults, else required."
        ),
    )


class MailShardSpec(SpecModel):
    """The desired state of a shard."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "!has(oldSelf.clusterRef) || has(self.clusterRef)",
                "spec.clusterRef cannot be removed: the shard's users are routed by its cluster",
            )
        )
    )

    backend: Backend = Field(
        description="The IMAP server of the shard: dovecot or cyrus. Immutable, because it fixes the mail format.",
        json_schema_extra=validations(
            cel(
                "self == oldSelf",
                "spec.backend is immutable: the mail on the volumes is in the backend's own format; "
                "create a new shard and migrate the users instead",
            )
        ),
    )
    image: str | None = Field(
        default=None,
        min_length=1,
        description="Container image of the members. Unset: the operator's own mailshard/<backend> image.",
    )
    capacity: CapacityOverrides | None = Field(default=None, description="How big the shard is.")
    storage: StorageOverrides | None = Field(default=None, description="The mail volume of each member.")
    resources: ResourceRequirements | None = Field(
        default=None,
        description=(
            "CPU and memory of the mail container in each member. Unset: taken from the MailCluster's "
            "spec.shardDefaults.resources, else none."
        ),
    )
    placement: Placement | None = Field(default=None, description="Where the members' pods may run.")
    replication: ReplicationOverrides | None = Field(default=None, description="Replication from master to replica.")
    failover: FailoverOverrides | None = Field(
        default=None, description="Automatic promotion of the replica when the master fails."
    )
    cluster_ref: ClusterRef | None = Field(
        default=None,
        description=(
            "The MailCluster this shard serves users of. It cannot be changed or removed once set. "
            "A shard whose cluster does not exist is reported as Failed."
        ),
        json_schema_extra=validations(
            cel("self == oldSelf", "spec.clusterRef is immutable: the shard's users are routed by its cluster")
        ),
    )
    compression: Compression | None = Field(
        default=None,
        description=(
            "Compression of message files at rest: none or zlib. Unset: taken from the MailCluster's "
            "spec.shardDefaults, else none."
        ),
    )


# --- status -------------------------------------------------------------------------------------


class ShardPhase(enum.StrEnum):
    """A one-word summary of a shard for humans; automation should read the conditions."""

    PENDING = "Pending"
    """Nothing is running yet."""
    PROVISIONING = "Provisioning"
    """The pair is being built and has never been fully ready."""
    HEALTHY = "Healthy"
    """Both members are ready and the master is known."""
    UPDATING = "Updating"
    """A member is being replaced on purpose (a rollout); the other one serves."""
    DEGRADED = "Degraded"
    """A pair that was healthy has lost a member it did not choose to lose, or after a failover has it back
    but not yet seen in sync with the new master."""
    FAILING_OVER = "FailingOver"
    """The replica is being promoted."""
    FENCED = "Fenced"
    """The master is fenced out and the operator waits for a human (e.g. lag too high to promote)."""
    FAILED = "Failed"
    """The operator cannot act on the spec (invalid, or its cluster is missing)."""


class MemberRole(enum.StrEnum):
    """What a member currently is."""

    MASTER = "master"
    REPLICA = "replica"
    UNKNOWN = "unknown"


class ShardConditionType(enum.StrEnum):
    """The conditions of a MailShard. Reconciling and Stalled follow kstatus."""

    READY = "Ready"
    REPLICATING = "Replicating"
    DEGRADED = "Degraded"
    FAILING_OVER = "FailingOver"
    RECONCILING = "Reconciling"
    STALLED = "Stalled"


class MemberStatus(StatusModel):
    """What the operator last observed about one member."""

    name: str = Field(description="Member name, also its StatefulSet and headless Service.")
    node: str | None = Field(default=None, description="Node the member's pod runs on.")
    role: MemberRole = Field(default=MemberRole.UNKNOWN, description="master, replica or unknown.")
    ready: bool = Field(default=False, description="Whether the member's pod is ready.")
    lag_seconds: float | None = Field(
        default=None, ge=0, description="Replication lag of this member behind the master, in seconds."
    )
    last_sync_time: datetime | None = Field(
        default=None, description="When this member last completed a replication round with the master."
    )


class FailoverCause(enum.StrEnum):
    """Why a master was replaced (`lastFailover.cause`)."""

    MASTER_DOWN = "MasterDown"
    """The operator found the master down and promoted the replica on its own."""
    SWITCHOVER = "Switchover"
    """A human asked for a planned switchover: the replica was drained first, so nothing was lost."""
    FORCED_PROMOTION = "ForcedPromotion"
    """A human forced the promotion of a replica the operator would not promote, accepting what it lacked."""


UNPLANNED_CAUSES: Final = frozenset({FailoverCause.MASTER_DOWN, FailoverCause.FORCED_PROMOTION})
"""The causes after which the member left behind must catch up before the pair is whole again."""


class FailoverRecord(StatusModel):
    """The last promotion of a replica."""

    from_member: str = Field(alias="from", description="The member that was master before.")
    to_member: str = Field(alias="to", description="The member that was promoted.")
    reason: str = Field(description="Why the operator failed over.")
    started: datetime = Field(description="When the failover began.")
    duration_seconds: float | None = Field(default=None, ge=0, description="How long the shard had no writable master.")
    messages_at_risk: int | None = Field(
        default=None,
        ge=0,
        description="Messages the old master had accepted that the replica had not received, when known.",
    )
    cause: FailoverCause | None = Field(
        default=None,
        description="MasterDown, Switchover or ForcedPromotion. Unset in records written before it existed.",
    )
    replica_in_sync_at: datetime | None = Field(
        default=None,
        description=(
            "When the member that was replaced was first seen back in sync with the new master, as its "
            "replica. Until then, after a MasterDown or ForcedPromotion, the shard is Degraded."
        ),
    )


class FailoverStep(enum.StrEnum):
    """One step of a failover or planned switchover, in the order they run (see `mailshard.failover.steps`)."""

    FENCE_ROUTING = "FenceRouting"
    """Point the routing layer (the master Service and the proxies) at no member at all."""
    DRAIN = "Drain"
    """Wait until the target holds everything the old master accepted (only while the old master is up)."""
    FENCE_OLD_MASTER = "FenceOldMaster"
    """Tell the old master's agent to fence it (skipped, with routing already fenced, when it cannot be reached)."""
    PROMOTE = "Promote"
    """Tell the target's agent to become master."""
    RAISE_UIDNEXT = "RaiseUidNext"
    """Raise every mailbox's UIDNEXT on the new master above any UID the old master may have assigned."""
    REPOINT_ROUTING = "RepointRouting"
    """Point the routing layer at the new master."""
    REPLAY_JOURNAL = "ReplayJournal"
    """Deliver on the new master what the old one acknowledged but never replicated (its delivery journal)."""
    REJOIN_OLD_MASTER = "RejoinOldMaster"
    """Demote the old master, make its store equal to the new master's, and unfence it as replica (when it is up)."""
    RECORD = "Record"
    """Write the new master and the failover record into the status; the failover is over."""


STEP_ORDER: Final[tuple[FailoverStep, ...]] = tuple(FailoverStep)


def step_index(step: FailoverStep | None) -> int:
    """Position of a completed step; -1 for "nothing completed yet", so comparisons read naturally."""
    return -1 if step is None else STEP_ORDER.index(step)


def routed_during_failover(source: str, target: str, completed: FailoverStep | None) -> str | None:
    """Where routing points while a failover runs: the old master, nobody once fenced, then the target."""
    if completed is None:
        return source
    if step_index(completed) >= step_index(FailoverStep.REPOINT_ROUTING):
        return target
    return None


class FailoverProgressStatus(StatusModel):
    """A failover or switchover under way, recorded after each step so that a restarted operator resumes it."""

    from_member: str = Field(alias="from", description="The master being replaced.")
    to_member: str = Field(alias="to", description="The member being promoted (also `targetMaster`).")
    planned: bool = Field(default=False, description="A switchover a human asked for, rather than a failover.")
    forced: bool = Field(
        default=False,
        description="A promotion a human forced (mailshard.io/force-promote), accepting what the target lacks.",
    )
    started: datetime = Field(description="When the failover or switchover began.")
    reason: str = Field(description="Why it began.")
    completed_step: FailoverStep | None = Field(
        default=None,
        description="The last step done: FenceRouting, Drain, FenceOldMaster, Promote, RaiseUidNext, "
        "RepointRouting, RejoinOldMaster or Record. Unset right after the start.",
    )
    completed_at: datetime = Field(description="When that step was recorded (the start time while none is).")
    messages_at_risk: int | None = Field(
        default=None, ge=0, description="Messages the old master had reported that the target lacked, when known."
    )
    serving_since: datetime | None = Field(
        default=None,
        description=(
            "When routing was pointed at the new master (RepointRouting): the end of the outage that "
            "`lastFailover.durationSeconds` reports. Unset until then."
        ),
    )

    @property
    def routed_member(self) -> str | None:
        """Where routing points while this runs (`routed_during_failover`)."""
        return routed_during_failover(self.from_member, self.to_member, self.completed_step)


class MailShardStatus(StatusModel):
    """The observed state of a shard, written only by the operator."""

    phase: ShardPhase | None = Field(
        default=None,
        description="Pending, Provisioning, Healthy, Updating, Degraded, FailingOver, Fenced or Failed.",
    )
    master: str | None = Field(default=None, description="The member currently serving as master.")
    replica: str | None = Field(default=None, description="The member currently serving as replica.")
    lag_seconds: float | None = Field(default=None, ge=0, description="Current replication lag of the replica.")
    members: tuple[MemberStatus, ...] = Field(
        default=(),
        description="Both members as last observed.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    conditions: tuple[Condition, ...] = Field(
        default=(),
        description="Ready, Replicating, Degraded, FailingOver, Reconciling and Stalled.",
        json_schema_extra=CONDITIONS_LIST,
    )
    observed_generation: int | None = Field(
        default=None, ge=0, description="The metadata.generation this status describes."
    )
    last_failover: FailoverRecord | None = Field(default=None, description="The last promotion of a replica.")
    mailboxes: int | None = Field(default=None, ge=0, description="Mailboxes currently stored on the shard.")
    target_master: str | None = Field(
        default=None,
        description="During a failover, the member being promoted. Cleared when the failover completes.",
    )
    failing_since: datetime | None = Field(
        default=None,
        description="When the operator first saw the current master unavailable; cleared when it recovers.",
    )
    recovering_since: datetime | None = Field(
        default=None,
        description="While failingSince is set: when the master was seen back. It is forgiven once it has "
        "stayed up for failover.delaySeconds.",
    )
    uncertain_since: datetime | None = Field(
        default=None,
        description="Since when the operator cannot tell whether the master is alive (nobody is promoted then).",
    )
    failover: FailoverProgressStatus | None = Field(
        default=None, description="The failover or switchover under way, step by step; unset when none is."
    )
    superseded: tuple[str, ...] = Field(
        default=(),
        description=(
            "Old masters a failover (or a split-brain repair) fenced, until the operator has re-seeded them "
            "as replica. The shard's ConfigMap carries this list; a listed member's agent reads it when it "
            "starts and never serves as master, only fenced, even if nothing could tell it it was replaced."
        ),
    )

    @property
    def routed_member(self) -> str | None:
        """The one member the routing layer may send users to now, or None while a failover has fenced it."""
        if self.failover is not None:
            return self.failover.routed_member
        return self.master

    def condition(self, condition_type: str) -> Condition | None:
        """The condition of that type, if the status has one."""
        return next((c for c in self.conditions if c.type == condition_type), None)


# --- the resource, and the resolved shard the builders take ---------------------------------------


class ResolvedShardSpec(BaseModel):
    """A shard's settings after merging its own spec over its cluster's defaults: nothing is left unset."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    backend: Backend
    image: str | None
    capacity: CapacitySettings
    storage: StorageSettings
    resources: ResourceRequirements
    placement: Placement
    replication: ReplicationSettings
    failover: FailoverSettings
    compression: Compression
    cluster_name: str | None


class ResolvedShard(BaseModel):
    """Everything needed to build a shard's manifests: its identity and its resolved settings."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    namespace: str
    uid: str
    generation: int
    spec: ResolvedShardSpec

    @property
    def members(self) -> tuple[str, str]:
        """The two member names, `<shard>-a` and `<shard>-b`."""
        return member_names(self.name)

    @property
    def part_of(self) -> str:
        """What the shard is part of: its cluster, or itself when it stands alone."""
        return self.spec.cluster_name or self.name


class MailShard(ResourceModel):
    """A highly available IMAP mail store: two members, one master and one replica, on different nodes."""

    resource_kind = KIND

    api_version: Literal["mailshard.io/v1alpha1"] = "mailshard.io/v1alpha1"
    kind: Literal["MailShard"] = "MailShard"
    metadata: ResourceMetadata
    spec: MailShardSpec
    status: MailShardStatus = Field(default_factory=MailShardStatus)

    def resolve(self, defaults: ShardDefaults | None) -> ResolvedShard:
        """Merge this shard's own settings over its cluster's `shardDefaults` (built-in defaults if None).

        Each leaf the shard sets wins; `resources` is taken as a whole; placement and
        image are the shard's own.
        """
        base = defaults if defaults is not None else ShardDefaults()
        spec = self.spec
        resolved = ResolvedShardSpec(
            backend=spec.backend,
            image=spec.image,
            capacity=overlay(base.capacity, spec.capacity),
            storage=overlay(base.storage, spec.storage),
            resources=spec.resources or base.resources or ResourceRequirements(),
            placement=_resolved_placement(spec.placement, base),
            replication=overlay(base.replication, spec.replication),
            failover=overlay(base.failover, spec.failover),
            compression=spec.compression or base.compression,
            cluster_name=spec.cluster_ref.name if spec.cluster_ref else None,
        )
        return ResolvedShard(
            name=self.metadata.name,
            namespace=self.metadata.namespace,
            uid=self.metadata.uid,
            generation=self.metadata.generation,
            spec=resolved,
        )


def _resolved_placement(placement: Placement | None, defaults: ShardDefaults) -> Placement:
    """The shard's placement with its anti-affinity type filled in from the cluster's default."""
    own = placement or Placement()
    if own.pod_anti_affinity_type is not None:
        return own
    return own.model_copy(update={"pod_anti_affinity_type": defaults.pod_anti_affinity_type})
