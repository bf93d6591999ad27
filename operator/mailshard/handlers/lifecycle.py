"""Operator start-up: kopf settings, the metrics endpoint, and the services every handler uses."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from mailshard.api.constants import GROUP
from mailshard.metrics import OperatorMetrics, serve_metrics
from mailshard.services.kube import KubeApi
from mailshard.services.platform import Platform

log = logging.getLogger(__name__)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # Our own names for kopf's bookkeeping, so `kubectl get -o yaml` shows whose it is.
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    # Events are ours to post on transitions (services.events); kopf only reports handler failures.
    settings.posting.level = logging.WARNING
    settings.execution.max_workers = 16
    # kopf's defaults retry a failed handler after 60 s and re-check a timer or daemon still
    # exiting after 60 s more, which holds a deleted MailShard's finalizer for minutes; a
    # handler error here is a transient API error, and our timers finish within a second.
    settings.execution.default_backoff = 5
    settings.background.cancellation_polling = 2
    settings.background.instant_exit_timeout = 0.2
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    metrics = OperatorMetrics()
    address = str(getattr(memo, "metrics_address", "") or "")
    if address:
        serve_metrics(address, metrics.registry)
        log.info("serving metrics on http://%s/metrics", address)
    memo.platform = Platform.build(KubeApi.from_environment(), metrics)
