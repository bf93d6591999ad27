"""The models refuse what the API server refuses, apply the documented defaults, and merge cluster defaults."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import pytest
from pydantic import ValidationError
from unit_support import EXAMPLES, cluster_body, load_documents, load_resources, parse_resource, shard_body

from mailshard.api import Backend, Compression, MailCluster, MailShard, ReplicationMode, ShardDefaults
from mailshard.api.v1alpha1 import MailShardStatus, ReclaimPolicy, ShardPhase
from mailshard.api.v1alpha1.settings import (
    CapacityOverrides,
    CapacitySettings,
    FailoverOverrides,
    FailoverSettings,
    ReplicationOverrides,
    ReplicationSettings,
    StorageOverrides,
    StorageSettings,
)

pytestmark = pytest.mark.unit


def parse_shard(**spec: Any) -> MailShard:
    return MailShard.from_resource(shard_body(**spec))


# --- refusals -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [
        pytest.param({"backend": "exim"}, id="unknown backend"),
        pytest.param({"capacity": {"mailboxes": 0}}, id="zero capacity"),
        pytest.param({"capacity": {"mailboxes": -5}}, id="negative capacity"),
        pytest.param({"capasity": {"mailboxes": 5}}, id="unknown spec field"),
        pytest.param({"storage": {"size": "10Gi", "sise": "1Gi"}}, id="unknown nested field"),
        pytest.param({"storage": {"size": "lots"}}, id="size not a quantity"),
        pytest.param({"storage": {"size": "0"}}, id="size zero"),
        pytest.param({"storage": {"size": "-1Gi"}}, id="size negative"),
        pytest.param({"storage": {"reclaimPolicy": "Recycle"}}, id="unknown reclaim policy"),
        pytest.param({"failover": {"delaySeconds": -1}}, id="negative failover delay"),
        pytest.param({"failover": {"delaySeconds": 3601}}, id="failover delay over an hour"),
        pytest.param({"replication": {"mode": "sync"}}, id="sync replication"),
        pytest.param({"replication": {"port": 143}}, id="replication port taken by IMAP"),
        pytest.param({"replication": {"maxLagSeconds": 0}}, id="zero max lag"),
        pytest.param({"compression": "lzma"}, id="unknown compression"),
        pytest.param({"resources": {"requests": {"cpu": "a lot"}}}, id="resource not a quantity"),
        pytest.param({"resources": {"claims": []}}, id="unsupported resources field"),
        pytest.param({"clusterRef": {"name": "Demo"}}, id="cluster name not a DNS label"),
        pytest.param({"image": ""}, id="empty image"),
    ],
)
def test_invalid_shard_spec_is_refused(spec: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        parse_shard(**spec)


def test_missing_backend_is_refused() -> None:
    body = shard_body()
    del body["spec"]["backend"]
    with pytest.raises(ValidationError, match="backend"):
        MailShard.from_resource(body)


@pytest.mark.parametrize(
    "name",
    ["a" * 51, "1shard", "shard.one", "Shard", "shard-", "-shard"],
)
def test_shard_name_that_cannot_prefix_object_names_is_refused(name: str) -> None:
    with pytest.raises(ValidationError, match="name"):
        MailShard.from_resource(shard_body(name))


def test_longest_allowed_shard_name_is_accepted() -> None:
    assert MailShard.from_resource(shard_body("a" * 50)).metadata.name == "a" * 50


@pytest.mark.parametrize(
    "spec",
    [
        pytest.param({"proxy": {"replicas": -1}}, id="negative replicas"),
        pytest.param({"proxy": {"protocols": ["imap", "imap"]}}, id="duplicate protocol"),
        pytest.param({"proxy": {"protocols": ["smtp"]}}, id="unknown protocol"),
        pytest.param({"proxy": {"protocols": []}}, id="no protocol"),
        pytest.param({"routing": {"slots": 0}}, id="zero slots"),
        pytest.param({"routing": {"slots": 65537}}, id="too many slots"),
        pytest.param({"shardDefaults": {"backend": "dovecot"}}, id="backend is not inheritable"),
        pytest.param({"shardDefaults": {"capacity": {"mailboxes": 0}}}, id="zero default capacity"),
        pytest.param({"tls": {"secret": "x"}}, id="unknown tls field"),
    ],
)
def test_invalid_cluster_spec_is_refused(spec: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        MailCluster.from_resource(cluster_body(**spec))


# --- defaults -----------------------------------------------------------------------------------


def test_standalone_shard_gets_the_built_in_defaults() -> None:
    resolved = parse_shard().resolve(None).spec
    assert resolved.backend is Backend.DOVECOT
    assert resolved.capacity.mailboxes == 2000
    assert resolved.storage.size == "10Gi"
    assert resolved.storage.reclaim_policy is ReclaimPolicy.RETAIN
    assert resolved.storage.storage_class_name is None
    assert resolved.replication.mode is ReplicationMode.ASYNC
    assert resolved.replication.max_lag_seconds == 30
    assert resolved.replication.port == 12345
    assert resolved.failover.enabled is True
    assert resolved.failover.delay_seconds == 1
    assert resolved.compression is Compression.NONE
    assert resolved.resources.to_manifest() == {}
    assert resolved.cluster_name is None


def test_empty_cluster_spec_gets_the_built_in_defaults() -> None:
    cluster = MailCluster.from_resource({**cluster_body(), "spec": None})
    assert cluster.spec.proxy.replicas == 2
    assert [p.value for p in cluster.spec.proxy.protocols] == ["imap", "pop3", "lmtp", "managesieve"]
    assert cluster.spec.routing.slots == 1024
    assert cluster.spec.tls is None
    assert cluster.spec.shard_defaults == ShardDefaults()


def test_shard_spec_has_no_defaults_of_its_own() -> None:
    """Unset shard fields must stay unset, or the cluster's defaults could never apply."""
    spec = parse_shard().spec
    assert spec.model_dump(exclude_none=True) == {"backend": Backend.DOVECOT}


# --- inheritance --------------------------------------------------------------------------------


def test_shard_settings_win_over_cluster_defaults_field_by_field() -> None:
    cluster = MailCluster.from_resource(
        cluster_body(
            shardDefaults={
                "capacity": {"mailboxes": 9000},
                "storage": {"storageClassName": "fast", "size": "100Gi", "reclaimPolicy": "Delete"},
                "replication": {"maxLagSeconds": 90, "port": 4000},
                "failover": {"enabled": False, "delaySeconds": 30},
                "compression": "zlib",
                "resources": {"requests": {"cpu": "1", "memory": "1Gi"}},
            }
        )
    )
    shard = parse_shard(
        clusterRef={"name": "demo"},
        storage={"size": "200Gi"},
        replication={"maxLagSeconds": 10},
        failover={"enabled": True},
        resources={"limits": {"memory": "2Gi"}},
    )
    resolved = shard.resolve(cluster.spec.shard_defaults).spec
    assert resolved.capacity.mailboxes == 9000
    assert resolved.storage == StorageSettings(storage_class_name="fast", size="200Gi", reclaim_policy="Delete")
    assert resolved.replication == ReplicationSettings(max_lag_seconds=10, port=4000)
    assert resolved.failover == FailoverSettings(enabled=True, delay_seconds=30)
    assert resolved.compression is Compression.ZLIB
    # resources are replaced as a whole, not merged key by key
    assert resolved.resources.to_manifest() == {"limits": {"memory": "2Gi"}}
    assert resolved.cluster_name == "demo"


def test_cluster_resources_apply_when_the_shard_sets_none() -> None:
    defaults = ShardDefaults.model_validate({"resources": {"requests": {"cpu": 2}}})
    assert parse_shard().resolve(defaults).spec.resources.to_manifest() == {"requests": {"cpu": 2}}


@pytest.mark.parametrize(
    ("cluster_default", "own", "expected"),
    [
        (None, None, "required"),
        ("preferred", None, "preferred"),
        ("preferred", "required", "required"),
        (None, "preferred", "preferred"),
    ],
)
def test_anti_affinity_type_comes_from_the_shard_else_the_cluster_else_required(
    cluster_default: str | None, own: str | None, expected: str
) -> None:
    defaults = ShardDefaults.model_validate({"podAntiAffinityType": cluster_default} if cluster_default else {})
    placement = {"placement": {"podAntiAffinityType": own, "nodeSelector": {"disk": "ssd"}}} if own else {}
    resolved = parse_shard(**placement).resolve(defaults).spec.placement
    assert resolved.pod_anti_affinity_type == expected
    if own:
        assert resolved.node_selector == {"disk": "ssd"}


@pytest.mark.parametrize(
    ("settings", "overrides"),
    [
        (CapacitySettings, CapacityOverrides),
        (StorageSettings, StorageOverrides),
        (ReplicationSettings, ReplicationOverrides),
        (FailoverSettings, FailoverOverrides),
    ],
)
def test_each_overrides_form_has_exactly_the_fields_of_its_settings_form(settings: type, overrides: type) -> None:
    assert list(settings.model_fields) == list(overrides.model_fields)
    assert all(field.default is None for field in overrides.model_fields.values())


# --- parsing ------------------------------------------------------------------------------------


def test_from_resource_accepts_read_only_mappings_and_missing_status() -> None:
    body = shard_body(storage={"size": "1Gi"})
    body["status"] = None
    frozen = MappingProxyType({**body, "spec": MappingProxyType(body["spec"])})
    shard = MailShard.from_resource(frozen)
    assert shard.status == MailShardStatus()
    assert shard.metadata.uid


def test_status_written_by_a_newer_operator_still_parses() -> None:
    body = shard_body()
    body["status"] = {"phase": "Healthy", "master": "inbox-1-a", "someFutureField": {"x": 1}}
    assert MailShard.from_resource(body).status.phase is ShardPhase.HEALTHY


def test_status_round_trips_through_its_wire_form() -> None:
    body = shard_body()
    body["status"] = {
        "phase": "Degraded",
        "master": "inbox-1-a",
        "lastFailover": {
            "from": "inbox-1-b",
            "to": "inbox-1-a",
            "reason": "MasterLost",
            "started": "2025-01-02T03:04:05Z",
        },
        "conditions": [
            {
                "type": "Ready",
                "status": "False",
                "reason": "MemberUnavailable",
                "lastTransitionTime": "2025-01-02T03:04:05Z",
            }
        ],
    }
    status = MailShard.from_resource(body).status
    wire = status.model_dump(mode="json", exclude_none=True)
    assert wire["lastFailover"]["from"] == "inbox-1-b"
    assert wire["conditions"][0]["lastTransitionTime"] == "2025-01-02T03:04:05Z"
    assert MailShardStatus.model_validate(wire) == status


def test_spec_serialises_with_camel_case_keys() -> None:
    shard = parse_shard(storage={"storageClassName": "x"}, clusterRef={"name": "demo"})
    dumped = shard.spec.model_dump(mode="json", exclude_none=True)
    assert dumped["storage"] == {"storageClassName": "x"}
    assert dumped["clusterRef"] == {"name": "demo"}


# --- examples -----------------------------------------------------------------------------------


EXAMPLE_FILES = sorted(EXAMPLES.glob("*.yaml"))


def test_the_expected_examples_exist() -> None:
    assert {path.name for path in EXAMPLE_FILES} >= {
        "mailcluster.yaml",
        "mailshard-dovecot.yaml",
        "mailshard-cyrus.yaml",
    }


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda path: path.name)
def test_every_example_parses_into_the_models(path: Any) -> None:
    documents = load_resources(path)
    assert documents
    for document in documents:
        parse_resource(document)


def test_the_example_cluster_names_the_users_secret_its_file_holds() -> None:
    documents = load_documents(EXAMPLES / "mailcluster.yaml")
    cluster = next(parse_resource(d) for d in documents if d["kind"] == "MailCluster")
    assert isinstance(cluster, MailCluster)
    secrets = {d["metadata"]["name"]: d for d in documents if d["kind"] == "Secret"}
    assert cluster.spec.users is not None
    for name in cluster.spec.users.secret_names:
        lines = secrets[name]["stringData"][cluster.spec.users.key].splitlines()
        assert lines
        assert all(line.count(":") >= 7 and "@" in line.split(":")[0] for line in lines), lines


@pytest.mark.parametrize(
    ("file_name", "backend"), [("mailshard-dovecot.yaml", Backend.DOVECOT), ("mailshard-cyrus.yaml", Backend.CYRUS)]
)
def test_example_shards_join_the_demo_cluster_on_local_storage(file_name: str, backend: Backend) -> None:
    cluster = next(
        parse_resource(d) for d in load_documents(EXAMPLES / "mailcluster.yaml") if d["kind"] == "MailCluster"
    )
    shard = parse_resource(load_documents(EXAMPLES / file_name)[0])
    assert isinstance(cluster, MailCluster)
    assert isinstance(shard, MailShard)
    assert shard.spec.backend is backend
    assert shard.spec.cluster_ref is not None
    assert shard.spec.cluster_ref.name == cluster.metadata.name == "demo"
    resolved = shard.resolve(cluster.spec.shard_defaults).spec
    assert resolved.storage.storage_class_name == "mailshard-local"
    assert resolved.storage.size == "1Gi"
