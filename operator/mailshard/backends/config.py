"""The runtime contract between the operator and one member of a shard.

Why this module exists: the in-pod agent needs a small, explicit description of
*this* member (its shard, its ports, its peer, where the users and the mail
live) that it can read from one JSON file and hand to a pure backend renderer.
The operator writes that file (from a ConfigMap plus a Secret for the
credentials); the agent never talks to the Kubernetes API.

The model is deliberately flat and small so that the operator-side
``ShardRuntimeConfig`` (in ``mailshard.api``) can map onto it one field at a
time. JSON keys are camelCase like the custom resources; snake_case is accepted
too so that Python callers can build it by keyword.

The role (master or replica) is *not* part of this contract: it changes at
failover without a new config, so the agent keeps it in a role file and the
renderer takes it as a separate argument.
"""

from __future__ import annotations

import enum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic.alias_generators import to_camel


class Backend(enum.StrEnum):
    """The IMAP server a shard runs. Only Dovecot has a renderer so far."""

    DOVECOT = "dovecot"
    CYRUS = "cyrus"


class Role(enum.StrEnum):
    """What a member of a master/replica pair is asked to be."""

    MASTER = "master"
    REPLICA = "replica"


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
    )


Port = int


class Ports(_Model):
    """The TCP ports this member listens on. Defaults are the IANA ones."""

    imap: Port = Field(default=143, ge=1, le=65535)
    pop3: Port = Field(default=110, ge=1, le=65535)
    lmtp: Port = Field(default=24, ge=1, le=65535)
    managesieve: Port = Field(default=4190, ge=1, le=65535)
    doveadm: Port = Field(default=12345, ge=1, le=65535)

    @model_validator(mode="after")
    def _distinct(self) -> Ports:
        values = [self.imap, self.pop3, self.lmtp, self.managesieve, self.doveadm]
        if len(set(values)) != len(values):
            raise ValueError(f"ports must be distinct, got {values}")
        return self


class Peer(_Model):
    """The other member of the pair: where its doveadm server and its agent listen."""

    name: str = Field(min_length=1)
    host: str = Field(min_length=1)
    doveadm_port: Port = Field(default=12345, ge=1, le=65535)
    agent_port: Port = Field(default=8080, ge=1, le=65535)


class MemberRuntimeConfig(_Model):
    """Everything one member needs to render and run its mail server.

    ``users_file`` is a passwd-file (``user:{SCHEME}hash::::::``, one user a
    line). It must be iterable, because the Dovecot replicator walks every user
    to schedule full syncs; in a cluster it is a key of a Secret, mounted
    read-only. Exactly one of ``doveadm_password`` and
    ``doveadm_password_file`` must be given; the file form keeps the secret out
    of this JSON (the agent reads the file, which in a cluster is a Secret key).
    """

    shard: str = Field(min_length=1)
    backend: Backend = Backend.DOVECOT
    member: str = Field(min_length=1)
    listen_address: str = "0.0.0.0"
    ports: Ports = Ports()
    peer: Peer | None = None
    mail_dir: Path | None = None
    compression: bool = False
    users_file: Path
    doveadm_password: SecretStr | None = None
    doveadm_password_file: Path | None = None
    superseded: bool = False
    """A failover replaced this master and it is not re-seeded yet: never start as master (``shard.json``)."""

    @model_validator(mode="after")
    def _one_password_source(self) -> MemberRuntimeConfig:
        if (self.doveadm_password is None) == (self.doveadm_password_file is None):
            raise ValueError("exactly one of doveadmPassword and doveadmPasswordFile must be set")
        if self.doveadm_password is not None and not self.doveadm_password.get_secret_value():
            raise ValueError("doveadmPassword must not be empty")
        return self
