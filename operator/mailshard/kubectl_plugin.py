"""`kubectl mailshard`: the operator's view of a shard, a user's route, and fencing, from a terminal.

Installed as the `kubectl-mailshard` executable, which kubectl finds on PATH
and runs for `kubectl mailshard …`. Every command reads what the operator
wrote (status, the routing table) rather than recomputing it, so what it shows
is what the proxies and the operator act on. Mistakes (an unknown shard, a
cluster without a routing table) end with one line saying what is wrong and
exit status 1.

    kubectl mailshard status <shard> [-n NS]
    kubectl mailshard route <user> [-n NS] [--cluster NAME]
    kubectl mailshard fence <shard> [-n NS]      # users get temporary errors
    kubectl mailshard unfence <shard> [-n NS]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from kubernetes import client, config

from mailshard.api.constants import ANNOTATION_FENCED
from mailshard.api.routing import TABLE_KEY, RoutingTable, RoutingTableError, parse_table, route_user
from mailshard.builders.names import routing_config_map_name
from mailshard.services.kube import KubeApi, Manifest


class PluginError(Exception):
    """A mistake the user can fix; printed as one line."""


def _namespace(explicit: str | None) -> str:
    if explicit:
        return explicit
    try:
        _, context = config.list_kube_config_contexts()
    except (config.ConfigException, FileNotFoundError):
        return "default"
    return str((context or {}).get("context", {}).get("namespace") or "default")


def _shard(api: KubeApi, namespace: str, name: str) -> Manifest:
    body = api.get("MailShard", name, namespace)
    if body is None:
        known = sorted(s["metadata"]["name"] for s in api.list("MailShard", namespace))
        raise PluginError(
            f"no MailShard {name!r} in namespace {namespace}"
            + (f" (shards there: {', '.join(known)})" if known else "")
        )
    return body


def _table(api: KubeApi, namespace: str, cluster: str) -> RoutingTable | None:
    config_map = api.get("ConfigMap", routing_config_map_name(cluster), namespace)
    text = ((config_map or {}).get("data") or {}).get(TABLE_KEY)
    if text is None:
        return None
    try:
        return parse_table(text)
    except RoutingTableError as error:
        raise PluginError(f"the routing table of {cluster} cannot be read: {'; '.join(error.problems)}") from error


def _rows(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells)


def status(api: KubeApi, namespace: str, name: str) -> str:
    body = _shard(api, namespace, name)
    status = body.get("status") or {}
    spec = body.get("spec") or {}
    lines = [
        f"MailShard {namespace}/{name}  backend={spec.get('backend')}  phase={status.get('phase', '-')}",
        f"master: {status.get('master', '-')}   replica: {status.get('replica', '-')}   "
        f"lag: {status.get('lagSeconds', 'unknown')}   mailboxes: {status.get('mailboxes', 'unknown')}",
        "",
        _rows(
            ["MEMBER", "ROLE", "NODE", "READY", "LAG", "LAST SYNC"],
            [
                [
                    m.get("name"),
                    m.get("role"),
                    m.get("node"),
                    m.get("ready"),
                    m.get("lagSeconds"),
                    m.get("lastSyncTime"),
                ]
                for m in status.get("members", [])
            ],
        ),
        "",
        _rows(
            ["CONDITION", "STATUS", "REASON", "MESSAGE"],
            [[c.get("type"), c.get("status"), c.get("reason"), c.get("message")] for c in status.get("conditions", [])],
        ),
    ]
    last = status.get("lastFailover")
    lines.append("")
    if last:
        lines.append(
            f"last failover: {last.get('from')} -> {last.get('to')} at {last.get('started')} "
            f"({last.get('reason')}, {last.get('durationSeconds', '?')} s, "
            f"{last.get('messagesAtRisk', 'unknown')} messages at risk)"
        )
    else:
        lines.append("last failover: never")
    cluster = (spec.get("clusterRef") or {}).get("name")
    table = _table(api, namespace, cluster) if cluster else None
    if table is None:
        lines.append("routing: no routing table" + (f" for cluster {cluster}" if cluster else " (no clusterRef)"))
    else:
        row = table.shards.get(name)
        slots = len(table.slots_of(name))
        if row is None:
            lines.append(f"routing (version {table.version}): no row for {name}; {slots} slots")
        else:
            lines.append(
                f"routing (version {table.version}): state={row.state.value} master={row.master} "
                f"host={row.master_host} slots={slots}"
            )
    return "\n".join(lines)


def route(api: KubeApi, namespace: str, user: str, cluster: str | None) -> str:
    if cluster is None:
        clusters = sorted(c["metadata"]["name"] for c in api.list("MailCluster", namespace))
        if len(clusters) != 1:
            found = ", ".join(clusters) if clusters else "none"
            raise PluginError(f"name the cluster with --cluster: MailClusters in namespace {namespace}: {found}")
        cluster = clusters[0]
    table = _table(api, namespace, cluster)
    if table is None:
        raise PluginError(f"MailCluster {cluster} in namespace {namespace} has no routing table yet")
    decision = route_user(table, user)
    lines = [
        f"user: {decision.user}",
        f"slot: {decision.slot} of {table.slot_count}" + ("  (overridden)" if decision.overridden else ""),
        f"shard: {decision.shard or '-'}",
    ]
    if decision.route is not None:
        lines.append(f"master: {decision.route.master or '-'}  state: {decision.route.state.value}")
    lines.append(f"connect to: {decision.host}" if decision.host else f"refused: {decision.refusal}")
    lines.append(f"routing table version: {table.version}")
    return "\n".join(lines)


def set_fence(api: KubeApi, namespace: str, name: str, *, fenced: bool) -> str:
    body = _shard(api, namespace, name)
    current = (body["metadata"].get("annotations") or {}).get(ANNOTATION_FENCED) == "true"
    if current == fenced:
        return f"{name} is already {'fenced' if fenced else 'unfenced'}"
    api.merge_patch(
        "MailShard", name, namespace, {"metadata": {"annotations": {ANNOTATION_FENCED: "true" if fenced else None}}}
    )
    if fenced:
        return f"fenced {name}: its users get temporary errors until `kubectl mailshard unfence {name}`"
    return f"unfenced {name}: it serves again once the routing table says so (kubectl mailshard status {name})"


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-n", "--namespace", help="namespace (default: the context's)")
    common.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config)")
    parser = argparse.ArgumentParser(prog="kubectl mailshard", description="Inspect and steer Mailshard shards.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    status_cmd = commands.add_parser("status", parents=[common], help="members, roles, nodes, lag, routing row")
    status_cmd.add_argument("shard")
    route_cmd = commands.add_parser("route", parents=[common], help="which slot, shard and master serve a user")
    route_cmd.add_argument("user")
    route_cmd.add_argument("--cluster", help="the MailCluster (needed when the namespace has several)")
    fence_cmd = commands.add_parser("fence", parents=[common], help="refuse the shard's users with temporary errors")
    fence_cmd.add_argument("shard")
    unfence_cmd = commands.add_parser("unfence", parents=[common], help="let the shard serve again")
    unfence_cmd.add_argument("shard")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.kubeconfig:
            config.load_kube_config(config_file=args.kubeconfig)
            api = KubeApi(client.ApiClient())
        else:
            api = KubeApi.from_environment()
        namespace = _namespace(args.namespace)
        if args.command == "status":
            print(status(api, namespace, args.shard))
        elif args.command == "route":
            print(route(api, namespace, args.user, args.cluster))
        else:
            print(set_fence(api, namespace, args.shard, fenced=args.command == "fence"))
    except PluginError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except config.ConfigException as error:
        print(f"error: no usable kubeconfig: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
