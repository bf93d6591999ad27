"""The agent's runtime contract: what the operator writes is what the agent reads, and it stays tolerant."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError
from unit_support import resolved_shard

from mailshard.api import Backend, Compression, ShardRuntimeConfig
from mailshard.api.constants import SHARD_CONFIG_FILE
from mailshard.builders import build_runtime_config

pytestmark = pytest.mark.unit


def test_written_config_reads_back_identically() -> None:
    config = build_runtime_config(resolved_shard(backend="cyrus", compression="zlib"))
    assert ShardRuntimeConfig.from_json(config.to_json()) == config
    assert config.backend is Backend.CYRUS
    assert config.compression is Compression.ZLIB


def test_json_keys_are_camel_case_and_stable() -> None:
    text = build_runtime_config(resolved_shard()).to_json()
    document = json.loads(text)
    assert list(document) == [
        "schemaVersion",
        "shard",
        "namespace",
        "backend",
        "members",
        "ports",
        "replication",
        "compression",
        "mailboxes",
        "mailDir",
        "agentTokenFile",
    ]
    assert document["replication"]["passwordFile"].startswith("/etc/mailshard/secrets/")
    assert text == build_runtime_config(resolved_shard()).to_json()


def test_unknown_keys_from_a_newer_operator_are_ignored() -> None:
    document = json.loads(build_runtime_config(resolved_shard()).to_json())
    document["someNewSetting"] = {"x": 1}
    assert ShardRuntimeConfig.from_json(json.dumps(document)).shard == "inbox-1"


def test_peer_lookup() -> None:
    config = build_runtime_config(resolved_shard())
    assert config.peer_of("inbox-1-b").host == "inbox-1-a-0.inbox-1-a.mail.svc"
    with pytest.raises(KeyError, match="no member"):
        config.peer_of("inbox-1-c")


def test_colliding_ports_are_refused() -> None:
    document = json.loads(build_runtime_config(resolved_shard()).to_json())
    document["ports"]["replication"] = document["ports"]["imap"]
    with pytest.raises(ValidationError, match="distinct"):
        ShardRuntimeConfig.from_json(json.dumps(document))


def test_config_file_path_is_under_the_config_mount() -> None:
    assert SHARD_CONFIG_FILE == "/etc/mailshard/config/shard.json"
