"""One reconcile run as the metrics see it: timed, errors counted, a namespace being deleted not an error.

Both reconcilers (shards and clusters) run their work through this, so their
duration and error metrics mean the same thing and a terminating namespace is
handled alike: its deletion removes our objects, and recreating them would
only be refused again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from mailshard.metrics import OperatorMetrics
from mailshard.services.kube import NamespaceTerminatingError

T = TypeVar("T")

log = logging.getLogger(__name__)


def measured(metrics: OperatorMetrics, kind: str, what: str, work: Callable[[], T | None]) -> T | None:
    """Run `work` (reconciling `what`, an object of `kind`); None when its namespace is being deleted."""
    started = time.monotonic()
    try:
        return work()
    except NamespaceTerminatingError:
        log.info("%s %s: its namespace is being deleted; not reconciling", kind, what)
        return None
    except Exception:
        metrics.reconcile_errors.labels(kind=kind).inc()
        raise
    finally:
        metrics.reconcile_duration.labels(kind=kind).observe(time.monotonic() - started)
