"""The operator's one gateway to the Kubernetes API: plain dicts in and out, every kind alike.

Builders produce plain manifests, so the service layer needs to read, apply,
patch and delete plain manifests of a handful of kinds. Going through the
generated typed clients would mean a different method name and model class per
kind and a camelCase round trip; this module instead maps each kind to its REST
path once and speaks JSON. It also counts every write it makes, by verb and
kind, which the metrics and the "no writes when idle" tests read.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from mailshard.api.constants import GROUP

FIELD_MANAGER: Final = "mailshard-operator"

Manifest = dict[str, Any]


class NamespaceTerminatingError(ApiException):  # type: ignore[misc]  # kubernetes is untyped to mypy here
    """A write refused because its namespace is being deleted: everything in it is going away."""


@dataclass(frozen=True)
class Kind:
    """Where a kind lives in the REST API."""

    api_version: str
    plural: str
    namespaced: bool = True

    def path(self, namespace: str | None = None, name: str | None = None, subresource: str | None = None) -> str:
        base = f"/api/{self.api_version}" if "/" not in self.api_version else f"/apis/{self.api_version}"
        if self.namespaced and namespace is not None:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        if name is not None:
            base += f"/{name}"
        if subresource is not None:
            base += f"/{subresource}"
        return base


KINDS: Final[Mapping[str, Kind]] = {
    "ConfigMap": Kind("v1", "configmaps"),
    "Secret": Kind("v1", "secrets"),
    "Service": Kind("v1", "services"),
    "Pod": Kind("v1", "pods"),
    "PersistentVolumeClaim": Kind("v1", "persistentvolumeclaims"),
    "PersistentVolume": Kind("v1", "persistentvolumes", namespaced=False),
    "Event": Kind("v1", "events"),
    "Node": Kind("v1", "nodes", namespaced=False),
    "StatefulSet": Kind("apps/v1", "statefulsets"),
    "Deployment": Kind("apps/v1", "deployments"),
    "ServiceAccount": Kind("v1", "serviceaccounts"),
    "Role": Kind("rbac.authorization.k8s.io/v1", "roles"),
    "RoleBinding": Kind("rbac.authorization.k8s.io/v1", "rolebindings"),
    "PodDisruptionBudget": Kind("policy/v1", "poddisruptionbudgets"),
    "StorageClass": Kind("storage.k8s.io/v1", "storageclasses", namespaced=False),
    "MailShard": Kind(f"{GROUP}/v1alpha1", "mailshards"),
    "MailCluster": Kind(f"{GROUP}/v1alpha1", "mailclusters"),
}


class KubeApi:
    """Synchronous JSON access to the API server (kopf runs our sync handlers in its thread pool)."""

    def __init__(self, api_client: client.ApiClient, *, on_write: Callable[[str, str], None] | None = None) -> None:
        self._client = api_client
        self._lock = threading.Lock()
        self.writes: Counter[tuple[str, str]] = Counter()
        self.on_write = on_write
        """Told of every write (verb, kind): the metrics count them."""

    @classmethod
    def from_environment(cls) -> KubeApi:
        """In a pod, the service account; elsewhere, the current kubeconfig context."""
        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        api_client = client.ApiClient()
        # One connection per kopf worker thread plus watches, instead of urllib3's default 4.
        api_client.rest_client.pool_manager.connection_pool_kw["maxsize"] = 32
        return cls(api_client)

    def _call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        method, url, headers, body, post_params = self._client.param_serialize(
            method=method,
            resource_path=path,
            query_params=query or [],
            header_params={"Accept": "application/json", "Content-Type": content_type},
            body=body,
            auth_settings=["BearerToken"],
        )
        response = self._client.call_api(method, url, header_params=headers, body=body, post_params=post_params)
        response.read()
        if not 200 <= response.status <= 299:
            error = ApiException(http_resp=response)
            if error.status == 403 and "NamespaceTerminating" in str(error.body):
                raise NamespaceTerminatingError(http_resp=response)
            raise error
        return json.loads(response.data) if response.data else None

    def _count(self, verb: str, kind: str) -> None:
        with self._lock:
            self.writes[(verb, kind)] += 1
        if self.on_write is not None:
            self.on_write(verb, kind)

    # ---------------------------------------------------------------- reads

    def get(self, kind: str, name: str, namespace: str | None = None) -> Manifest | None:
        try:
            result: Manifest = self._call("GET", KINDS[kind].path(namespace, name))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return result

    def list(self, kind: str, namespace: str | None = None, *, label_selector: str | None = None) -> list[Manifest]:
        query = [("labelSelector", label_selector)] if label_selector else []
        result = self._call("GET", KINDS[kind].path(namespace), query=query)
        items: list[Manifest] = result.get("items", [])
        return items

    # --------------------------------------------------------------- writes

    def apply(self, manifest: Manifest) -> Manifest:
        """Server-side apply as the operator's field manager, taking over fields someone else changed."""
        kind = manifest["kind"]
        meta = manifest["metadata"]
        self._count("apply", kind)
        result: Manifest = self._call(
            "PATCH",
            KINDS[kind].path(meta.get("namespace"), meta["name"]),
            body=manifest,
            query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
            content_type="application/apply-patch+yaml",
        )
        return result

    def create(self, manifest: Manifest) -> Manifest | None:
        """Create; None when it already exists (someone else, or an earlier attempt, created it)."""
        kind = manifest["kind"]
        self._count("create", kind)
        try:
            result: Manifest = self._call(
                "POST",
                KINDS[kind].path(manifest["metadata"].get("namespace")),
                body=manifest,
                query=[("fieldManager", FIELD_MANAGER)],
            )
        except ApiException as exc:
            if exc.status == 409:
                return None
            raise
        return result

    def merge_patch(
        self, kind: str, name: str, namespace: str | None, patch: Mapping[str, Any], *, subresource: str | None = None
    ) -> Manifest | None:
        """A JSON merge patch; None when the object is gone."""
        self._count("patch" if subresource is None else f"patch/{subresource}", kind)
        try:
            result: Manifest = self._call(
                "PATCH",
                KINDS[kind].path(namespace, name, subresource),
                body=dict(patch),
                query=[("fieldManager", FIELD_MANAGER)],
                content_type="application/merge-patch+json",
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return result

    def delete(
        self, kind: str, name: str, namespace: str | None = None, *, grace_period_seconds: int | None = None
    ) -> bool:
        """Delete; False when it was already gone."""
        self._count("delete", kind)
        query = [("gracePeriodSeconds", str(grace_period_seconds))] if grace_period_seconds is not None else []
        try:
            self._call("DELETE", KINDS[kind].path(namespace, name), query=query)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True


def pod_ready(pod: Mapping[str, Any]) -> bool:
    """Whether the kubelet (or KWOK) reports the pod's Ready condition True."""
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
