"""The whole product on a real cluster, as a user installs it: the Helm chart, then a MailCluster with its shards.

Why this module exists: every e2e feature test (mail through the proxy,
failover, switchover, re-seeding) needs the same platform underneath, built the
way the README tells a platform engineer to build it, and the same in-cluster
mail client to drive it. Building it once per test module keeps the tier's wall
time within its budget on a 2-core machine.

The members of a pair may share a node here (`podAntiAffinityType:
preferred`): the machine's real node is a single node, and on kind's three
nodes the scheduler still spreads them.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client

from e2e_support import IMAGE, eventually
from mailshard import __version__
from mailshard.api.routing import TABLE_KEY, parse_table, route_user
from mailshard_harness.client_pod import ClientPod
from mailshard_harness.helm import helm, install_chart

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "charts" / "mailshard-operator"
E2E_VALUES = Path(__file__).resolve().parent / "operator-values.yaml"
RELEASE = "mailshard"
OPERATOR_NAMESPACE = "mailshard-system"
GROUP, VERSION = "mailshard.io", "v1alpha1"
CLUSTER = "mail"
SHARDS = {"dovecot-1": "dovecot", "cyrus-1": "cyrus"}
USERS = tuple(f"user{n}@example.org" for n in range(16))
READY_TIMEOUT = 300.0
"""A cold node pulls nothing (images are imported), but two pairs, a proxy and the operator share 2 cores."""


def password_of(user: str) -> str:
    return f"pw-{user.split('@', maxsplit=1)[0]}"


def credential(user: str) -> str:
    return f"{user}:{password_of(user)}"


def install_operator(kubeconfig: Path) -> None:
    """The chart as a user installs it, with the e2e values, waited until the operator runs."""
    install_chart(
        kubeconfig,
        CHART,
        release=RELEASE,
        namespace=OPERATOR_NAMESPACE,
        values=(E2E_VALUES,),
        settings={"image.tag": __version__},
    )


def uninstall_operator(kubeconfig: Path) -> None:
    helm(kubeconfig, "uninstall", RELEASE, "--namespace", OPERATOR_NAMESPACE, "--ignore-not-found", "--wait")


def users_secret(users: tuple[str, ...]) -> dict[str, Any]:
    text = "".join(f"{user}:{{PLAIN}}{password_of(user)}::::::\n" for user in users)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": f"{CLUSTER}-users"},
        "data": {"passwd": base64.b64encode(text.encode()).decode()},
    }


def mail_cluster() -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "MailCluster",
        "metadata": {"name": CLUSTER},
        "spec": {
            "proxy": {"replicas": 1, "protocols": ["imap", "pop3", "lmtp", "managesieve"]},
            "users": {"secretNames": [f"{CLUSTER}-users"]},
            "routing": {"slots": 64},
            "shardDefaults": {
                "storage": {"size": "256Mi", "reclaimPolicy": "Delete"},
                "failover": {"delaySeconds": 1},
                "podAntiAffinityType": "preferred",
            },
        },
    }


def mail_shard(name: str, backend: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "MailShard",
        "metadata": {"name": name},
        "spec": {"backend": backend, "clusterRef": {"name": CLUSTER}, "capacity": {"mailboxes": 100}},
    }


def condition(body: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for item in (body.get("status") or {}).get("conditions") or []:
        if item["type"] == kind:
            found: dict[str, Any] = item
            return found
    return None


def is_true(body: dict[str, Any], kind: str) -> bool:
    found = condition(body, kind)
    return found is not None and found["status"] == "True"


@dataclass
class Platform:
    """A namespace holding the MailCluster, its shards, its users and the in-cluster mail client."""

    api: client.ApiClient
    namespace: str
    client_pod: ClientPod
    proxy_host: str

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    # --- reading state ---------------------------------------------------------------------------

    def shard(self, name: str) -> dict[str, Any]:
        body: dict[str, Any] = self.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, "mailshards", name
        )
        return body

    def cluster(self) -> dict[str, Any]:
        body: dict[str, Any] = self.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, "mailclusters", CLUSTER
        )
        return body

    def master_of(self, shard: str) -> str | None:
        master: str | None = (self.shard(shard).get("status") or {}).get("master")
        return master

    def users_by_shard(self) -> dict[str, list[str]]:
        """Each shard's users, as the published routing table routes them."""
        table = parse_table(self.core.read_namespaced_config_map(f"{CLUSTER}-routing", self.namespace).data[TABLE_KEY])
        found: dict[str, list[str]] = {name: [] for name in SHARDS}
        for user in USERS:
            decision = route_user(table, user)
            if decision.shard is not None:
                found.setdefault(decision.shard, []).append(user)
        return found

    def events(self, name: str) -> list[client.CoreV1Event]:
        items: list[client.CoreV1Event] = self.core.list_namespaced_event(
            self.namespace, field_selector=f"involvedObject.name={name}"
        ).items
        return items

    def explain(self, shard: str) -> str:
        """The shard's status and its latest Events, the operator's story, for a failure message."""
        status = self.shard(shard).get("status") or {}
        conditions = {
            c["type"]: f"{c['status']}/{c.get('reason')}: {c.get('message')}" for c in status.get("conditions") or []
        }
        brief = {k: v for k, v in status.items() if k not in ("conditions", "kopf")}
        events = sorted(
            self.events(shard), key=lambda e: e.last_timestamp or e.event_time or e.metadata.creation_timestamp
        )
        lines = [f"{shard} status: {brief}", *(f"  {k}: {v}" for k, v in conditions.items())]
        lines += [f"  event {e.type}/{e.reason} x{e.count or 1}: {e.message}" for e in events[-12:]]
        return "\n".join(lines)

    def until(self, shard: str, check: Callable[[], Any], *, timeout: float, what: str) -> Any:
        """`eventually(check)`, failing with the shard's status and Events: what a human would look at."""
        try:
            return eventually(check, timeout=timeout, what=what)
        except AssertionError as error:
            raise AssertionError(f"{error}\n{self.explain(shard)}\n{describe(self)}\n{self.log_tails(shard)}") from None

    def log_tails(self, shard: str, lines: int = 30) -> str:
        """What the shard's members logged as problems, and what the operator's own code logged: the story of a
        failure that the status and Events do not tell (a call that failed, a step retried)."""
        problem = ("WARNING", "ERROR", "Error", "Fatal", "panic", "refused", "failed")
        operator = self.core.list_namespaced_pod(OPERATOR_NAMESPACE).items
        pods = [(self.namespace, f"{shard}-{member}-0", "mail") for member in ("a", "b")]
        pods += [(OPERATOR_NAMESPACE, pod.metadata.name, None) for pod in operator]
        found = []
        for namespace, pod, container in pods:
            try:
                text = self.core.read_namespaced_pod_log(pod, namespace, container=container, tail_lines=3000)
            except client.ApiException as exc:
                found.append(f"log of {pod}: {exc.reason}")
                continue
            if namespace == OPERATOR_NAMESPACE:  # our loggers, about this shard
                kept = [line for line in text.splitlines() if "] mailshard." in line and f"/{shard}" in line]
            else:
                kept = [line for line in text.splitlines() if any(word in line for word in problem)]
            found.append(f"log of {pod} (last {min(len(kept), lines)} of {len(kept)} lines kept):")
            found += [f"  {line[:300]}" for line in kept[-lines:]]
        return "\n".join(found)

    def inventory(self, host: str, users: list[str]) -> dict[str, Any]:
        """Per user: UIDVALIDITY and UID → Message-ID of INBOX, read over IMAP at `host`."""
        found: dict[str, Any] = self.client_pod.run_json("inventory", "--host", host, *(credential(u) for u in users))
        return found


def create_platform(api: client.ApiClient) -> Platform:
    """A fresh namespace with users, cluster, shards and client, waited until all are Ready."""
    namespace = f"mail-e2e-{uuid.uuid4().hex[:6]}"
    core = client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": namespace, "labels": {"mailshard.io/test": "true"}}})
    platform = Platform(
        api=api,
        namespace=namespace,
        client_pod=ClientPod(api, namespace, IMAGE),
        proxy_host=f"{CLUSTER}-proxy.{namespace}.svc.cluster.local",
    )
    core.create_namespaced_secret(namespace, users_secret(USERS))
    platform.client_pod.create()
    custom = client.CustomObjectsApi(api)
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "mailclusters", mail_cluster())
    for name, backend in SHARDS.items():
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "mailshards", mail_shard(name, backend))
    return platform


def wait_ready(platform: Platform, *, timeout: float = READY_TIMEOUT) -> None:
    def pending() -> list[str]:
        waiting = [name for name in SHARDS if not is_true(platform.shard(name), "Ready")]
        if not is_true(platform.cluster(), "Ready"):
            waiting.append(f"MailCluster {CLUSTER}")
        if not platform.client_pod.is_ready():
            waiting.append(platform.client_pod.name)
        return waiting

    def ready() -> bool:
        return not pending()

    try:
        eventually(ready, timeout=timeout, what="the MailCluster, its shards and the client pod Ready")
    except AssertionError as error:
        raise AssertionError(f"{error}; still waiting for {pending()}:\n{describe(platform)}") from None


def wait_users_deliverable(platform: Platform, *, timeout: float = 180) -> float:
    """Until one LMTP delivery to every user through the proxy is accepted; returns how long that took.

    Ready does not mean this yet: a member mounts its `<shard>-users` Secret as a volume, and the kubelet
    brings a Secret written after the pod started into the pod only at its next sync (up to about a minute).
    """
    started = time.monotonic()

    def accepted() -> bool:
        tag = f"ready-probe-{int(time.time() * 1000)}"
        found = platform.client_pod.run_json(
            "deliver", "--host", platform.proxy_host, "--count", str(len(USERS)), "--tag", tag, *USERS
        )
        return not found["refused"]

    eventually(accepted, timeout=timeout, what="a delivery to every user accepted through the proxy")
    return time.monotonic() - started


def describe(platform: Platform) -> str:
    """What a human would look at first when the platform does not come up: statuses and pods."""
    lines = []
    for name in SHARDS:
        try:
            status = platform.shard(name).get("status") or {}
        except client.ApiException as exc:
            lines.append(f"{name}: {exc.reason}")
            continue
        conditions = {c["type"]: f"{c['status']}/{c.get('reason')}" for c in status.get("conditions") or []}
        lines.append(f"{name}: phase={status.get('phase')} master={status.get('master')} {conditions}")
    for pod in platform.core.list_namespaced_pod(platform.namespace).items:
        states = [
            f"{s.name}:{'ready' if s.ready else 'not-ready'}:restarts={s.restart_count}"
            for s in pod.status.container_statuses or []
        ]
        lines.append(f"pod {pod.metadata.name} {pod.status.phase} on {pod.spec.node_name}: {states}")
    return "\n".join(lines)


def delete_platform(platform: Platform) -> None:
    platform.core.delete_namespace(platform.namespace, propagation_policy="Foreground")


def platform_lifecycle(api: client.ApiClient) -> Iterator[Platform]:
    platform = create_platform(api)
    try:
        wait_ready(platform)
        wait_users_deliverable(platform)
        yield platform
    finally:
        delete_platform(platform)
