"""Gives each shard of a cluster its own users: reads `spec.users`' Secrets, writes one `<shard>-users` each.

Runs in the cluster's reconcile, right after the routing table is published,
so a user whose route changed (an override, a newly assigned slot) moves to
the new shard's Secret at the same table version. The source Secrets are read
by name (the operator may not list Secrets), so a change to them is picked up
by the cluster's periodic resync. A Secret is written only when its users
differ, and only for shards that exist: a shard the table still names after
its deletion gets nothing.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass

from mailshard.api.constants import USERS_SECRET_KEY
from mailshard.api.routing import RoutingTable
from mailshard.api.v1alpha1 import MailCluster
from mailshard.builders import Problem
from mailshard.builders.names import users_secret_name
from mailshard.builders.users import build_users_secret, parse_users, split_users, users_text
from mailshard.services.kube import KubeApi, Manifest


@dataclass(frozen=True)
class UsersOutcome:
    users: int
    """Users read from the cluster's Secrets."""
    written: tuple[str, ...] = ()
    """Shards whose users Secret this run created or changed."""
    unrouted: int = 0
    problem: Problem | None = None
    """A source Secret that is missing or unreadable: a human must fix it; the shards keep their users."""
    warnings: tuple[str, ...] = ()
    """Lines skipped (malformed, duplicated): worth an Event, not a stall."""


class UsersDistributor:
    def __init__(self, api: KubeApi) -> None:
        self.api = api

    def distribute(self, cluster: MailCluster, table: RoutingTable, shards: Sequence[Manifest]) -> UsersOutcome | None:
        spec = cluster.spec.users
        if spec is None:
            return None
        namespace = cluster.metadata.namespace
        sources: list[tuple[str, str]] = []
        for name in spec.secret_names:
            secret = self.api.get("Secret", name, namespace)
            encoded = ((secret or {}).get("data") or {}).get(spec.key)
            if secret is None or encoded is None:
                what = "does not exist" if secret is None else f"has no key {spec.key!r}"
                message = f"the users Secret {name} {what}; every shard keeps the users it has"
                return UsersOutcome(users=0, problem=Problem("UsersSecretMissing", message))
            try:
                sources.append((name, base64.b64decode(encoded, validate=True).decode("utf-8")))
            except (binascii.Error, UnicodeDecodeError):
                message = f"the users Secret {name}: key {spec.key!r} is not UTF-8 text; every shard keeps its users"
                return UsersOutcome(users=0, problem=Problem("UsersSecretUnreadable", message))
        users = parse_users(sources)
        split = split_users(users, table)
        live_shards = {s["metadata"]["name"]: s for s in shards if not s["metadata"].get("deletionTimestamp")}
        written = []
        for shard_name, lines in sorted(split.by_shard.items()):
            shard = live_shards.get(shard_name)
            if shard is None:
                continue
            live = self.api.get("Secret", users_secret_name(shard_name), namespace)
            current = ((live or {}).get("data") or {}).get(USERS_SECRET_KEY)
            wanted = build_users_secret(shard, lines)
            if live is not None and current == wanted["data"][USERS_SECRET_KEY] and _owned(live, wanted):
                continue
            self.api.apply(wanted)
            written.append(shard_name)
        warnings = users.problems
        if split.elsewhere:
            lost = ", ".join(f"{count} on {name}" for name, count in sorted(split.elsewhere.items()))
            warnings += (f"users routed to shards that no longer exist get no passdb entry: {lost}",)
        return UsersOutcome(users=len(users.lines), written=tuple(written), unrouted=split.unrouted, warnings=warnings)


def _owned(live: Manifest, wanted: Manifest) -> bool:
    """The live Secret still carries our labels and owner (nobody stripped them)."""
    meta = live.get("metadata") or {}
    labels = meta.get("labels") or {}
    owners = [(o.get("kind"), o.get("uid")) for o in meta.get("ownerReferences") or []]
    want = wanted["metadata"]
    return all(labels.get(k) == v for k, v in want["labels"].items()) and all(
        (o["kind"], o["uid"]) in owners for o in want["ownerReferences"]
    )


__all__ = ["UsersDistributor", "UsersOutcome", "users_text"]
