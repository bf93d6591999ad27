"""Keeps the objects a custom resource owns as the builders want them: create what is missing, revert drift.

Shared by the shard and cluster reconcilers. A live object that already
contains everything the builder wants (`builders.drift.contains`; defaults the
API server added are fine) is left alone, so a steady state makes no writes at
all. Anything else is server-side applied, which both creates and reverts, and
reported so the caller can raise the `Created` and `DriftReverted` Events.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from mailshard.builders.drift import contains, differences
from mailshard.services.kube import KubeApi, Manifest


@dataclass
class ChildChanges:
    created: list[str] = field(default_factory=list)
    reverted: list[str] = field(default_factory=list)


def ensure_children(
    api: KubeApi,
    namespace: str,
    manifests: Iterable[Manifest],
    *,
    keep_live: Callable[[Manifest, Manifest], Manifest] | None = None,
) -> ChildChanges:
    """Apply each manifest that is missing or differs from the live object; `keep_live(wanted, live)` may
    carry over live fields the API forbids changing (a StatefulSet's immutable ones)."""
    changes = ChildChanges()
    for manifest in manifests:
        kind, child = manifest["kind"], manifest["metadata"]["name"]
        live = api.get(kind, child, namespace)
        wanted = manifest if live is None or keep_live is None else keep_live(manifest, live)
        if live is not None and contains(live, wanted):
            continue
        if live is None:
            changes.created.append(f"{kind}/{child}")
        else:
            changes.reverted.append(f"{kind}/{child} ({', '.join(differences(live, wanted)[:3])})")
        api.apply(wanted)
    return changes
