"""Small factories shared by the unit tests: shards and clusters as the API server would hand them over."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from mailshard.api import MailCluster, MailShard, ResolvedShard
from mailshard.backends import MemberRuntimeConfig
from mailshard.backends.dovecot import InstancePaths
from mailshard.builders import BackendImages

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = REPO_ROOT / "examples"
CRDS = REPO_ROOT / "crds"
GOLDEN = Path(__file__).parent / "golden"

IMAGES = BackendImages.for_version("0.0.0-test")
MEMBER_PATHS = InstancePaths(
    conf_dir=Path("/d/conf"), base_dir=Path("/d/run"), state_dir=Path("/d/state"), mail_dir=Path("/d/mail")
)
"""Where a member's renderer puts things, for the backend renderers' tests."""


def member_config(backend: str) -> MemberRuntimeConfig:
    """Member s1-a of shard s1, its peer s1-b at 10.0.0.2: what a renderer gets from the agent."""
    return MemberRuntimeConfig.model_validate(
        {
            "shard": "s1",
            "backend": backend,
            "member": "s1-a",
            "listenAddress": "127.0.0.1",
            "ports": {"imap": 1143, "lmtp": 1024, "doveadm": 1345, "pop3": 1110, "managesieve": 1419},
            "peer": {"name": "s1-b", "host": "10.0.0.2", "doveadmPort": 2345},
            "usersFile": "/secrets/users",
            "doveadmPassword": "sync-secret",
        }
    )


UID = "6f1c1a52-0000-4000-8000-000000000001"


def shard_body(name: str = "inbox-1", namespace: str = "mail", **spec: Any) -> dict[str, Any]:
    """A MailShard object as the API returns it; `spec` defaults to a bare Dovecot shard."""
    return {
        "apiVersion": "mailshard.io/v1alpha1",
        "kind": "MailShard",
        "metadata": {"name": name, "namespace": namespace, "uid": UID, "generation": 1},
        "spec": {"backend": "dovecot", **spec},
    }


def cluster_body(name: str = "demo", namespace: str = "mail", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "mailshard.io/v1alpha1",
        "kind": "MailCluster",
        "metadata": {"name": name, "namespace": namespace, "uid": UID, "generation": 1},
        "spec": spec,
    }


def resolved_shard(name: str = "inbox-1", **spec: Any) -> ResolvedShard:
    return MailShard.from_resource(shard_body(name, **spec)).resolve(None)


def load_documents(path: Path) -> list[dict[str, Any]]:
    return [document for document in yaml.safe_load_all(path.read_text()) if document]


def load_resources(path: Path) -> list[dict[str, Any]]:
    """Our own resources among a file's documents (an example also carries the users Secret it names)."""
    return [d for d in load_documents(path) if str(d.get("apiVersion", "")).startswith("mailshard.io/")]


def parse_resource(document: dict[str, Any], namespace: str = "mail") -> MailShard | MailCluster:
    """Parse an example or golden input, filling in what the API server would add."""
    body = {**document, "metadata": {"namespace": namespace, "uid": UID, "generation": 1, **document["metadata"]}}
    if document["kind"] == "MailShard":
        return MailShard.from_resource(body)
    if document["kind"] == "MailCluster":
        return MailCluster.from_resource(body)
    raise ValueError(f"not a Mailshard kind: {document['kind']}")


class _LiteralDumper(yaml.SafeDumper):
    """Writes multi-line strings (the shard.json inside a ConfigMap) as readable literal blocks."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_LiteralDumper.add_representer(str, _represent_str)


def dump_documents(documents: Iterable[dict[str, Any]]) -> str:
    return yaml.dump_all(list(documents), Dumper=_LiteralDumper, sort_keys=True, default_flow_style=False, width=120)
