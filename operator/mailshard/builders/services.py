"""The Services of a shard: one headless Service per member, and `<shard>-master` for clients.

The headless Services give each member's pod a stable DNS name
(`<member>-0.<member>.<ns>.svc`) that resolves even while the pod is not ready,
because replication and the operator's calls to the agent must reach a member
that is still catching up. The master Service selects by role, so a failover
moves client traffic by relabelling pods, without touching any Service.
"""

from __future__ import annotations

from typing import Any

from mailshard.api.constants import AGENT_PORT, LABEL_MEMBER, LABEL_ROLE, LABEL_SHARD, PORT_NAME_AGENT
from mailshard.api.v1alpha1 import MemberRole, ResolvedShard
from mailshard.builders.metadata import COMPONENT_MAIL_ENDPOINT, COMPONENT_MAIL_STORE, object_metadata
from mailshard.builders.names import master_service_name, member_service_name
from mailshard.builders.ports import MAIL_PORTS, member_ports, service_ports


def build_member_service(shard: ResolvedShard, member: str) -> dict[str, Any]:
    """The headless Service `<member>`, the StatefulSet's governing Service."""
    if member not in shard.members:
        raise ValueError(f"{member!r} is not a member of shard {shard.name!r}; members are {shard.members}")
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_metadata(
            shard, member_service_name(member), COMPONENT_MAIL_STORE, extra_labels={LABEL_MEMBER: member}
        ),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {LABEL_SHARD: shard.name, LABEL_MEMBER: member},
            "ports": service_ports(member_ports(shard)),
        },
    }


def build_master_service(shard: ResolvedShard) -> dict[str, Any]:
    """The Service `<shard>-master`: the mail ports and the agent's API of whichever member is master."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_metadata(shard, master_service_name(shard.name), COMPONENT_MAIL_ENDPOINT),
        "spec": {
            "type": "ClusterIP",
            "selector": {LABEL_SHARD: shard.name, LABEL_ROLE: MemberRole.MASTER.value},
            "ports": service_ports((*MAIL_PORTS, (PORT_NAME_AGENT, AGENT_PORT))),
        },
    }
