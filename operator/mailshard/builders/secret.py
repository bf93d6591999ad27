"""The Secret `<shard>-replication`: the replication password and the agent's API token.

Both values are inputs. Builders never generate randomness; the service creates
this Secret once, with fresh random values, and never rotates it: both members
must always agree on the password, and changing it under a running pair would
break replication until both pods restarted.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

from mailshard.api.constants import AGENT_TOKEN_KEY, REPLICATION_PASSWORD_KEY
from mailshard.api.v1alpha1 import ResolvedShard
from mailshard.builders.metadata import COMPONENT_CREDENTIALS, object_metadata
from mailshard.builders.names import replication_secret_name


@dataclass(frozen=True)
class ShardCredentials:
    """The shard's secrets; kept out of `repr` so they never reach a log line."""

    replication_password: str = field(repr=False)
    agent_token: str = field(repr=False)

    def __post_init__(self) -> None:
        if not self.replication_password or not self.agent_token:
            raise ValueError("the replication password and the agent token must not be empty")


def _encode(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


def build_replication_secret(shard: ResolvedShard, credentials: ShardCredentials) -> dict[str, Any]:
    """The Secret both members mount at SECRETS_DIR.

    Immutable: an accidental edit cannot split the pair, and the kubelets need not
    watch it.
    """
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": object_metadata(shard, replication_secret_name(shard.name), COMPONENT_CREDENTIALS),
        "type": "Opaque",
        "immutable": True,
        "data": {
            REPLICATION_PASSWORD_KEY: _encode(credentials.replication_password),
            AGENT_TOKEN_KEY: _encode(credentials.agent_token),
        },
    }
