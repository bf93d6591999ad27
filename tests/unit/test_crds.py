"""The generated CRDs: structural, complete (defaults, enums, bounds, CEL), and identical to the files in crds/."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from unit_support import CRDS

import mailshard.crdgen
from mailshard.__main__ import main
from mailshard.api.crd import GENERATED_HEADER, KINDS, custom_resource_definitions, render_crd_files
from mailshard.crdgen import check_crds

pytestmark = pytest.mark.unit

CRDS_BY_KIND = {crd["spec"]["names"]["kind"]: crd for crd in custom_resource_definitions()}


def root(kind: str) -> dict[str, Any]:
    version = CRDS_BY_KIND[kind]["spec"]["versions"][0]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def at(schema: dict[str, Any], path: str) -> dict[str, Any]:
    """The node at a dotted path of property names, e.g. `spec.storage.size`."""
    node = schema
    for name in path.split("."):
        node = node["properties"][name]
    return node


def walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from walk(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}{{}}")


ALL_NODES = [(kind, path, node) for kind in CRDS_BY_KIND for path, node in walk(root(kind))]


# --- structural rules ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(CRDS_BY_KIND))
def test_schema_is_structural(kind: str) -> None:
    for path, node in walk(root(kind)):
        where = f"{kind}{path}"
        for forbidden in ("$ref", "$defs", "title", "nullable", "uniqueItems", "const", "oneOf", "allOf", "not"):
            assert forbidden not in node, f"{where} has {forbidden}"
        assert node.get("additionalProperties") is not False, f"{where} has additionalProperties: false"
        assert not ("properties" in node and "additionalProperties" in node), f"{where} mixes properties and a map"
        if "anyOf" in node:
            assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}], f"{where} has a union"
            assert node.get("x-kubernetes-int-or-string") is True
            assert "type" not in node
        else:
            assert "type" in node, f"{where} has no type"
        if node.get("default") is None:
            assert "default" not in node, f"{where} defaults to null"


@pytest.mark.parametrize("kind", sorted(CRDS_BY_KIND))
def test_unknown_fields_are_never_preserved_in_spec_or_status(kind: str) -> None:
    preserving = {path for path, node in walk(root(kind)) if node.get("x-kubernetes-preserve-unknown-fields")}
    expected = {".spec.placement.tolerations[]", ".spec.placement.affinity"} if kind == "MailShard" else set()
    assert preserving == expected
    assert "x-kubernetes-preserve-unknown-fields" not in CRDS_BY_KIND[kind]["spec"]
    assert not CRDS_BY_KIND[kind]["spec"].get("preserveUnknownFields")


@pytest.mark.parametrize("kind", sorted(CRDS_BY_KIND))
def test_every_field_is_described(kind: str) -> None:
    for path, node in walk(root(kind)):
        if path.startswith((".spec", ".status")) and not path.endswith(("[]", "{}")):
            assert node.get("description"), f"{kind}{path} has no description"


def test_int_or_string_quantities_follow_the_kubernetes_shape() -> None:
    requests = at(root("MailShard"), "spec.resources.requests")
    assert requests["type"] == "object"
    quantity = requests["additionalProperties"]
    assert quantity["x-kubernetes-int-or-string"] is True
    assert quantity["anyOf"] == [{"type": "integer"}, {"type": "string"}]
    assert "pattern" in quantity


# --- content ------------------------------------------------------------------------------------


def test_names_scope_and_subresources() -> None:
    for kind, plural, short in (("MailShard", "mailshards", "ms"), ("MailCluster", "mailclusters", "mc")):
        crd = CRDS_BY_KIND[kind]
        assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
        assert crd["metadata"]["name"] == f"{plural}.mailshard.io"
        spec = crd["spec"]
        assert spec["group"] == "mailshard.io"
        assert spec["scope"] == "Namespaced"
        assert spec["names"]["plural"] == plural
        assert spec["names"]["shortNames"] == [short]
        assert spec["names"]["categories"] == ["mail"]
        [version] = spec["versions"]
        assert version["name"] == "v1alpha1"
        assert version["served"] is True
        assert version["storage"] is True
        assert version["subresources"] == {"status": {}}
        assert "status" in version["schema"]["openAPIV3Schema"]["properties"]


@pytest.mark.parametrize(
    ("kind", "columns"),
    [
        (
            "MailShard",
            [
                ("BACKEND", ".spec.backend", "string"),
                ("MASTER", ".status.master", "string"),
                ("REPLICA", ".status.replica", "string"),
                ("LAG", ".status.lagSeconds", "number"),
                ("PHASE", ".status.phase", "string"),
                ("AGE", ".metadata.creationTimestamp", "date"),
            ],
        ),
        (
            "MailCluster",
            [
                ("SHARDS", ".status.shards", "integer"),
                ("READY", ".status.readyShards", "integer"),
                ("PROXIES", ".status.proxiesReady", "integer"),
                ("ROUTING-VERSION", ".status.routingVersion", "integer"),
                ("AGE", ".metadata.creationTimestamp", "date"),
            ],
        ),
    ],
)
def test_printer_columns(kind: str, columns: list[tuple[str, str, str]]) -> None:
    """kubectl prints column names upper-cased; the CRD spells them the conventional way."""
    printed = CRDS_BY_KIND[kind]["spec"]["versions"][0]["additionalPrinterColumns"]
    assert [(c["name"].upper(), c["jsonPath"], c["type"]) for c in printed] == columns


@pytest.mark.parametrize(
    ("kind", "path", "default"),
    [
        ("MailCluster", "spec", {}),
        ("MailCluster", "spec.proxy.replicas", 2),
        ("MailCluster", "spec.proxy.protocols", ["imap", "pop3", "lmtp", "managesieve"]),
        ("MailCluster", "spec.routing.slots", 1024),
        ("MailCluster", "spec.shardDefaults", {}),
        ("MailCluster", "spec.shardDefaults.capacity.mailboxes", 2000),
        ("MailCluster", "spec.shardDefaults.storage.size", "10Gi"),
        ("MailCluster", "spec.shardDefaults.storage.reclaimPolicy", "Retain"),
        ("MailCluster", "spec.shardDefaults.replication.mode", "async"),
        ("MailCluster", "spec.shardDefaults.replication.maxLagSeconds", 30),
        ("MailCluster", "spec.shardDefaults.failover.enabled", True),
        ("MailCluster", "spec.shardDefaults.failover.delaySeconds", 1),
        ("MailCluster", "spec.shardDefaults.compression", "none"),
    ],
)
def test_defaults_are_in_the_schema(kind: str, path: str, default: Any) -> None:
    assert at(root(kind), path)["default"] == default


def test_shard_spec_carries_no_defaults_so_cluster_defaults_can_apply() -> None:
    assert [path for path, node in walk(at(root("MailShard"), "spec")) if "default" in node] == []


@pytest.mark.parametrize(
    ("kind", "path", "bounds"),
    [
        ("MailShard", "spec.capacity.mailboxes", {"minimum": 1}),
        ("MailShard", "spec.failover.delaySeconds", {"minimum": 0, "maximum": 3600}),
        ("MailCluster", "spec.routing.slots", {"minimum": 1, "maximum": 65536}),
        ("MailCluster", "spec.proxy.replicas", {"minimum": 0}),
    ],
)
def test_bounds_are_in_the_schema(kind: str, path: str, bounds: dict[str, int]) -> None:
    node = at(root(kind), path)
    assert {key: node[key] for key in bounds} == bounds


@pytest.mark.parametrize(
    ("kind", "path", "values"),
    [
        ("MailShard", "spec.backend", ["dovecot", "cyrus"]),
        ("MailShard", "spec.storage.reclaimPolicy", ["Retain", "Delete"]),
        ("MailShard", "spec.replication.mode", ["async"]),
        ("MailShard", "spec.compression", ["none", "zlib"]),
        ("MailShard", "status.members.role", None),
    ],
)
def test_enums_are_in_the_schema(kind: str, path: str, values: list[str] | None) -> None:
    if values is None:
        node = root(kind)["properties"]["status"]["properties"]["members"]["items"]["properties"]["role"]
        assert node["enum"] == ["master", "replica", "unknown"]
    else:
        assert at(root(kind), path)["enum"] == values


def rules(node: dict[str, Any]) -> list[str]:
    return [rule["rule"] for rule in node.get("x-kubernetes-validations", [])]


def messages(node: dict[str, Any]) -> list[str]:
    return [rule["message"] for rule in node.get("x-kubernetes-validations", [])]


def test_backend_is_immutable() -> None:
    backend = at(root("MailShard"), "spec.backend")
    assert rules(backend) == ["self == oldSelf"]
    assert messages(backend)[0].startswith("spec.backend is immutable")


def test_storage_size_must_be_a_growing_quantity() -> None:
    size = at(root("MailShard"), "spec.storage.size")
    assert "isQuantity(self)" in rules(size)
    assert any("compareTo(quantity(oldSelf)) >= 0" in rule for rule in rules(size))
    assert any(message.startswith("spec.storage.size may only grow") for message in messages(size))


def test_cluster_default_size_must_be_a_quantity_but_may_shrink() -> None:
    size = at(root("MailCluster"), "spec.shardDefaults.storage.size")
    assert "isQuantity(self)" in rules(size)
    assert not any("oldSelf" in rule for rule in rules(size))


def test_slots_are_immutable() -> None:
    slots = at(root("MailCluster"), "spec.routing.slots")
    assert rules(slots) == ["self == oldSelf"]
    assert "spec.routing.slots is immutable" in messages(slots)[0]


@pytest.mark.parametrize("kind", sorted(CRDS_BY_KIND))
def test_names_are_bounded_so_derived_names_fit(kind: str) -> None:
    assert "self.metadata.name.size() <= 50" in rules(root(kind))
    assert any(rule.startswith("self.metadata.name.matches(") for rule in rules(root(kind)))


def test_conditions_are_a_map_keyed_by_type() -> None:
    for kind in CRDS_BY_KIND:
        conditions = at(root(kind), "status.conditions")
        assert conditions["x-kubernetes-list-type"] == "map"
        assert conditions["x-kubernetes-list-map-keys"] == ["type"]
        item = conditions["items"]
        assert set(item["required"]) >= {"type", "status", "reason", "lastTransitionTime"}
        assert item["properties"]["status"]["enum"] == ["True", "False", "Unknown"]


def test_status_carries_no_defaults() -> None:
    for kind in CRDS_BY_KIND:
        assert [path for path, node in walk(at(root(kind), "status")) if "default" in node] == []


# --- the files in crds/ -------------------------------------------------------------------------


def test_generated_files_match_crds_directory() -> None:
    """The drift test: regenerate with `python -m mailshard crds --write crds/`."""
    for name, content in render_crd_files().items():
        path = CRDS / name
        assert path.is_file(), f"{path} is missing"
        assert path.read_text() == content, f"{path} is out of date with the models"
    assert sorted(p.name for p in CRDS.glob("*.yaml")) == sorted(render_crd_files())


def test_rendering_is_deterministic_and_marked_generated() -> None:
    first, second = render_crd_files(), render_crd_files()
    assert first == second
    assert set(first) == {"mailshard.io_mailshards.yaml", "mailshard.io_mailclusters.yaml"}
    for content in first.values():
        assert content.startswith(GENERATED_HEADER)
        assert "Do not edit" in content
        assert "&id" not in content
        assert yaml.safe_load(content)["kind"] == "CustomResourceDefinition"


def test_crds_check_passes_on_the_repository(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["crds", "--check", str(CRDS)]) == 0
    assert "match the models" in capsys.readouterr().out


def test_crds_check_names_the_drifted_file(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    drifted = dict(render_crd_files())
    drifted["mailshard.io_mailclusters.yaml"] += "# a model changed\n"
    monkeypatch.setattr(mailshard.crdgen, "render_crd_files", lambda: drifted)
    assert main(["crds", "--check", str(CRDS)]) == 1
    error = capsys.readouterr().err
    drifted_lines = [line for line in error.splitlines() if "differs from the models" in line]
    assert drifted_lines == [f"{CRDS / 'mailshard.io_mailclusters.yaml'}: differs from the models"]
    assert "+# a model changed" in error
    assert "python -m mailshard crds --write crds/" in error


def test_crds_check_reports_missing_and_stale_files(monkeypatch: pytest.MonkeyPatch) -> None:
    renamed = {f"renamed_{name}": content for name, content in render_crd_files().items()}
    monkeypatch.setattr(mailshard.crdgen, "render_crd_files", lambda: renamed)
    problems = {(drift.path.name, drift.problem) for drift in check_crds(CRDS)}
    assert ("renamed_mailshard.io_mailshards.yaml", "missing") in problems
    assert any(name == "mailshard.io_mailshards.yaml" and "not generated" in problem for name, problem in problems)


def test_every_kind_has_one_file() -> None:
    assert {kind.file_name for kind in KINDS} == {p.name for p in CRDS.glob("*.yaml")}


def test_the_field_reference_lists_every_field_and_is_up_to_date() -> None:
    from mailshard.api.reference import render_reference

    reference = render_reference()
    for field in ("spec.backend", "spec.storage.size", "status.members[].lagSeconds", "spec.routing.slots"):
        assert f"| `{field}` |" in reference
    assert (CRDS.parent / "docs" / "reference.md").read_text() == reference
