"""Small adapters between kopf's handler arguments and our services."""

from __future__ import annotations


def namespaced(namespace: str | None) -> str:
    """Our resources are namespaced; kopf types the namespace as optional for cluster-scoped ones."""
    if namespace is None:
        raise ValueError("a namespaced resource arrived without a namespace")
    return namespace
