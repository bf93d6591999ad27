"""What the chart renders: CRDs from the models, least-privilege RBAC, a peered restricted Deployment, monitoring."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_support import (
    CHART,
    CI_VALUES,
    CRDS,
    FULLNAME,
    NAMESPACE,
    RELEASE,
    Manifest,
    helm,
    kinds,
    only,
    operator_container,
    render,
    render_error,
)

import mailshard
from exported_metrics import exported_samples, unknown_references
from mailshard import rbac
from mailshard.chartgen import CRD_GUARD_CLOSE, CRD_GUARD_OPEN, KEEP_ANNOTATION

pytestmark = pytest.mark.unit

METRICS = (
    "mailshard_shards",
    "mailshard_failovers_total",
    "mailshard_replication_lag_seconds",
    "mailshard_cluster_proxies_ready",
    "mailshard_cluster_proxies_desired",
)
ALERTS = {"MailShardDegraded", "MailShardFailoverHappened", "MailShardReplicationLagHigh", "MailClusterProxiesNotReady"}


@pytest.fixture(scope="module")
def default() -> list[Manifest]:
    return render()


# --- chart metadata and lint --------------------------------------------------------------------


def test_chart_metadata_follows_the_operator_release() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["appVersion"] == mailshard.__version__
    assert chart["kubeVersion"] == ">=1.33.0-0"


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda path: path.name)
def test_helm_lint_strict_passes(values: Path) -> None:
    result = helm("lint", "--strict", "--kube-version", "1.33.0", str(CHART), "--values", str(values))
    assert "0 chart(s) failed" in result.stdout


def test_the_ci_matrix_covers_the_documented_cases() -> None:
    assert {path.name for path in CI_VALUES} == {
        "default-values.yaml",
        "crds-disabled-values.yaml",
        "monitoring-values.yaml",
        "watch-namespaces-values.yaml",
    }


def test_kube_version_below_the_supported_one_is_refused() -> None:
    result = helm("template", RELEASE, str(CHART), "--kube-version", "1.32.9", check=False)
    assert result.returncode != 0
    assert ">=1.33.0-0" in result.stderr


# --- objects and names ---------------------------------------------------------------------------


def test_default_render_is_the_operator_with_its_crds_rbac_and_peering(default: list[Manifest]) -> None:
    assert kinds(default) == [
        ("ClusterKopfPeering", FULLNAME),
        ("ClusterRole", FULLNAME),
        ("ClusterRoleBinding", FULLNAME),
        ("CustomResourceDefinition", "mailclusters.mailshard.io"),
        ("CustomResourceDefinition", "mailshards.mailshard.io"),
        ("Deployment", FULLNAME),
        ("ServiceAccount", FULLNAME),
    ]
    for manifest in default:
        if manifest["kind"] in ("Deployment", "ServiceAccount"):
            assert manifest["metadata"]["namespace"] == NAMESPACE


def test_cluster_scoped_names_follow_the_release() -> None:
    assert only(render(release="mailshard-operator"), "ClusterRole")["metadata"]["name"] == "mailshard-operator"
    other = render(release="other")
    assert {only(other, kind)["metadata"]["name"] for kind in ("ClusterRole", "ClusterRoleBinding")} == {
        "other-mailshard-operator"
    }
    assert only(render({"fullnameOverride": "mso"}), "ClusterKopfPeering")["metadata"]["name"] == "mso"


def test_the_binding_grants_the_cluster_role_to_the_service_account(default: list[Manifest]) -> None:
    binding = only(default, "ClusterRoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": FULLNAME}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}]
    assert only(default, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == FULLNAME


def test_an_existing_service_account_and_no_rbac() -> None:
    objects = render({"serviceAccount": {"create": False, "name": "ops"}, "rbac": {"create": False}})
    assert not {"ServiceAccount", "ClusterRole", "ClusterRoleBinding"} & {o["kind"] for o in objects}
    assert only(objects, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "ops"
    assert "serviceAccount.name is required" in render_error({"serviceAccount": {"create": False}})


# --- RBAC ----------------------------------------------------------------------------------------


def test_cluster_role_rules_are_exactly_the_rbac_module(default: list[Manifest]) -> None:
    assert only(default, "ClusterRole")["rules"] == rbac.cluster_role_rules()


def test_no_wildcard_anywhere_in_the_rules(default: list[Manifest]) -> None:
    for rule in only(default, "ClusterRole")["rules"]:
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], f"wildcard in {field} of {rule}"
            assert all("*" not in item for item in rule[field] if item), f"wildcard in {field} of {rule}"
        assert "nonResourceURLs" not in rule


def test_secrets_are_only_read_by_name_created_and_patched(default: list[Manifest]) -> None:
    # Never list or watch: the operator reads the Secrets the specs name, and writes its own.
    rules = [r for r in only(default, "ClusterRole")["rules"] if "secrets" in r["resources"]]
    assert rules == [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "create", "patch"]}]


def test_no_rule_grants_what_the_code_never_does(default: list[Manifest]) -> None:
    granted = {
        (group, resource): set(rule["verbs"])
        for rule in only(default, "ClusterRole")["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    # `update` only where the API demands it: setting blockOwnerDeletion checks update on the owner's finalizers.
    assert {key[1] for key, verbs in granted.items() if "update" in verbs} == {
        "mailshards/finalizers",
        "mailclusters/finalizers",
    }
    # Deletes: mail volumes (reclaimPolicy Delete, or lost with their node) and the pod of a member started afresh.
    assert {key for key, verbs in granted.items() if "delete" in verbs} == {
        ("", "persistentvolumeclaims"),
        ("", "pods"),
    }
    # Nodes and volumes are read one by one (where a lost volume lived), never listed or watched.
    assert granted[("", "nodes")] == granted[("", "persistentvolumes")] == {"get"}
    assert ("events.k8s.io", "events") not in granted  # ours and kopf's Events are core/v1


def test_watch_namespaces_grant_namespaced_rules_in_those_namespaces_only() -> None:
    objects = render({"watchNamespaces": ["mail-a", "mail-b"]})
    cluster_rules = only(objects, "ClusterRole")["rules"]
    assert cluster_rules == rbac.cluster_role_rules(every_namespace=False)
    cluster_resources = {resource for rule in cluster_rules for resource in rule["resources"]}
    assert cluster_resources == {
        "storageclasses",
        "namespaces",
        "persistentvolumes",
        "nodes",
        "customresourcedefinitions",
        "clusterkopfpeerings",
    }
    for namespace in ("mail-a", "mail-b"):
        role = only((o for o in objects if o["metadata"].get("namespace") == namespace), "Role")
        assert role["metadata"]["name"] == FULLNAME
        assert role["rules"] == rbac.role_rules()
        assert {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "create", "patch"]} in role["rules"]
        binding = only((o for o in objects if o["metadata"].get("namespace") == namespace), "RoleBinding")
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": FULLNAME}
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}]
    assert {o["metadata"].get("namespace") for o in objects if o["kind"] in ("Role", "RoleBinding")} == {
        "mail-a",
        "mail-b",
    }


def test_every_rule_is_in_exactly_one_scope_and_the_default_has_them_all(default: list[Manifest]) -> None:
    assert only(default, "ClusterRole")["rules"] == rbac.cluster_role_rules()
    assert rbac.cluster_role_rules() == rbac.cluster_role_rules(every_namespace=False) + rbac.role_rules()
    assert not {"Role", "RoleBinding"} & {o["kind"] for o in default}


# --- CRDs ----------------------------------------------------------------------------------------


def strip_helm_wrapper(template: str) -> str:
    """A CRD template minus the lines the generator adds: what remains must be the file in crds/."""
    assert template.startswith(CRD_GUARD_OPEN)
    assert template.endswith(CRD_GUARD_CLOSE)
    assert template.count(KEEP_ANNOTATION) == 1
    return template.removeprefix(CRD_GUARD_OPEN).removesuffix(CRD_GUARD_CLOSE).replace(KEEP_ANNOTATION, "")


@pytest.mark.parametrize("crd_file", sorted(p.name for p in CRDS.glob("*.yaml")))
def test_crd_templates_are_the_crds_directory_byte_for_byte(crd_file: str) -> None:
    template = (CHART / "templates" / "crds" / crd_file).read_text()
    assert strip_helm_wrapper(template) == (CRDS / crd_file).read_text()


def test_rendered_crds_are_the_crds_directory_plus_the_keep_annotation(default: list[Manifest]) -> None:
    for path in CRDS.glob("*.yaml"):
        expected = yaml.safe_load(path.read_text())
        rendered = only(default, "CustomResourceDefinition", expected["metadata"]["name"])
        assert rendered["metadata"].pop("annotations") == {"helm.sh/resource-policy": "keep"}
        assert rendered == expected


def test_crds_keep_and_enabled_toggle() -> None:
    not_kept = [o for o in render({"crds": {"keep": False}}) if o["kind"] == "CustomResourceDefinition"]
    assert len(not_kept) == 2
    assert all("annotations" not in crd["metadata"] for crd in not_kept)
    disabled = render({"crds": {"enabled": False}})
    assert "CustomResourceDefinition" not in {o["kind"] for o in disabled}
    assert {"Deployment", "ClusterRole"} <= {o["kind"] for o in disabled}


def test_kopf_peering_crds_ship_in_the_charts_crds_directory() -> None:
    crds = [o for o in render(None, "--include-crds") if o["kind"] == "CustomResourceDefinition"]
    peering = {crd["metadata"]["name"]: crd for crd in crds if crd["spec"]["group"] == "kopf.dev"}
    assert {name: crd["spec"]["scope"] for name, crd in peering.items()} == {
        "clusterkopfpeerings.kopf.dev": "Cluster",
        "kopfpeerings.kopf.dev": "Namespaced",
    }
    for crd in peering.values():
        (version,) = crd["spec"]["versions"]
        assert (version["name"], version["served"], version["storage"]) == ("v1", True, True)
        status = version["schema"]["openAPIV3Schema"]["properties"]["status"]
        assert status["x-kubernetes-preserve-unknown-fields"] is True  # kopf keeps the peers there


# --- the Deployment ------------------------------------------------------------------------------


def test_two_peered_replicas_not_standalone(default: list[Manifest]) -> None:
    deployment = only(default, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    args = operator_container(default)["args"]
    assert f"--peering={FULLNAME}" in args
    assert "--standalone" not in args
    assert not [a for a in args if a.startswith("--namespace")]
    assert only(default, "ClusterKopfPeering")["metadata"]["name"] == FULLNAME
    env = {e["name"]: e for e in operator_container(default)["env"]}
    assert env["POD_ID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["MAILSHARD_RESYNC_SECONDS"]["value"] == "120"


def test_liveness_probe_on_kopfs_health_endpoint(default: list[Manifest]) -> None:
    container = operator_container(default)
    assert "--liveness=http://0.0.0.0:8080/healthz" in container["args"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"health": 8080, "metrics": 9090}
    probe = container["livenessProbe"]
    assert probe["httpGet"] == {"path": "/healthz", "port": "health"}
    assert probe["periodSeconds"] > 0


def assert_restricted(objects: list[Manifest]) -> None:
    """The Pod Security "restricted" profile, as far as our pod spec can break it."""
    pod = only(objects, "Deployment")["spec"]["template"]["spec"]
    container = operator_container(objects)
    pod_context, context = pod.get("securityContext", {}), container["securityContext"]
    assert context.get("runAsNonRoot", pod_context.get("runAsNonRoot")) is True
    assert pod_context.get("runAsUser", 1) != 0
    assert context.get("runAsUser", 1) != 0
    seccomp = context.get("seccompProfile", pod_context.get("seccompProfile"))
    assert seccomp == {"type": "RuntimeDefault"}
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["readOnlyRootFilesystem"] is True
    assert not context.get("privileged")
    assert not {"hostNetwork", "hostPID", "hostIPC"} & {key for key, value in pod.items() if value}
    for volume in pod.get("volumes", []):
        assert set(volume) - {"name"} <= {"emptyDir", "configMap", "secret", "projected"}, volume


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda path: path.name)
def test_pod_security_restricted_in_every_ci_case(values: Path) -> None:
    assert_restricted(render(values_file=values))


def test_restricted_check_catches_a_weakened_context() -> None:
    weakened = render({"securityContext": {"allowPrivilegeEscalation": True}})
    with pytest.raises(AssertionError):
        assert_restricted(weakened)


def test_image_and_scheduling_values_reach_the_pod() -> None:
    objects = render(
        {
            "image": {"repository": "reg.example/ms", "tag": "1.2.3", "pullPolicy": "Never", "pullSecrets": ["a"]},
            "replicas": 3,
            "resyncSeconds": 7,
            "verbose": True,
            "podAnnotations": {"a.example/b": "c"},
            "nodeSelector": {"disk": "ssd"},
            "tolerations": [{"key": "k", "operator": "Exists"}],
            "affinity": {"nodeAffinity": {"x": 1}},
            "resources": {"requests": {"cpu": "1"}},
        }
    )
    deployment = only(objects, "Deployment")
    pod = deployment["spec"]["template"]
    container = operator_container(objects)
    assert (container["image"], container["imagePullPolicy"]) == ("reg.example/ms:1.2.3", "Never")
    assert pod["spec"]["imagePullSecrets"] == [{"name": "a"}]
    assert deployment["spec"]["replicas"] == 3
    assert {e["name"]: e.get("value") for e in container["env"]}["MAILSHARD_RESYNC_SECONDS"] == "7"
    assert "--verbose" in container["args"]
    assert pod["metadata"]["annotations"] == {"a.example/b": "c"}
    assert pod["spec"]["nodeSelector"] == {"disk": "ssd"}
    assert pod["spec"]["tolerations"] == [{"key": "k", "operator": "Exists"}]
    assert pod["spec"]["affinity"] == {"nodeAffinity": {"x": 1}}
    assert container["resources"]["requests"]["cpu"] == "1"


def test_default_image_is_the_app_version(default: list[Manifest]) -> None:
    container = operator_container(default)
    assert container["image"] == f"mailshard/operator:{mailshard.__version__}"
    assert container["imagePullPolicy"] == "IfNotPresent"
    assert "command" not in container  # the image's entrypoint is `python -m mailshard run`


def test_watch_namespaces_become_arguments_and_namespaced_peerings() -> None:
    objects = render({"watchNamespaces": ["mail-a", "mail-b"]})
    args = operator_container(objects)["args"]
    assert [a for a in args if a.startswith("--namespace")] == ["--namespace=mail-a", "--namespace=mail-b"]
    peerings = [o for o in objects if o["kind"] in ("KopfPeering", "ClusterKopfPeering")]
    assert sorted((p["kind"], p["metadata"]["namespace"], p["metadata"]["name"]) for p in peerings) == [
        ("KopfPeering", "mail-a", FULLNAME),
        ("KopfPeering", "mail-b", FULLNAME),
    ]


# --- monitoring ----------------------------------------------------------------------------------


def test_no_monitoring_objects_by_default(default: list[Manifest]) -> None:
    assert not {"Service", "ServiceMonitor", "PrometheusRule"} & {o["kind"] for o in default}


def monitoring() -> list[Manifest]:
    return render({"metrics": {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}}})


def test_service_monitor_scrapes_the_metrics_port_of_the_operator_pods() -> None:
    objects = monitoring()
    service = only(objects, "Service")
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"}]
    pod_labels = only(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    monitor = only(objects, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"], endpoint["honorLabels"]) == ("metrics", "/metrics", True)


def test_metrics_service_alone() -> None:
    objects = render({"metrics": {"service": {"enabled": True}}})
    assert only(objects, "Service")["metadata"]["name"] == f"{FULLNAME}-metrics"
    assert "ServiceMonitor" not in {o["kind"] for o in objects}


def test_every_alert_queries_metrics_and_labels_the_operator_or_the_sidecar_exports() -> None:
    # An alert over a series nobody exports can never fire, and nothing else would notice.
    samples = exported_samples()
    rule = only(monitoring(), "PrometheusRule")
    expressions = [r["expr"] for group in rule["spec"]["groups"] for r in group["rules"]]
    assert len(expressions) == len(ALERTS)
    for expression in expressions:
        assert unknown_references(expression, samples) == [], expression


def test_prometheus_rule_alerts_on_the_documented_metrics() -> None:
    rule = only(monitoring(), "PrometheusRule")
    alerts = {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"]}
    assert set(alerts) == ALERTS
    expressions = " ".join(a["expr"] for a in alerts.values())
    for metric in METRICS:
        assert metric in expressions
    assert "> 60" in alerts["MailShardReplicationLagHigh"]["expr"]
    assert "{{ $labels.shard }}" in alerts["MailShardFailoverHappened"]["annotations"]["summary"]
    for alert in alerts.values():
        assert alert["labels"]["severity"] in ("info", "warning", "critical")
    documented = (CHART / "values.yaml").read_text() + (CHART / "README.md").read_text()
    for metric in METRICS:
        assert metric in documented


# --- values schema -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (("--set", "replicaCount=2"), "replicaCount"),
        (("--set", "image.pulPolicy=Never"), "pulPolicy"),
        (("--set", "metrics.serviceMonitor.enable=true"), "enable"),
        (("--set", "replicas=two"), "/replicas"),
        (("--set", "crds.keep=maybe"), "/crds/keep"),
        (("--set", "image.pullPolicy=Sometimes"), "/image/pullPolicy"),
        (("--set-json", 'watchNamespaces=["Mail_A"]'), "/watchNamespaces/0"),
        (("--set-json", 'podAnnotations={"a": 1}'), "/podAnnotations/a"),
    ],
)
def test_values_schema_rejects_unknown_keys_and_wrong_types(flags: tuple[str, str], named: str) -> None:
    error = render_error(None, *flags)
    assert "values don't meet the specifications of the schema" in error
    assert named in error


KUBERNETES_TYPES = {"podSecurityContext", "securityContext", "resources"}
"""Kubernetes types passed through: the schema lists their fields, values.yaml sets only some."""


def schema_keys(schema: dict[str, Any], path: str = "") -> set[str]:
    keys = set()
    for name, child in schema.get("properties", {}).items():
        keys.add(f"{path}{name}")
        if child.get("additionalProperties") is False and name not in KUBERNETES_TYPES:
            keys |= schema_keys(child, f"{path}{name}.")
    return keys


def value_keys(values: dict[str, Any], schema: dict[str, Any], path: str = "") -> set[str]:
    keys = set()
    for name, value in values.items():
        keys.add(f"{path}{name}")
        child = schema["properties"][name]
        if isinstance(value, dict) and child.get("additionalProperties") is False and name not in KUBERNETES_TYPES:
            keys |= value_keys(value, child, f"{path}{name}.")
    return keys


def test_every_value_is_in_the_schema_and_closed_at_every_level() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert value_keys(values, schema) == schema_keys(schema) - {"global"}

    def closed(node: dict[str, Any], where: str) -> None:
        if "properties" in node:
            assert node.get("additionalProperties") is False, f"{where} accepts unknown keys"
            for name, child in node["properties"].items():
                closed(child, f"{where}.{name}")

    closed(schema, "values")


def test_every_value_is_documented() -> None:
    """Every key of values.yaml has a `# --` comment right above it, or sits under a key that has one."""
    documented: list[tuple[int, bool]] = []  # (indent, documented) of the enclosing keys
    undocumented = []
    lines = (CHART / "values.yaml").read_text().splitlines()
    for index, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", "-")):
            continue
        indent = len(line) - len(line.lstrip())
        documented = [(i, d) for i, d in documented if i < indent]
        above = next((lines[j].strip() for j in range(index - 1, -1, -1) if lines[j].strip()), "")
        here = above.startswith("#") or any(d for _, d in documented)
        documented.append((indent, here))
        block_follows = not stripped.split(":", 1)[1].strip()
        if not here and not block_follows:
            undocumented.append(stripped)
    assert undocumented == []


def test_notes_say_how_to_check_the_operator_and_apply_shards() -> None:
    notes = (CHART / "templates" / "NOTES.txt").read_text()
    assert "kubectl get ms,mc" in notes
    assert "examples/mailcluster.yaml" in notes
    assert "logs deployment/" in notes
