"""Keeps the objects a custom resource owns as the builders want them: create what is missing, revert drift.

Shared by the shard and cluster reconcilers. A live object that already
contains everything the builder wants (`builders.drift.contains`; defaults the
API server added are fine) is left alone, so a steady state makes no writes at
all. Anything else is server-side applied, which both creates and reverts, and
reported so the caller can raise the `Created`, `Updated` (a change we want:
the spec changed, a failover moved the master) and `DriftReverted` (someone
else changed the object: its stamp is that of the manifest we want now, see
`builders.drift.stamped`) Events.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from mailshard.builders.drift import APPLIED_ANNOTATION, applied_stamp, contains, differences, manifest_digest, stamped
from mailshard.services.events import EventRecorder
from mailshard.services.kube import KubeApi, Manifest


@dataclass
class ChildChanges:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    """Objects changed because what we want changed."""
    reverted: list[str] = field(default_factory=list)
    """Objects someone else changed, put back."""


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
        digest = manifest_digest(manifest)
        wanted = stamped(manifest if live is None or keep_live is None else keep_live(manifest, live), digest)
        if live is not None and contains(live, wanted):
            continue
        if live is None:
            changes.created.append(f"{kind}/{child}")
        else:
            paths = differences(live, wanted)
            shown = [path for path in paths if not path.endswith(APPLIED_ANNOTATION)] or paths  # the stamp is noise
            found = f"{kind}/{child} ({', '.join(shown[:3])})"
            drifted = applied_stamp(live) == digest
            (changes.reverted if drifted else changes.updated).append(found)
        api.apply(wanted)
    return changes


def report_changes(events: EventRecorder, body: Manifest, changes: ChildChanges) -> None:
    """One Event per kind of change in a reconcile: `Created`, `Updated`, `DriftReverted`."""
    if changes.created:
        events.record(body, "Normal", "Created", f"created {', '.join(changes.created)}")
    if changes.updated:
        events.record(body, "Normal", "Updated", f"updated {'; '.join(changes.updated)}")
    if changes.reverted:
        events.record(body, "Normal", "DriftReverted", f"reverted manual changes to {'; '.join(changes.reverted)}")
