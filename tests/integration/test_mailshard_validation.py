"""Bad MailShard specs are rejected by the real API server, with a message that names the field."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from operator_support import REPO, kubectl

pytestmark = pytest.mark.integration

GROUP, VERSION, PLURAL = "mailshard.io", "v1alpha1", "mailshards"


def example_shard() -> dict[str, Any]:
    shard: dict[str, Any] = yaml.safe_load((REPO / "examples" / "mailshard-dovecot.yaml").read_text())
    return shard


def create(api_client: client.ApiClient, namespace: str, body: dict[str, Any]) -> Any:
    return client.CustomObjectsApi(api_client).create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)


def rejection(call: Any) -> str:
    with pytest.raises(client.ApiException) as rejected:
        call()
    assert rejected.value.status == 422, rejected.value.body
    return str(json.loads(rejected.value.body)["message"])


@pytest.mark.usefixtures("crds")
def test_unknown_backend_is_rejected_naming_the_field(api_client: client.ApiClient, namespace: str) -> None:
    shard = example_shard()
    shard["spec"]["backend"] = "exchange"
    message = rejection(lambda: create(api_client, namespace, shard))
    assert "spec.backend" in message
    assert '"dovecot"' in message


@pytest.mark.usefixtures("crds")
@pytest.mark.parametrize("mailboxes", [0, -5])
def test_capacity_must_be_positive(api_client: client.ApiClient, namespace: str, mailboxes: int) -> None:
    shard = example_shard()
    shard["spec"]["capacity"]["mailboxes"] = mailboxes
    message = rejection(lambda: create(api_client, namespace, shard))
    assert "spec.capacity.mailboxes" in message


@pytest.mark.usefixtures("crds")
def test_backend_is_immutable(api_client: client.ApiClient, namespace: str) -> None:
    create(api_client, namespace, example_shard())
    custom = client.CustomObjectsApi(api_client)
    message = rejection(
        lambda: custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, "dovecot-1", {"spec": {"backend": "cyrus"}}
        )
    )
    assert "spec.backend" in message
    assert "immutable" in message


@pytest.mark.usefixtures("crds")
def test_storage_may_grow_but_never_shrink(api_client: client.ApiClient, namespace: str) -> None:
    create(api_client, namespace, example_shard())
    custom = client.CustomObjectsApi(api_client)
    grown = custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "dovecot-1", {"spec": {"storage": {"size": "2Gi"}}}
    )
    assert grown["spec"]["storage"]["size"] == "2Gi"
    message = rejection(
        lambda: custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, "dovecot-1", {"spec": {"storage": {"size": "1500Mi"}}}
        )
    )
    assert "spec.storage.size" in message


@pytest.mark.usefixtures("crds")
def test_unknown_field_is_rejected_by_kubectl(kubeconfig: Path, namespace: str) -> None:
    shard = copy.deepcopy(example_shard())
    shard["spec"]["capasity"] = {"mailboxes": 10}
    result = kubectl(kubeconfig, "apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(shard), check=False)
    assert result.returncode != 0
    assert 'unknown field "spec.capasity"' in result.stderr
