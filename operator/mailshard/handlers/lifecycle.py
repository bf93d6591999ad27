"""Operator start-up: kopf settings and the services every handler uses."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from mailshard.api.constants import GROUP
from mailshard.services.kube import KubeApi
from mailshard.services.platform import Platform


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
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    memo.platform = Platform.build(KubeApi.from_environment())
