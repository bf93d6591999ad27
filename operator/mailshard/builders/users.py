"""Which users each shard serves: the cluster's passwd-file lines, split by the routing table.

A MailCluster names Secrets of Dovecot passwd-file lines (`spec.users`). A
shard's members must know exactly the users routed to it: their passdb
answers the logins the proxies forward, and Dovecot's replicator iterates the
userdb to keep the pair in sync, so a shard listing every user of the cluster
would create and replicate an empty home for each of them. The operator
therefore routes each user with the same function the proxies use
(`api.routing.route_user`) and gives each shard its own Secret
`<shard>-users`, which its pods mount. A user whose slot has no shard yet is
left out until one is assigned, and a moved user (an override) moves to the
new shard's Secret at the same table version.

The lines are carried over byte for byte; only the user name is read, since
the rest is for Dovecot (or, for Cyrus, turned into its sasldb by the agent).
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from mailshard.api.constants import USERS_SECRET_KEY
from mailshard.api.routing import RoutingTable, canonical_user, route_user
from mailshard.builders.metadata import COMPONENT_CREDENTIALS, shard_object_metadata
from mailshard.builders.names import users_secret_name

MAX_PROBLEMS: Final = 5
"""Problems reported per source; a file with many bad lines names the first few and counts the rest."""


@dataclass(frozen=True)
class UserLines:
    """Each user's passwd-file line, keyed by canonical user name, first occurrence winning."""

    lines: Mapping[str, str]
    problems: tuple[str, ...] = ()


def parse_users(sources: Iterable[tuple[str, str]]) -> UserLines:
    """Merge (source name, passwd-file text) pairs; blank lines and `#` comments are skipped."""
    lines: dict[str, str] = {}
    problems: list[str] = []
    for source, text in sources:
        bad: list[str] = []
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            user, colon, _rest = line.partition(":")
            if not colon or not user or any(char.isspace() for char in user):
                bad.append(f"{source} line {number}")
                continue
            key = canonical_user(user)
            if key in lines:
                problems.append(f"{source} line {number}: {user} is listed again; its first line is kept")
                continue
            lines[key] = line
        if bad:
            shown = ", ".join(bad[:MAX_PROBLEMS]) + (
                f" and {len(bad) - MAX_PROBLEMS} more" if len(bad) > MAX_PROBLEMS else ""
            )
            problems.append(f"not passwd-file lines (user:password...), skipped: {shown}")
    return UserLines(lines=lines, problems=tuple(problems[: MAX_PROBLEMS * 2]))


@dataclass(frozen=True)
class UsersByShard:
    by_shard: Mapping[str, tuple[str, ...]]
    """Shard → its users' lines, sorted by user; every shard of the table, even with no users."""
    unrouted: int = 0
    """Users whose slot has no shard yet."""
    elsewhere: Mapping[str, int] = field(default_factory=dict)
    """Users routed to a shard without a row in the table (a deleted shard) → how many."""


def split_users(users: UserLines, table: RoutingTable) -> UsersByShard:
    by_shard: dict[str, list[str]] = {name: [] for name in table.shards}
    unrouted = 0
    elsewhere: dict[str, int] = {}
    for user in sorted(users.lines):
        shard = route_user(table, user).shard
        if shard is None:
            unrouted += 1
        elif shard in by_shard:
            by_shard[shard].append(users.lines[user])
        else:
            elsewhere[shard] = elsewhere.get(shard, 0) + 1
    return UsersByShard({name: tuple(lines) for name, lines in by_shard.items()}, unrouted, elsewhere)


def users_text(lines: Iterable[str]) -> str:
    return "".join(f"{line}\n" for line in lines)


def build_users_secret(shard: Mapping[str, Any], lines: Iterable[str]) -> dict[str, Any]:
    """The Secret `<shard>-users`, owned by the MailShard (a live object, as the cluster reconciler lists it)."""
    meta = shard["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": shard_object_metadata(
            name=users_secret_name(meta["name"]),
            namespace=meta["namespace"],
            shard_name=meta["name"],
            shard_uid=meta["uid"],
            part_of=((shard.get("spec") or {}).get("clusterRef") or {}).get("name") or meta["name"],
            component=COMPONENT_CREDENTIALS,
        ),
        "type": "Opaque",
        "data": {USERS_SECRET_KEY: base64.b64encode(users_text(lines).encode()).decode()},
    }


__all__ = ["UserLines", "UsersByShard", "build_users_secret", "parse_users", "split_users", "users_text"]
