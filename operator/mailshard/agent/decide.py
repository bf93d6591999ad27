"""Pure decisions of the agent: which role changes are allowed, and how healthy replication is.

Why this module exists: the rules that keep a pair from having two masters are
few but critical, so they live here as small functions over plain values, with
no clock, no files and no sockets. The service layer (``service.py``) gathers
the facts, calls these, and carries out the answer.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from mailshard.backends import Role, ServingMode, serving_mode


class Action(enum.StrEnum):
    PROMOTE = "promote"
    DEMOTE = "demote"
    FENCE = "fence"
    UNFENCE = "unfence"


@dataclass(frozen=True)
class MemberState:
    """What the member was told: its role (None when unknown) and whether it is fenced."""

    role: Role | None
    fenced: bool

    @property
    def mode(self) -> ServingMode:
        return serving_mode(self.role, fenced=self.fenced)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    target: MemberState
    reason: str
    changes: bool


def _allow(current: MemberState, target: MemberState, reason: str) -> Decision:
    return Decision(True, target, reason, changes=target != current)


def _refuse(current: MemberState, reason: str) -> Decision:
    return Decision(False, current, reason, changes=False)


def decide_action(
    action: Action,
    current: MemberState,
    *,
    peer_mode: ServingMode | None,
    force: bool = False,
) -> Decision:
    """Decide one role change.

    A fenced member cannot be promoted (unfence it first: fencing is an explicit
    human or operator decision, and promotion must not silently undo it). A
    member is not promoted while its peer says it serves as master, unless
    ``force`` is given (the operator knows the peer is gone); this is the
    agent's last line of defence against split brain, the operator's ordering
    (fence or demote the old master, then promote) is the first.
    """
    if action is Action.PROMOTE:
        if current.fenced:
            return _refuse(current, "member is fenced: unfence it before promoting")
        if peer_mode is ServingMode.MASTER and not force:
            return _refuse(current, "peer reports it serves as master: demote or fence it first (or force)")
        return _allow(current, MemberState(Role.MASTER, current.fenced), "promoted to master")
    if action is Action.DEMOTE:
        return _allow(current, MemberState(Role.REPLICA, current.fenced), "demoted to replica")
    if action is Action.FENCE:
        return _allow(current, MemberState(current.role, True), "fenced")
    return _allow(current, MemberState(current.role, False), "unfenced")


class ReplicationState(enum.StrEnum):
    OFF = "off"
    """Fenced or role unknown: this member neither sends nor receives."""
    IN_SYNC = "in-sync"
    CATCHING_UP = "catching-up"
    FAILING = "failing"
    """The replica cannot be reached or rejects us, the replicator reports failed syncs, or this member's
    volume is too full to write: never reported in sync while it cannot take what replication brings."""
    UNKNOWN = "unknown"
    """No state of the peer has been seen yet."""


def replication_state(
    *,
    mode: ServingMode,
    have_peer_state: bool,
    in_sync: bool,
    peer_problem: str | None,
    failed_users: int,
    volume_full: bool = False,
) -> ReplicationState:
    if mode is ServingMode.FENCED:
        return ReplicationState.OFF
    if peer_problem is not None or failed_users > 0 or volume_full:
        return ReplicationState.FAILING
    if not have_peer_state:
        return ReplicationState.UNKNOWN
    return ReplicationState.IN_SYNC if in_sync else ReplicationState.CATCHING_UP


def master_and_replica(own_mode: ServingMode, peer_mode: ServingMode | None) -> tuple[str, str] | None:
    """Which side ("self" or "peer") is the master and which the replica, if the pair is well-formed."""
    if own_mode is ServingMode.MASTER and peer_mode is ServingMode.REPLICA:
        return ("self", "peer")
    if own_mode is ServingMode.REPLICA and peer_mode is ServingMode.MASTER:
        return ("peer", "self")
    if own_mode is ServingMode.MASTER and peer_mode in {None, ServingMode.FENCED}:
        # The replica is down or fenced: it still is the side that must catch up.
        return ("self", "peer")
    return None


def ready_as_master(*, mode: ServingMode, daemon_up: bool, config_error: str | None) -> bool:
    """Whether this member may receive master traffic (what a readiness gate for the master Service asks)."""
    return mode is ServingMode.MASTER and daemon_up and config_error is None
