"""The ports of a member pod and of the Services in front of it, from the constants in one list.

The container, the headless member Services and the master Service all expose
subsets of the same named ports; deriving the three from one table keeps a port
from being added to one and forgotten in another.
"""

from __future__ import annotations

from typing import Any, Final

from mailshard.api.constants import (
    AGENT_PORT,
    IMAP_PORT,
    LMTP_PORT,
    MANAGESIEVE_PORT,
    POP3_PORT,
    PORT_NAME_AGENT,
    PORT_NAME_IMAP,
    PORT_NAME_LMTP,
    PORT_NAME_MANAGESIEVE,
    PORT_NAME_POP3,
    PORT_NAME_REPLICATION,
)
from mailshard.api.v1alpha1 import ResolvedShard

MAIL_PORTS: Final = (
    (PORT_NAME_IMAP, IMAP_PORT),
    (PORT_NAME_POP3, POP3_PORT),
    (PORT_NAME_LMTP, LMTP_PORT),
    (PORT_NAME_MANAGESIEVE, MANAGESIEVE_PORT),
)
"""What clients and the proxies talk to."""


def member_ports(shard: ResolvedShard) -> tuple[tuple[str, int], ...]:
    """Every port a member listens on: mail, the agent's API, and replication."""
    return (*MAIL_PORTS, (PORT_NAME_AGENT, AGENT_PORT), (PORT_NAME_REPLICATION, shard.spec.replication.port))


def member_container_ports(shard: ResolvedShard) -> list[dict[str, Any]]:
    return [{"name": name, "containerPort": port, "protocol": "TCP"} for name, port in member_ports(shard)]


def service_ports(ports: tuple[tuple[str, int], ...]) -> list[dict[str, Any]]:
    """Service ports that forward to the container port of the same name."""
    return [{"name": name, "port": port, "targetPort": name, "protocol": "TCP"} for name, port in ports]
