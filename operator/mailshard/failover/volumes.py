"""What to do about a member whose mail volume is lost: wait, recreate its pod, or give it a new volume.

Why a module of its own: a StatefulSet never repairs a lost local volume by
itself. If the claim is deleted, the pod it re-creates waits Pending for a
claim that is being deleted; if the node holding a local PV dies, the pod can
only ever be scheduled back onto that node. A human would then delete the pod,
or the claim and the pod, and let the StatefulSet start the member afresh on a
new volume, to be re-seeded from the master. Deleting a claim destroys mail,
so the rule for when the operator may do it is written here, as a pure
function with a table, and nowhere else.

Which members, first (`replaceable`): only a member that is not the one the
routing table may point at, and only while the other member is up as master.
A lost master is never touched here: the failover promotes its replica first,
and only then is the old master, now a plain member, replaced. So the volume
deleted is never the only copy of the mail, and an empty member never serves.

Then, for that member (first matching row wins):

=======================================  =========================  ===========================================
claim                                     node of its volume          action
=======================================  =========================  ===========================================
missing, or being deleted                 any                         RECREATE_POD at once: the mail on it is
                                                                      already gone; the pod must go for the
                                                                      StatefulSet to create a new claim
bound to a node that no longer exists     gone                        REPLACE_VOLUME at once
bound to a node NotReady or unreachable   not ready since t           REPLACE_VOLUME once t + grace has passed,
                                                                      else WAIT until then
anything else                             ready, or not yet bound     NONE
=======================================  =========================  ===========================================

A grace of None means the policy never replaces a volume on a NotReady node
(a human decides), while lost claims and deleted nodes are still handled.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta


class ClaimState(enum.StrEnum):
    """The member's mail claim as the API server shows it."""

    BOUND = "bound"
    PENDING = "pending"
    """Not bound yet: a new member waiting for its first consumer, which is normal."""
    TERMINATING = "terminating"
    MISSING = "missing"


class VolumeNode(enum.StrEnum):
    """The node a bound local volume lives on (its PV's node affinity), as the API server shows it."""

    READY = "ready"
    NOT_READY = "not-ready"
    GONE = "gone"
    """The Node object was deleted: the machine and its disk are not coming back."""
    NONE = "none"
    """The volume is not tied to a node (network storage), or the claim is not bound."""


class VolumeAction(enum.StrEnum):
    NONE = "none"
    WAIT = "wait"
    RECREATE_POD = "recreate-pod"
    REPLACE_VOLUME = "replace-volume"


@dataclass(frozen=True)
class MemberVolumeFacts:
    """One member's claim, the node its volume lives on, and whether anything of its pod exists."""

    member: str
    claim: ClaimState
    node: VolumeNode = VolumeNode.NONE
    node_name: str | None = None
    node_not_ready_since: datetime | None = None
    pod_exists: bool = True


@dataclass(frozen=True)
class VolumeDecision:
    action: VolumeAction
    member: str
    reason: str
    not_before: datetime | None = None
    """For WAIT: when the grace period ends."""


def replaceable(member: str, *, routed: str | None, other_is_serving_master: bool) -> bool:
    """Whether the member may lose its volume at all: never the routed master, and only beside a serving master."""
    return member != routed and other_is_serving_master


def decide_volume(facts: MemberVolumeFacts, *, grace: timedelta | None, now: datetime) -> VolumeDecision:
    """The one thing to do about a replaceable member's volume; see the module's table."""
    name = facts.member
    if facts.claim in (ClaimState.MISSING, ClaimState.TERMINATING):
        if not facts.pod_exists:
            return VolumeDecision(
                VolumeAction.NONE, name, "its claim is gone and its pod too: the StatefulSet recreates both"
            )
        return VolumeDecision(
            VolumeAction.RECREATE_POD,
            name,
            f"its mail claim is {facts.claim.value}: the pod is recreated so that the StatefulSet makes a new "
            "claim, and the member is re-seeded from the master",
        )
    if facts.claim is not ClaimState.BOUND:
        return VolumeDecision(VolumeAction.NONE, name, f"its claim is {facts.claim.value}")
    node = facts.node_name or "its node"
    if facts.node is VolumeNode.GONE:
        return VolumeDecision(
            VolumeAction.REPLACE_VOLUME,
            name,
            f"its volume is on {node}, which no longer exists: it gets a new volume on another node and is "
            "re-seeded from the master",
        )
    if facts.node is not VolumeNode.NOT_READY:
        return VolumeDecision(VolumeAction.NONE, name, "its volume's node is ready")
    if grace is None:
        return VolumeDecision(
            VolumeAction.NONE, name, f"its volume is on {node}, which is NotReady; replacing it is left to a human"
        )
    since = facts.node_not_ready_since or now
    deadline = since + grace
    if now < deadline:
        return VolumeDecision(
            VolumeAction.WAIT,
            name,
            f"its volume is on {node}, NotReady since {since.isoformat()}; it is replaced if that lasts until "
            f"{deadline.isoformat()}",
            not_before=deadline,
        )
    return VolumeDecision(
        VolumeAction.REPLACE_VOLUME,
        name,
        f"its volume is on {node}, NotReady for {(now - since).total_seconds():.0f} s (grace "
        f"{grace.total_seconds():.0f} s): it gets a new volume on another node and is re-seeded from the master",
    )
