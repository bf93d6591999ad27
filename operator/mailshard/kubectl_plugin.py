"""`kubectl mailshard`: the operator's view of a shard, a user's route, fencing and switchover, from a terminal.

Installed as the `kubectl-mailshard` executable, which kubectl finds on PATH
and runs for `kubectl mailshard …`. Every command reads what the operator
wrote (status, the routing table) rather than recomputing it, so what it shows
is what the proxies and the operator act on. Mistakes (an unknown shard, a
cluster without a routing table, a switchover the operator would refuse) end
with one line saying what is wrong and exit status 1.

    kubectl mailshard status <shard> [-n NS]
    kubectl mailshard route <user> [-n NS] [--cluster NAME]
    kubectl mailshard fence <shard> [-n NS]      # users get temporary errors
    kubectl mailshard unfence <shard> [-n NS]
    kubectl mailshard switchover <shard> [--to MEMBER] [--wait [--timeout S]] [-n NS]

A switchover is the operator's to carry out (it drains the master first, so
nothing is lost): the command checks from the shard's status what the
operator's own rules would refuse, so a mistake is told at once rather than
as a Warning Event later, and then sets the `mailshard.io/switchover-to`
annotation the operator acts on.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pydantic
from kubernetes import client, config

from mailshard.api.constants import ANNOTATION_FENCED
from mailshard.api.routing import TABLE_KEY, RoutingTable, RoutingTableError, parse_table, route_user
from mailshard.api.v1alpha1 import MailCluster, MailShard, ShardPhase, member_names
from mailshard.builders.names import routing_config_map_name
from mailshard.failover import SWITCHOVER_ANNOTATION
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


@dataclass(frozen=True)
class Switchover:
    """A switchover the operator would accept now: `source`, the master, hands over to `target`."""

    shard: str
    source: str
    target: str
    already_requested: bool


def check_switchover(
    shard: MailShard, *, max_lag_seconds: float, wanted: str | None, pending: str | None
) -> Switchover:
    """The switchover to `wanted` (default: the other member), or a PluginError saying why it would be refused.

    The same refusals as the operator's decision (`failover.decide`), read from
    the status the operator wrote: a member of the shard, not the master, a
    Healthy shard whose target is ready and within `replication.maxLagSeconds`.
    `pending` is the target of a request already made (the annotation), if any.
    """
    name, status = shard.metadata.name, shard.status
    members = member_names(name)
    if wanted is not None and wanted not in members:
        raise PluginError(f"{wanted!r} is not a member of {name} (its members are {' and '.join(members)})")
    master = status.master
    if master is None:
        raise PluginError(f"{name} has no master yet")
    target = wanted if wanted is not None else next(m for m in members if m != master)
    if target == master:
        raise PluginError(f"{target} is already the master of {name}")
    if status.failover is not None:
        kind = "switchover" if status.failover.planned else "failover"
        raise PluginError(
            f"a {kind} of {name} from {status.failover.from_member} to {status.failover.to_member} is under way"
        )
    if pending is not None and pending != target:
        raise PluginError(f"a switchover of {name} to {pending} is already requested")
    if status.phase is not ShardPhase.HEALTHY:
        ready = status.condition("Ready")
        why = f": {ready.message}" if ready is not None and ready.message else ""
        phase = status.phase.value if status.phase is not None else "unset"
        raise PluginError(f"{name} is not Healthy (phase {phase}){why}")
    member = next((m for m in status.members if m.name == target), None)
    if member is None or not member.ready:
        raise PluginError(f"{target} is not ready")
    lag = member.lag_seconds if member.lag_seconds is not None else status.lag_seconds
    if lag is None:
        raise PluginError(
            f"the replication lag of {target} is unknown (its agent has not reported it), "
            "so the mail it lacks cannot be bounded"
        )
    if lag > max_lag_seconds:
        raise PluginError(
            f"{target} is {lag:g} s behind its master, more than the {max_lag_seconds:g} s allowed "
            "(spec.replication.maxLagSeconds)"
        )
    return Switchover(shard=name, source=master, target=target, already_requested=pending == target)


def _requested(body: Manifest) -> str | None:
    """The target of the switchover the shard's annotation asks for, if any."""
    value = (body["metadata"].get("annotations") or {}).get(SWITCHOVER_ANNOTATION)
    return None if value is None else str(value)


def _parsed(body: Manifest, api: KubeApi) -> tuple[MailShard, float]:
    """The shard as the operator reads it, and the lag bound of its resolved settings."""
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    try:
        shard = MailShard.from_resource(body)
        ref = shard.spec.cluster_ref
        cluster_body = api.get("MailCluster", ref.name, namespace) if ref is not None else None
        defaults = MailCluster.from_resource(cluster_body).spec.shard_defaults if cluster_body else None
    except pydantic.ValidationError as error:
        raise PluginError(f"{name} or its MailCluster cannot be read: {error.errors()[0]['msg']}") from error
    return shard, shard.resolve(defaults).spec.replication.max_lag_seconds


def switchover(
    api: KubeApi,
    namespace: str,
    name: str,
    wanted: str | None,
    *,
    wait_seconds: float | None = None,
    report: Callable[[str], None] = print,
) -> str:
    """Ask the operator to hand the master role to `wanted`; with `wait_seconds`, until it has or refused."""
    body = _shard(api, namespace, name)
    shard, max_lag = _parsed(body, api)
    request = check_switchover(shard, max_lag_seconds=max_lag, wanted=wanted, pending=_requested(body))
    asked_at = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    if not request.already_requested:
        annotations = {SWITCHOVER_ANNOTATION: request.target}
        api.merge_patch("MailShard", name, namespace, {"metadata": {"annotations": annotations}})
    message = (
        f"switchover of {name} from {request.source} to {request.target} "
        f"{'was already requested' if request.already_requested else 'requested'}; "
        f"the operator drains {request.source} first"
    )
    if wait_seconds is None:
        return f"{message} (follow it with `kubectl mailshard status {name}`)"
    report(f"{message}; waiting up to {wait_seconds:g} s")
    return _wait_for_switchover(api, namespace, request, asked_at, wait_seconds)


def _wait_for_switchover(
    api: KubeApi, namespace: str, request: Switchover, asked_at: datetime.datetime, wait_seconds: float
) -> str:
    """Until status.master is the target, or the operator took the request away without acting on it."""
    deadline = time.monotonic() + wait_seconds
    while True:
        body = _shard(api, namespace, request.shard)
        status = MailShard.from_resource(body).status
        if status.failover is None and status.master == request.target:
            last = status.last_failover
            took = f" in {last.duration_seconds:g} s" if last is not None and last.duration_seconds is not None else ""
            return f"switched over: {request.target} is the master of {request.shard}{took}"
        if status.failover is None and _requested(body) is None:
            why = _refusal_since(api, namespace, request.shard, asked_at)
            raise PluginError(f"the operator did not switch over {request.shard}: {why}")
        if time.monotonic() >= deadline:
            raise PluginError(
                f"{request.shard} still has {status.master} as master after {wait_seconds:g} s; the request stands "
                f"(`kubectl mailshard status {request.shard}`)"
            )
        time.sleep(0.5)


def _refusal_since(api: KubeApi, namespace: str, name: str, since: datetime.datetime) -> str:
    """The message of the operator's latest RejectSwitchover Event for the shard since `since`."""
    refusals = [
        event
        for event in api.list("Event", namespace)
        if event.get("reason") == "RejectSwitchover"
        and (event.get("involvedObject") or {}).get("name") == name
        and (event.get("involvedObject") or {}).get("kind") == "MailShard"
        and _event_time(event) >= since
    ]
    if not refusals:
        return f"the request was withdrawn (`kubectl describe mailshard {name}` shows the Events)"
    return str(max(refusals, key=_event_time).get("message"))


def _event_time(event: Manifest) -> datetime.datetime:
    stamp = event.get("lastTimestamp") or event.get("eventTime") or event["metadata"].get("creationTimestamp")
    if not stamp:
        return datetime.datetime.min.replace(tzinfo=datetime.UTC)
    return datetime.datetime.fromisoformat(str(stamp))


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
    switchover_cmd = commands.add_parser(
        "switchover", parents=[common], help="hand the master role to the replica (drained first: nothing is lost)"
    )
    switchover_cmd.add_argument("shard")
    switchover_cmd.add_argument("--to", metavar="MEMBER", help="the member to promote (default: the replica)")
    switchover_cmd.add_argument("--wait", action="store_true", help="wait until the master has changed")
    switchover_cmd.add_argument(
        "--timeout", type=float, default=120.0, metavar="SECONDS", help="how long --wait waits (default 120)"
    )
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
        elif args.command == "switchover":
            wait = args.timeout if args.wait else None
            print(switchover(api, namespace, args.shard, args.to, wait_seconds=wait), flush=True)
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
