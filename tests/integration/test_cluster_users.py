"""The operator, running for real, gives each shard the users the routing table sends to it.

The cluster's users live in Secrets it names (`spec.users`); the operator,
under its least-privilege identity (Secrets by name only), splits them with the
live routing table into `<shard>-users`, which the members mount as their
passdb. Checked against the table itself with the proxies' lookup function.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from operator_support import REPO, eventually, kubectl

from mailshard.api.routing import TABLE_KEY, parse_table, route_user

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("operator")]

GROUP, VERSION = "mailshard.io", "v1alpha1"
SHARDS = ("cyrus-1", "dovecot-1")
SOURCE = "test-users"
"""Not the examples' own `demo-users`, which `kubectl apply -f examples/` would overwrite."""


def users_secret(users: list[str]) -> dict[str, Any]:
    text = "".join(f"{user}:{{PLAIN}}pw-{n}::::::\n" for n, user in enumerate(users))
    return {"metadata": {"name": SOURCE}, "data": {"passwd": base64.b64encode(text.encode()).decode()}}


def shard_users(core: client.CoreV1Api, namespace: str, shard: str) -> list[str] | None:
    try:
        secret = core.read_namespaced_secret(f"{shard}-users", namespace)
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise
    text = base64.b64decode(secret.data["passwd"]).decode()
    return [line.split(":")[0] for line in text.splitlines()]


def cluster(api_client: client.ApiClient, namespace: str) -> dict[str, Any]:
    body: dict[str, Any] = client.CustomObjectsApi(api_client).get_namespaced_custom_object(
        GROUP, VERSION, namespace, "mailclusters", "demo"
    )
    return body


def split_as_routed(
    api_client: client.ApiClient, namespace: str, users: list[str]
) -> dict[str, list[str] | None] | None:
    """Each shard's users Secret, once the whole table is assigned and every user sits where it routes."""
    core = client.CoreV1Api(api_client)
    table = parse_table(core.read_namespaced_config_map("demo-routing", namespace).data[TABLE_KEY])
    if None in table.slots:
        return None
    found = {shard: shard_users(core, namespace, shard) for shard in SHARDS}
    expected: dict[str, list[str] | None] = {
        shard: sorted(u for u in users if route_user(table, u).shard == shard) for shard in SHARDS
    }
    return found if found == expected else None


def test_each_shard_gets_the_users_routed_to_it_and_follows_changes(
    api_client: client.ApiClient, kubeconfig: Path, namespace: str
) -> None:
    core = client.CoreV1Api(api_client)
    users = sorted(f"user{n:03d}@example.test" for n in range(40))
    core.create_namespaced_secret(namespace, users_secret(users))
    kubectl(kubeconfig, "apply", "-n", namespace, "-f", str(REPO / "examples"))
    client.CustomObjectsApi(api_client).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, "mailclusters", "demo", {"spec": {"users": {"secretNames": [SOURCE]}}}
    )
    split = eventually(
        lambda: split_as_routed(api_client, namespace, users), timeout=90, what="each shard's users as routed"
    )
    assert all(split.values()), f"40 users should land on both shards: {split}"
    assert eventually(lambda: cluster(api_client, namespace).get("status", {}).get("users") == 40 or None)
    secret = core.read_namespaced_secret("dovecot-1-users", namespace)
    assert [(o.kind, o.name) for o in secret.metadata.owner_references] == [("MailShard", "dovecot-1")]
    # The members were created only once their users Secret existed, so their pods mounted it with every user
    # from the first second (one written later would reach them only at the kubelet's next sync).
    apps = client.AppsV1Api(api_client)
    for shard in SHARDS:
        users_at = core.read_namespaced_secret(f"{shard}-users", namespace).metadata.creation_timestamp
        for member in (f"{shard}-a", f"{shard}-b"):
            assert apps.read_namespaced_stateful_set(member, namespace).metadata.creation_timestamp >= users_at
    events = core.list_namespaced_event(namespace).items
    assert any(e.reason == "UsersDistributed" for e in events)

    # A new user in the source reaches its shard at the next resync; a bad line is skipped with a Warning.
    users = sorted([*users, "newcomer@example.test"])
    patched = users_secret(users)
    extra = base64.b64decode(patched["data"]["passwd"]) + b"this line has no colon\n"
    patched["data"]["passwd"] = base64.b64encode(extra).decode()
    core.replace_namespaced_secret(SOURCE, namespace, patched)
    eventually(lambda: split_as_routed(api_client, namespace, users), timeout=30, what="the newcomer routed")
    warnings = eventually(
        lambda: [e.message for e in core.list_namespaced_event(namespace).items if e.reason == "UsersSkipped"] or None,
        what="a UsersSkipped Warning",
    )
    assert f"{SOURCE} line 42" in warnings[0]

    # The source disappearing stalls the cluster for a human; the shards keep the users they have.
    core.delete_namespaced_secret(SOURCE, namespace)

    def stalled() -> dict[str, Any] | None:
        conditions = cluster(api_client, namespace).get("status", {}).get("conditions", [])
        found = next((c for c in conditions if c["type"] == "Stalled"), None)
        return found if found is not None and found["status"] == "True" else None

    found = eventually(stalled, what="Stalled for the missing users Secret")
    assert found["reason"] == "UsersSecretMissing"
    assert f"{SOURCE} does not exist" in found["message"]
    kept = [shard_users(core, namespace, shard) or [] for shard in SHARDS]
    assert sorted(kept[0] + kept[1]) == users
