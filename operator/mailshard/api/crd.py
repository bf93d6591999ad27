"""The CustomResourceDefinitions of Mailshard, generated from the pydantic models and nothing else.

The models are the one source of truth: `custom_resource_definitions()` derives
each CRD from them (structural schema, defaults, enums, bounds, CEL rules,
printer columns), `render_crd_files()` turns them into the exact text of the
files under `crds/`, and `python -m mailshard crds --check crds/` fails CI when
the two drift.

Unknown fields. A structural schema makes the API server *prune* fields it does
not know, silently, unless the client asks for strict field validation
(`fieldValidation=Strict`), in which case the request is *rejected* with the
name of the unknown field. kubectl asks for it by default since 1.27
(`--validate=strict`); any other client creating or updating Mailshard objects
(Helm, GitOps tools, the operator itself) should do the same. The schemas never
set `x-kubernetes-preserve-unknown-fields` on `spec` or `status`, only on the
Kubernetes core types passed through verbatim (tolerations, affinity), so that
strict validation can catch every typo.

Versions. Each kind lists its served versions; v1alpha1 is the only one and the
storage version. A later version is added next to it with its own models and a
conversion webhook.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import yaml
from pydantic import BaseModel

from mailshard.api.constants import APP_NAME, GROUP, LABEL_NAME
from mailshard.api.structural import JsonSchema, structural_schema
from mailshard.api.v1alpha1 import cluster, common, shard

GENERATED_HEADER: Final = (
    "# Generated from the pydantic models in operator/mailshard/api by\n"
    "# `python -m mailshard crds --write crds/`. Do not edit: change the models and regenerate.\n"
)


@dataclass(frozen=True)
class PrinterColumn:
    """One column of `kubectl get`."""

    name: str
    json_path: str
    type: str
    description: str
    priority: int = 0

    def to_manifest(self) -> dict[str, Any]:
        column: dict[str, Any] = {
            "name": self.name,
            "jsonPath": self.json_path,
            "type": self.type,
            "description": self.description,
        }
        if self.priority:
            column["priority"] = self.priority
        return column


AGE_COLUMN: Final = PrinterColumn("Age", ".metadata.creationTimestamp", "date", "Time since the object was created.")


@dataclass(frozen=True)
class ServedVersion:
    """One version of a kind: its root model, and how kubectl shows it."""

    name: str
    model: type[BaseModel]
    printer_columns: Sequence[PrinterColumn]
    root_validations: Sequence[JsonSchema] = ()
    selectable_fields: Sequence[str] = ()
    storage: bool = False
    served: bool = True


@dataclass(frozen=True)
class CustomResourceKind:
    """A kind of the mailshard.io group and every version it is served in."""

    kind: str
    plural: str
    singular: str
    short_names: Sequence[str]
    versions: Sequence[ServedVersion]
    categories: Sequence[str] = ("mail",)
    group: str = GROUP
    scope: str = "Namespaced"

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{self.group}"

    @property
    def file_name(self) -> str:
        """The file under `crds/`, named like controller-gen names its output."""
        return f"{self.group}_{self.plural}.yaml"


MAILSHARD: Final = CustomResourceKind(
    kind=shard.KIND,
    plural="mailshards",
    singular="mailshard",
    short_names=("ms",),
    versions=(
        ServedVersion(
            name=common.VERSION,
            model=shard.MailShard,
            storage=True,
            printer_columns=(
                PrinterColumn("Backend", ".spec.backend", "string", "The IMAP server: dovecot or cyrus."),
                PrinterColumn("Master", ".status.master", "string", "The member serving as master."),
                PrinterColumn("Replica", ".status.replica", "string", "The member serving as replica."),
                PrinterColumn("Lag", ".status.lagSeconds", "number", "Replication lag of the replica, in seconds."),
                PrinterColumn("Phase", ".status.phase", "string", "Summary of the shard's state."),
                AGE_COLUMN,
            ),
            root_validations=common.name_rules(shard.KIND, derived="its StatefulSets and Services"),
            selectable_fields=(".spec.backend", ".spec.clusterRef.name"),
        ),
    ),
)

MAILCLUSTER: Final = CustomResourceKind(
    kind=cluster.KIND,
    plural="mailclusters",
    singular="mailcluster",
    short_names=("mc",),
    versions=(
        ServedVersion(
            name=common.VERSION,
            model=cluster.MailCluster,
            storage=True,
            printer_columns=(
                PrinterColumn("Shards", ".status.shards", "integer", "MailShards referring to this cluster."),
                PrinterColumn("Ready", ".status.readyShards", "integer", "Shards that are Ready."),
                PrinterColumn("Proxies", ".status.proxiesReady", "integer", "Proxy pods that are ready."),
                PrinterColumn(
                    "Routing-Version",
                    ".status.routingVersion",
                    "integer",
                    "Version of the routing table the proxies use.",
                ),
                AGE_COLUMN,
            ),
            root_validations=common.name_rules(cluster.KIND, derived="the proxies' Deployment and Services"),
        ),
    ),
)

KINDS: Final = (MAILSHARD, MAILCLUSTER)


def root_schema(version: ServedVersion) -> JsonSchema:
    """The `openAPIV3Schema` of one version: the model's spec and status under a typed root."""
    schema = structural_schema(version.model)
    properties = schema["properties"]
    # Kubernetes owns these three: the schema may only say they exist.
    properties["apiVersion"] = {
        "type": "string",
        "description": "Versioned schema of this representation of the object.",
    }
    properties["kind"] = {"type": "string", "description": "REST resource this object represents."}
    properties["metadata"] = {"type": "object"}
    schema["required"] = [name for name in schema.get("required", []) if name not in ("apiVersion", "kind", "metadata")]
    if not schema["required"]:
        del schema["required"]
    # Only the operator writes status: a default there would hide whether it wrote a field at all.
    properties["status"] = _without_defaults(properties["status"])
    if version.root_validations:
        schema["x-kubernetes-validations"] = [dict(rule) for rule in version.root_validations]
    return schema


def _without_defaults(schema: JsonSchema) -> JsonSchema:
    stripped: JsonSchema = {}
    for key, value in schema.items():
        if key == "default":
            continue
        if key == "properties":
            stripped[key] = {name: _without_defaults(child) for name, child in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            stripped[key] = _without_defaults(value)
        else:
            stripped[key] = value
    return stripped


def custom_resource_definition(kind: CustomResourceKind) -> dict[str, Any]:
    """The CustomResourceDefinition (apiextensions.k8s.io/v1) of one kind."""
    names: dict[str, Any] = {
        "kind": kind.kind,
        "listKind": f"{kind.kind}List",
        "plural": kind.plural,
        "singular": kind.singular,
        "shortNames": list(kind.short_names),
        "categories": list(kind.categories),
    }
    versions = []
    for version in kind.versions:
        entry: dict[str, Any] = {
            "name": version.name,
            "served": version.served,
            "storage": version.storage,
            "schema": {"openAPIV3Schema": root_schema(version)},
            "subresources": {"status": {}},
            "additionalPrinterColumns": [column.to_manifest() for column in version.printer_columns],
        }
        if version.selectable_fields:
            entry["selectableFields"] = [{"jsonPath": path} for path in version.selectable_fields]
        versions.append(entry)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": kind.crd_name, "labels": {LABEL_NAME: APP_NAME}},
        "spec": {"group": kind.group, "names": names, "scope": kind.scope, "versions": versions},
    }


def custom_resource_definitions() -> list[dict[str, Any]]:
    """Every Mailshard CRD, in a stable order."""
    return [custom_resource_definition(kind) for kind in KINDS]


class _NoAliasDumper(yaml.SafeDumper):
    """Writes shared sub-dicts out in full: YAML anchors would make the CRDs hard to read and diff."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def render_yaml(document: dict[str, Any]) -> str:
    """Deterministic YAML: sorted keys, no anchors, no line wrapping."""
    return yaml.dump(
        copy.deepcopy(document),
        Dumper=_NoAliasDumper,
        sort_keys=True,
        default_flow_style=False,
        allow_unicode=True,
        width=10_000,
    )


def render_crd_files() -> dict[str, str]:
    """The exact content of every file under `crds/`, keyed by file name."""
    return {
        kind.file_name: GENERATED_HEADER + "---\n" + render_yaml(custom_resource_definition(kind)) for kind in KINDS
    }
