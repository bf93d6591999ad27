"""The PodDisruptionBudget `<shard>` over both members.

`maxUnavailable: 1` is the one budget that protects the pair without getting in
the way. While both members are up, one of them may be evicted, so draining a
node for maintenance goes through (if it held the master, the replica takes
over). Once one member is down, the budget is spent and the API refuses to
evict the other, so a drain cannot take the last copy of the mail. By contrast
`minAvailable: 2` would block every voluntary eviction forever, and
`minAvailable: 1` says the same as this budget but stops fitting if a member is
ever added.
"""

from __future__ import annotations

from typing import Any

from mailshard.api.constants import LABEL_SHARD
from mailshard.api.v1alpha1 import ResolvedShard
from mailshard.builders.metadata import COMPONENT_MAIL_STORE, object_metadata
from mailshard.builders.names import pod_disruption_budget_name


def build_pod_disruption_budget(shard: ResolvedShard) -> dict[str, Any]:
    """At most one member of the shard voluntarily disrupted at a time."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": object_metadata(shard, pod_disruption_budget_name(shard.name), COMPONENT_MAIL_STORE),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": {LABEL_SHARD: shard.name}},
        },
    }
