"""Starts kopf with our handlers registered: the process entry point of the operator."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Sequence

RANDOM_PRIORITY = "random"


def peering_priority(value: str) -> int:
    """The kopf peering priority for `--priority`: an integer, or `random`.

    kopf pauses every operator that sees a live peer of the same or a higher
    priority, so replicas started from one Deployment (identical arguments)
    would all pause if they shared a fixed priority. A random priority per
    process makes exactly one of them active and the others standbys; when
    the active one goes, the highest standby resumes.
    """
    if value == RANDOM_PRIORITY:
        return 1 + secrets.randbelow(2**31 - 1)
    return int(value)


def run_operator(
    *,
    namespaces: Sequence[str],
    liveness: str,
    standalone: bool,
    peering: str | None = None,
    priority: int | None = None,
    verbose: bool = False,
    metrics_address: str = "",
) -> int:
    """Run until signalled. `peering` names the (Cluster)KopfPeering object to coordinate replicas through."""
    import kopf

    import mailshard.handlers  # noqa: F401  (registers the handlers with kopf)

    kopf.configure(verbose=verbose, log_format=kopf.LogFormat.FULL)

    asyncio.run(
        kopf.operator(
            clusterwide=not namespaces,
            namespaces=list(namespaces),
            liveness_endpoint=liveness or None,
            standalone=standalone,
            peering_name=peering,
            priority=priority,
            # The startup handler (handlers.lifecycle) serves the metrics where this says.
            memo=kopf.Memo(metrics_address=metrics_address),
        )
    )
    return 0
