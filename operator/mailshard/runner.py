"""Starts kopf with our handlers registered: the process entry point of the operator."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence


def run_operator(*, namespaces: Sequence[str], liveness: str, standalone: bool, verbose: bool = False) -> int:
    import kopf

    import mailshard.handlers  # noqa: F401  (registers the handlers with kopf)

    kopf.configure(verbose=verbose, log_format=kopf.LogFormat.FULL)

    asyncio.run(
        kopf.operator(
            clusterwide=not namespaces,
            namespaces=list(namespaces),
            liveness_endpoint=liveness or None,
            standalone=standalone,
        )
    )
    return 0
