"""What a member actually serves, decided from its role and its fence.

Why this module exists: the role file says what a member was *asked* to be,
the fence marker says whether it must stay out of the way; which listeners,
plugins and replication a daemon gets follows from the two together. Keeping
that one decision here, pure, means the renderer and the agent can never
disagree about it.

The rule is safe by default: a member that does not know its role (missing or
unreadable role file) serves exactly like a fenced one, so it can never take
writes as a master by accident.
"""

from __future__ import annotations

import enum

from mailshard.backends.config import Role


class ServingMode(enum.StrEnum):
    """What the daemon is configured to serve."""

    MASTER = "master"
    """Deliveries (LMTP), IMAP, POP3 and ManageSieve read-write; pushes changes to the peer."""
    REPLICA = "replica"
    """Receives replication over doveadm; no client protocol at all (IMAP, POP3, LMTP, ManageSieve)."""
    FENCED = "fenced"
    """Nothing from the network, not even replication; only local doveadm for status."""


class ReplicationStrategy(enum.StrEnum):
    """Who moves changes to the peer.

    Only ``replicator`` exists today: Dovecot 2.3's replicator and aggregator
    push each change with ``doveadm sync`` right after it happens. Dovecot 2.4
    has no replicator; there the agent will run ``doveadm sync`` itself (an
    ``agent-dsync`` strategy). The renderer and the agent's replication driver
    both switch on this value, so adding that strategy touches those two places.
    """

    REPLICATOR = "replicator"


def serving_mode(role: Role | None, *, fenced: bool) -> ServingMode:
    """The mode a member serves in. An unknown role (``None``) is served as fenced."""
    if fenced or role is None:
        return ServingMode.FENCED
    if role is Role.MASTER:
        return ServingMode.MASTER
    return ServingMode.REPLICA
