"""Mail server backends: the runtime contract and pure renderers of daemon configuration.

Why this package exists: it is the seam between *what* a shard member should be
(``MemberRuntimeConfig``, a role, a fence) and *how* a particular IMAP server is
configured to be that. Everything here is pure (no I/O), so it can be used by
the in-pod agent and, later, by the operator to preview configurations.
"""

from mailshard.backends.config import Backend, MemberRuntimeConfig, Peer, Ports, Role
from mailshard.backends.dovecot import InstancePaths, ProcessIdentity, render_dovecot
from mailshard.backends.modes import ReplicationStrategy, ServingMode, serving_mode

__all__ = [
    "Backend",
    "InstancePaths",
    "MemberRuntimeConfig",
    "Peer",
    "Ports",
    "ProcessIdentity",
    "ReplicationStrategy",
    "Role",
    "ServingMode",
    "render_dovecot",
    "serving_mode",
]
