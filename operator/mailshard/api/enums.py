"""The vocabulary shared by every API version and by the agent's runtime contract.

These words mean the same thing in v1alpha1, in any later version, and in
`shard.json`; keeping them out of the versioned packages lets the runtime
contract stay independent of the CRD version.
"""

from __future__ import annotations

import enum


class Backend(enum.StrEnum):
    """The IMAP server a shard runs. It fixes the on-disk mail format, so it can never change."""

    DOVECOT = "dovecot"
    CYRUS = "cyrus"


class Compression(enum.StrEnum):
    """Compression of message files at rest."""

    NONE = "none"
    ZLIB = "zlib"


class ReplicationMode(enum.StrEnum):
    """How the master ships changes to the replica."""

    ASYNC = "async"
