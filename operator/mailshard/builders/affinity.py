"""The pod affinity of a member: the user's, plus the rule that keeps the two members apart.

A master and its replica on one node would make a single node failure lose the
whole shard, so the anti-affinity is added to whatever the user asked for and
can never be replaced by it. It is required unless the shard says `preferred`
(a single-node cluster), and then it is the heaviest preference.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, Final

from mailshard.api.constants import LABEL_SHARD

HOSTNAME_TOPOLOGY_KEY: Final = "kubernetes.io/hostname"
_REQUIRED: Final = "requiredDuringSchedulingIgnoredDuringExecution"
_PREFERRED: Final = "preferredDuringSchedulingIgnoredDuringExecution"
_HEAVIEST: Final = 100


def member_anti_affinity_term(shard_name: str) -> dict[str, Any]:
    """No two pods of the same shard on one node."""
    return {
        "labelSelector": {"matchLabels": {LABEL_SHARD: shard_name}},
        "topologyKey": HOSTNAME_TOPOLOGY_KEY,
    }


def merge_affinity(
    user_affinity: Mapping[str, Any] | None, shard_name: str, *, required: bool = True
) -> dict[str, Any]:
    """`user_affinity` (a Pod `affinity`, passed through) with the members' anti-affinity term added.

    The term is required, or with `required=False` a preference of the highest
    weight. The user's node and pod affinity and their own anti-affinity terms
    are kept as they are; malformed parts are left for the API server to reject,
    except that they can never displace the members' term.
    """
    affinity: dict[str, Any] = copy.deepcopy(dict(user_affinity or {}))
    anti_affinity = affinity.get("podAntiAffinity")
    anti_affinity = dict(anti_affinity) if isinstance(anti_affinity, Mapping) else {}
    term = member_anti_affinity_term(shard_name)
    key, entry = (_REQUIRED, term) if required else (_PREFERRED, {"weight": _HEAVIEST, "podAffinityTerm": term})
    entries = anti_affinity.get(key)
    entries = list(entries) if isinstance(entries, list) else []
    if entry not in entries:
        entries.append(entry)
    anti_affinity[key] = entries
    affinity["podAntiAffinity"] = anti_affinity
    return affinity
