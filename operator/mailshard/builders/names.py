"""The names of every object a shard or cluster is made of, derived from the shard or cluster name alone.

The builders name objects with these functions and the services find them with
the same functions, so the two can never disagree. All of them stay within DNS
label limits for any shard name the API accepts (see MAX_NAME_LENGTH).
"""

from __future__ import annotations

from typing import Final

MAIL_VOLUME: Final = "mail"
"""The volumeClaimTemplate of each member; its claims are `mail-<member>-0`."""

CONTAINER_NAME: Final = "mail"
"""The one container of a member pod, whatever the backend, so `kubectl logs -c mail` always works."""


def statefulset_name(member: str) -> str:
    """Each member is a StatefulSet of one pod, named after the member."""
    return member


def member_service_name(member: str) -> str:
    """The headless Service giving a member's pod its stable DNS name."""
    return member


def pod_name(member: str) -> str:
    """The member's only pod."""
    return f"{member}-0"


def volume_claim_name(member: str) -> str:
    """The member's mail volume claim, as the StatefulSet controller names it."""
    return f"{MAIL_VOLUME}-{pod_name(member)}"


def member_host(member: str, namespace: str) -> str:
    """The stable DNS name of a member's pod, reachable even while it is not ready."""
    return f"{pod_name(member)}.{member_service_name(member)}.{namespace}.svc"


def master_service_name(shard_name: str) -> str:
    """The Service that always points at the shard's current master."""
    return f"{shard_name}-master"


def config_map_name(shard_name: str) -> str:
    """The ConfigMap holding the agent's runtime config."""
    return f"{shard_name}-config"


def replication_secret_name(shard_name: str) -> str:
    """The Secret holding the replication password and the agent's API token."""
    return f"{shard_name}-replication"


def pod_disruption_budget_name(shard_name: str) -> str:
    """The PodDisruptionBudget over both members."""
    return shard_name


def routing_config_map_name(cluster_name: str) -> str:
    """The ConfigMap holding a MailCluster's routing table, which the proxies follow."""
    return f"{cluster_name}-routing"


def proxy_name(cluster_name: str) -> str:
    """The proxy tier of a MailCluster: its Deployment, Service, ServiceAccount, Role, RoleBinding and budget."""
    return f"{cluster_name}-proxy"


def users_secret_name(shard_name: str) -> str:
    """The shard's own users (passwd-file lines), cut from the cluster's users by the routing table."""
    return f"{shard_name}-users"
