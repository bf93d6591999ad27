"""The routing sidecar: follows the routing table through the API and hands it to the proxy beside it.

Why this exists: the proxy must take a new table within a second of the
operator publishing it. A ConfigMap mounted as a volume is refreshed by the
kubelet only after up to a minute, so the sidecar watches the `<cluster>-routing`
ConfigMap through the API instead, and for each new document:

1. validates it with `validate_table(text, previous=...)`: a malformed table,
   or one whose version goes backwards, is refused and the last good one kept
   (with a warning), so a bad edit can never take the proxies down;
2. writes the route file (`mailshard.proxy.render.render_routes`) atomically:
   a temporary file in the same directory, fsync, rename; the Lua passdb
   re-reads it at every lookup, so the next login follows the new table;
3. kicks the open sessions of users whose route changed (`doveadm proxy
   list`, each user's route recomputed with the old and the new table,
   `doveadm proxy kick` for those that differ), so a client still talking to a
   demoted master reconnects to the new one.

After the route file, the document itself is written beside it
(`applied_file`), and a sidecar that starts again (its container restarted,
the pod's emptyDir kept) takes that table as the one in force
(`last_applied`): a table older than it is refused across the restart as it
would have been before, the users whose route moved while the sidecar was
down are kicked, and the unchanged table is not rewritten. The route file is
written first, so the remembered document is never newer than the routes in
force. An older version is taken only when its `writtenAt` is later than that
of the table in force (see `mailshard.api.routing.succession_problems`): the
table was recreated and its versions started again, which a restored old
copy, carrying its old `writtenAt`, cannot pass for.

`apply_table` is everything but the API: the mail tier calls it directly (it
has no API server) and the unit tier tests it with a fake doveadm. `watch`
adds the Kubernetes watch, reconnecting on errors, and tells the sidecar's
metrics (`mailshard.proxy.metrics`) what each document did.
"""

from __future__ import annotations

import logging
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mailshard.api.routing import (
    TABLE_KEY,
    RoutingTable,
    RoutingTableError,
    parse_table,
    route_user,
    validate_table,
)
from mailshard.proxy.metrics import SidecarMetrics
from mailshard.proxy.render import Resolver, render_routes, standard_endpoint

log = logging.getLogger("mailshard.proxy")

Doveadm = Callable[[Sequence[str]], str]
"""Runs `doveadm <args>` against the proxy and returns its stdout."""


def doveadm_runner(config: Path | None = None) -> Doveadm:
    """The real doveadm, against the proxy's configuration when given."""

    def run(args: Sequence[str]) -> str:
        argv = ["doveadm", *(["-c", str(config)] if config is not None else []), *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True).stdout

    return run


@dataclass(frozen=True)
class Applied:
    """What one document did."""

    table: RoutingTable | None
    """The table in force afterwards (the previous one when the document was refused)."""
    accepted: bool
    problems: tuple[str, ...] = ()
    kicked: tuple[str, ...] = ()
    applied_at: float | None = None
    """When the route file of a new version was in place (Unix time); None when nothing new was applied."""

    def tell(self, metrics: SidecarMetrics, *, replaced: RoutingTable | None) -> None:
        """Record this outcome in the sidecar's metrics; `replaced` is the table in force before."""
        if not self.accepted:
            metrics.refused()
        elif self.table is not None and self.applied_at is not None:
            metrics.applied(self.table, replaced=replaced, at=self.applied_at)


def write_atomically(path: Path, text: str) -> None:
    """Replace `path` by `text` so that a reader sees either the old or the new file, whole."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def applied_file(routes_file: Path) -> Path:
    """Where the sidecar keeps the document it last applied, beside the route file, for its next start."""
    return routes_file.with_name("applied-routing.json")


def last_applied(routes_file: Path) -> RoutingTable | None:
    """The table applied before this start (None: there is none, or it cannot be read, which is logged)."""
    path = applied_file(routes_file)
    try:
        return parse_table(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, RoutingTableError) as error:
        log.warning("ignoring the last applied table %s, which cannot be read: %s", path, error)
        return None


def proxied_users(listing: str) -> list[str]:
    """The users of `doveadm -f tab proxy list`.

    Dovecot 2.3 prints one table per kind of session (login proxies, then LMTP/IPC ones), each with its own
    header row; the user name is the first column of every one.
    """
    users = set()
    for line in listing.splitlines():
        user = line.split("\t", 1)[0].strip()
        if user and user != "username":
            users.add(user)
    return sorted(users)


def moved_users(users: Iterable[str], old: RoutingTable, new: RoutingTable, resolve: Resolver) -> list[str]:
    """The users whose target (host and ports, or refusal) differs between two tables."""

    def target(table: RoutingTable, user: str) -> tuple[str, ...] | None:
        host = route_user(table, user).host
        if host is None:
            return None
        endpoint = resolve(host)
        return (endpoint.host, str(endpoint.imap), str(endpoint.pop3), str(endpoint.lmtp), str(endpoint.managesieve))

    return sorted({user for user in users if target(old, user) != target(new, user)})


def apply_table(
    text: str,
    *,
    previous: RoutingTable | None,
    routes_file: Path,
    doveadm: Doveadm | None = None,
    resolve: Resolver = standard_endpoint,
    clock: Callable[[], float] = time.time,
) -> Applied:
    """Validate a document, write the route file (and the document beside it), kick the sessions whose route moved.

    `previous` is the table in force: the one applied last, before a restart too (`last_applied`).
    """
    problems = validate_table(text, previous=previous)
    if problems:
        log.warning("routing table refused, keeping version %s: %s", getattr(previous, "version", None), problems)
        return Applied(table=previous, accepted=False, problems=tuple(problems))
    table = parse_table(text)
    if previous is not None and table.version == previous.version:
        return Applied(table=previous, accepted=True)
    if previous is not None and table.version < previous.version:
        log.warning(
            "routing table version %s follows version %s but was written later (%s after %s): "
            "the table was recreated, taking it",
            table.version,
            previous.version,
            table.written_at,
            previous.written_at,
        )
    write_atomically(routes_file, render_routes(table, resolve))
    applied_at = clock()  # the next login reads the new file; kicking the moved sessions comes after
    write_atomically(applied_file(routes_file), text)
    kicked: list[str] = []
    if previous is not None and doveadm is not None:
        try:
            users = proxied_users(doveadm(["-f", "tab", "proxy", "list"]))
            kicked = moved_users(users, previous, table, resolve)
            for user in kicked:
                doveadm(["proxy", "kick", user])
        except (OSError, subprocess.SubprocessError) as error:
            log.warning("could not kick the sessions of moved users: %s", error)
    log.info("routing table version %s in force; kicked %d session user(s)", table.version, len(kicked))
    return Applied(table=table, accepted=True, kicked=tuple(kicked), applied_at=applied_at)


def config_map_text(config_map: Any) -> str | None:
    """The routing document of a ConfigMap object (kubernetes client model or dict)."""
    data = config_map.get("data") if isinstance(config_map, dict) else getattr(config_map, "data", None)
    if not data:
        return None
    text = data.get(TABLE_KEY)
    return text if isinstance(text, str) else None


def watch(
    *,
    cluster: str,
    namespace: str,
    routes_file: Path,
    doveadm: Doveadm,
    kubeconfig: str | None = None,
    resolve: Resolver = standard_endpoint,
    metrics: SidecarMetrics | None = None,
    stop: Callable[[], bool] = lambda: False,
) -> None:  # pragma: no cover - needs an API server; exercised by the integration and e2e tiers
    """Follow `<cluster>-routing` for ever: list, then watch from that resourceVersion; reconnect on errors."""
    from kubernetes import client, config
    from kubernetes import watch as kube_watch

    if kubeconfig is not None:
        config.load_kube_config(config_file=kubeconfig)
    else:
        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
    api = client.CoreV1Api()
    name = f"{cluster}-routing"
    told = metrics or SidecarMetrics(namespace, cluster)
    table = last_applied(routes_file)
    if table is not None:
        told.restored(table, at=applied_file(routes_file).stat().st_mtime)
        log.info("routing table version %s in force from before this start", table.version)
    taken = False  # the first table after a start is no propagation (see mailshard.proxy.metrics)

    def take(config_map: Any) -> None:
        nonlocal table, taken
        text = config_map_text(config_map)
        if text is None:
            return
        applied = apply_table(text, previous=table, routes_file=routes_file, doveadm=doveadm, resolve=resolve)
        applied.tell(told, replaced=table if taken else None)
        table, taken = applied.table, True

    backoff = 0.5
    while not stop():
        try:
            listed = api.list_namespaced_config_map(namespace, field_selector=f"metadata.name={name}")
            for item in listed.items:
                take(item)
            stream = kube_watch.Watch().stream(
                api.list_namespaced_config_map,
                namespace,
                field_selector=f"metadata.name={name}",
                resource_version=listed.metadata.resource_version,
                timeout_seconds=300,
            )
            for event in stream:
                if event["type"] in ("ADDED", "MODIFIED"):
                    take(event["object"])
                elif event["type"] == "DELETED":
                    log.warning("%s/%s was deleted; keeping table version %s", namespace, name, table and table.version)
                if stop():
                    return
            backoff = 0.5
        except Exception as error:
            log.warning(
                "watching %s/%s failed (%s); keeping table version %s", namespace, name, error, table and table.version
            )
            time.sleep(backoff)
            backoff = min(backoff * 2, 10.0)
