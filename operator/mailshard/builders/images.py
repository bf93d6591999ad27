"""Which container image a shard's members run.

The operator ships one image per backend, tagged with its own version, so that
operator and agent always speak the same runtime contract; `spec.image`
overrides it. The version is an input, never read here, so builders stay pure.
"""

from __future__ import annotations

from dataclasses import dataclass

from mailshard.api.v1alpha1 import Backend, ResolvedShard


@dataclass(frozen=True)
class BackendImages:
    """The default image of each backend."""

    dovecot: str
    cyrus: str

    @classmethod
    def for_version(cls, version: str, *, repository: str = "mailshard") -> BackendImages:
        """`mailshard/dovecot:<version>` and `mailshard/cyrus:<version>`."""
        return cls(dovecot=f"{repository}/dovecot:{version}", cyrus=f"{repository}/cyrus:{version}")

    def default_for(self, backend: Backend) -> str:
        return self.dovecot if backend is Backend.DOVECOT else self.cyrus

    def image_for(self, shard: ResolvedShard) -> str:
        """The shard's own `spec.image`, else the default of its backend."""
        return shard.spec.image or self.default_for(shard.spec.backend)
