"""Mailshard: a Kubernetes operator for highly available, sharded IMAP mail storage.

The package is layered one-way (enforced by import-linter, see .importlinter):
`handlers` (thin kopf decorators) → `services` (reconcile and failover, the only
code that talks to the API) → `builders` (pure manifest builders) → `api`
(pydantic models of our custom resources, parsed once at the boundary).
"""

__version__ = "0.1.0"
